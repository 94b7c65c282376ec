"""veil's configuration (SPEC 3): one frozen, validated :class:`Settings` tree.

Theory of operation
-------------------
Every key lives in one table, :data:`KEYS` (dotted name -> kind, default, meaning); the docs
(``docs/CONFIG.md``, :func:`reference_markdown`), :meth:`Settings.describe` and the tests all
walk it. Loading stacks three layers, later wins: the table's defaults (written in TOML form, so
they pass the same checks), the TOML file, and the environment (``VEIL_<SECTION>_<KEY>``). Each
raw value goes through its key's *kind*, which returns the typed attribute or raises
``ValueError``; :func:`parse_settings` is the one place that turns those into
:class:`~proxy.errors.ConfigError` (exit code 2) as ``config: <key>: <what is wrong>``. Rules
that span keys (TLS pairs, the admin TLS rule, classes vs namespaces...) run after conversion.
Only :func:`load_settings` touches the outside world: it reads the file, and ``os.environ`` once
when no ``env`` is passed. (The TLS file keys are checked to exist.)

Attributes carry the TOML key names. Units: durations are ``float`` seconds
(``keys.rotation_period == 7776000.0``), sizes ``int`` bytes, listeners a :class:`Listen` or
``None`` for ``off``. Environment forms: scalars as in TOML but unquoted
(``VEIL_KEYS_GRACE_PERIOD=7d``, ``VEIL_REDIS_ALLOW_FLUSH=true``); lists comma-separated;
``redis.namespaces``, ``keys.classes`` and ``s3.credentials`` a TOML inline array;
``admin.tokens`` ``name=token,...`` or a TOML inline table; an empty value resets a key whose
default is none.

Secrets (the root key, admin tokens, S3 secret keys, URL passwords) are :class:`Secret` objects
whose repr is ``Secret(***)``; no error message echoes them and exceptions are raised
``from None`` so no chained message does either.

Globs: Redis key and channel globs follow Redis ``stringmatchlen`` on bytes (``*``, ``?``,
``[...]`` with ``^`` negation and ``a-z`` ranges, ``\\`` escapes, an unclosed ``[`` ending at
the pattern's end), with two deliberate differences: a pattern of only ``*`` matches the empty
key (as ``KEYS *`` does), and range ends compare as unsigned bytes (Redis compares signed
``char`` on x86, so ranges that cross 0x7f/0x80 differ there). Each pattern compiles once to a
regex whose ``*`` runs are atomic groups, so a match costs O(len(key) x len(pattern)), never
exponential; a list of globs compiles to one alternation. Bucket globs (``s3_buckets``) are
fnmatch-style.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import os
import re
import stat
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NoReturn, TypeVar
from urllib.parse import SplitResult, quote, unquote, urlsplit

from proxy.errors import ConfigError

__all__ = [
    "KEYS",
    "SPECIAL_ENV",
    "AdminSettings",
    "AuditSettings",
    "ConfigKey",
    "FileStore",
    "KeyClass",
    "KeySettings",
    "Listen",
    "Namespace",
    "RedisSettings",
    "RedisUrl",
    "ReencryptSettings",
    "S3Credential",
    "S3Settings",
    "Secret",
    "Settings",
    "format_duration",
    "format_size",
    "is_loopback",
    "load_settings",
    "parse_duration",
    "parse_listen",
    "parse_redis_url",
    "parse_settings",
    "parse_size",
    "redis_glob_match",
    "redis_glob_regex",
    "reference_markdown",
]

_T = TypeVar("_T", str, bytes)
_R = TypeVar("_R")
_SECTIONS = ("redis", "s3", "keys", "reencrypt", "admin", "audit")
_CACHE_MAX = 4096  # entries per lookup cache; cleared when full
_CACHE_KEY_MAX = 256  # longer keys are matched but not cached
_MAX_DURATION = 100 * 365 * 86400
_MAX_SINGLE_PUT = 5 << 30  # S3's single-PUT limit


class Secret(Generic[_T]):
    """A secret that never prints: repr and str are ``Secret(***)``; pickling is refused.

    ``matches`` compares in constant time (SHA-256 of both sides through
    ``hmac.compare_digest``, so not even the length leaks); ``reveal`` hands out the value.
    """

    __slots__ = ("_value",)
    _value: _T

    def __init__(self, value: _T) -> None:
        self._value = value

    def reveal(self) -> _T:
        return self._value

    def reveal_bytes(self) -> bytes:
        value = self._value
        return value.encode() if isinstance(value, str) else value

    def matches(self, candidate: str | bytes) -> bool:
        other = candidate.encode() if isinstance(candidate, str) else candidate
        mine = hashlib.sha256(self.reveal_bytes()).digest()
        return hmac.compare_digest(mine, hashlib.sha256(other).digest())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.matches(other.reveal_bytes())

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("secrets cannot be pickled")

    def __copy__(self) -> Secret[_T]:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Secret[_T]:
        return self


class _Invalid(ValueError):
    """A bad value: ``sub`` extends the key (``[0].name``); ``key`` names it for cross rules."""

    def __init__(self, message: str, sub: str = "", key: str | None = None) -> None:
        super().__init__(message)
        self.message, self.sub, self.key = message, sub, key


# ---------------------------------------------------------------------------- scalar helpers

_DURATION_RE = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"([0-9]{1,15})(B|KiB|MiB|GiB)?")
_SIZE_UNITS: dict[str | None, int] = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20}
_SIZE_UNITS["GiB"] = 1 << 30


def parse_duration(text: str) -> float:
    """``"90d"`` -> ``7776000.0``: seconds of a ``^[0-9]+(s|m|h|d)$`` duration.

    Raises:
        ValueError: another form, or longer than 100 years.
    """
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (expected e.g. 30s, 5m, 12h, 7d)")
    if len(match[1]) > 12 or int(match[1]) * _UNIT_SECONDS[match[2]] > _MAX_DURATION:
        raise ValueError(f"{text!r} is longer than 100 years")
    return float(int(match[1]) * _UNIT_SECONDS[match[2]])


def format_duration(seconds: float) -> str:
    """The shortest exact form of a whole number of seconds: ``7776000.0`` -> ``"90d"``."""
    whole = int(seconds)
    for unit in ("d", "h", "m"):
        if whole and whole % _UNIT_SECONDS[unit] == 0:
            return f"{whole // _UNIT_SECONDS[unit]}{unit}"
    return f"{whole}s"


def parse_size(text: str) -> int:
    """``"8MiB"`` -> ``8388608``; units B, KiB, MiB, GiB, or none (bytes).

    Raises:
        ValueError: another form (``8MB``, ``1.5MiB``, ``-1``...).
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (expected bytes or e.g. 512KiB, 8MiB, 1GiB)")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def format_size(size: int) -> str:
    """The shortest exact form: ``8388608`` -> ``"8MiB"``, ``1000`` -> ``"1000B"``."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


@dataclass(frozen=True)
class Listen:
    """A listener address; ``str()`` gives ``host:port`` (``[::1]:6380`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8, ``::1`` (bracketed or IPv4-mapped too).

    Other names are never resolved (no I/O here), so they count as not loopback, and so do the
    wildcards ``0.0.0.0`` and ``::``.
    """
    name = host.strip("[]").lower()
    if name in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


_LISTEN_RE = re.compile(
    r"\[(?P<v6>[^\]]+)\]:(?P<p6>[0-9]{1,5})|(?P<host>[^:\[\]]+):(?P<port>[0-9]{1,5})"
)
_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_listen(text: str) -> Listen | None:
    """``"127.0.0.1:6380"``, ``"[::1]:6380"``, ``"host:80"`` -> :class:`Listen`; ``"off"`` -> None.

    Raises:
        ValueError: anything else (a port above 65535, a bad IPv6 address or host name...).
    """
    if text == "off":
        return None
    match = _LISTEN_RE.fullmatch(text)
    bad = f"{text!r} is not host:port ([::1]:6380 for IPv6) or off"
    if match is None or int(match["p6"] or match["port"]) > 65535:
        raise ValueError(bad)
    host = match["v6"] or match["host"]
    try:
        if match["v6"]:
            ipaddress.IPv6Address(host)
        elif re.fullmatch(r"[0-9.]+", host):
            ipaddress.IPv4Address(host)
        elif not _HOSTNAME_RE.fullmatch(host) or len(host) > 253:
            raise ValueError(bad)
    except ValueError:
        raise ValueError(bad) from None
    return Listen(host, int(match["p6"] or match["port"]))


def _redact_url(text: str) -> str:
    """Hide everything between ``scheme://`` and the last ``@`` (user info may hold a password)."""
    at = text.rfind("@")
    if at < 0:
        return text
    start = text.find("://")
    return (text[: start + 3] if 0 <= start < at else "") + "***" + text[at:]


@dataclass(frozen=True)
class RedisUrl:
    """A ``redis://`` / ``rediss://`` URL whose password is held apart as a :class:`Secret`.

    ``str()`` shows the password as ``***``; :meth:`reveal` gives the full URL for a client.
    """

    scheme: Literal["redis", "rediss"]
    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: Secret[str] | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def _render(self, password: str | None) -> str:
        auth = ""
        if self.username is not None or password is not None:
            auth = quote(self.username or "", safe="")
            auth += "" if password is None else ":" + password
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{auth}{host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        return self._render(None if self.password is None else "***")

    def reveal(self) -> str:
        return self._render(None if self.password is None else quote(self.password.reveal(), ""))


def _split_url(text: str, schemes: tuple[str, ...]) -> tuple[SplitResult, str, str, int | None]:
    """-> (parts, text with user info hidden, host, port); ValueError naming the hidden form."""
    shown = _redact_url(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown!r} is not a valid URL") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"{shown!r} is not a {' or '.join(s + '://' for s in schemes)} URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown!r}: query parameters are not supported")
    return parts, shown, parts.hostname, port


def parse_redis_url(text: str) -> RedisUrl:
    """``redis://[user[:password]@]host[:port][/db]`` (``rediss://`` for TLS).

    Raises:
        ValueError: another scheme, no host, a bad port or database, query parameters.
    """
    parts, shown, host, port = _split_url(text, ("redis", "rediss"))
    path = parts.path.strip("/")
    if path and not re.fullmatch(r"[0-9]{1,5}", path):
        raise ValueError(f"{shown!r}: the database must be a number")
    return RedisUrl(
        scheme="rediss" if parts.scheme == "rediss" else "redis",
        host=host,
        port=6379 if port is None else port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=Secret(unquote(parts.password)) if parts.password else None,
    )


def _c_http_url(value: object) -> str:
    parts, shown, _, _ = _split_url(_text(value), ("http", "https"))
    if "@" in parts.netloc:
        raise ValueError("credentials do not belong in the URL (use the *_access_key keys)")
    if parts.path not in ("", "/"):
        raise ValueError(f"{shown!r}: only scheme://host[:port] is allowed")
    return _text(value).rstrip("/")


@dataclass(frozen=True)
class FileStore:
    """``keys.store = "file:<path>"``."""

    path: str

    def __str__(self) -> str:
        return f"file:{self.path}"


def _c_store(value: object) -> FileStore | RedisUrl:
    text = _text(value)
    if text.startswith("file:"):
        if not text[5:]:
            raise ValueError("'file:' needs a path (e.g. file:./veil-keyring.json)")
        return FileStore(text[5:])
    if text.startswith(("redis://", "rediss://")):
        return parse_redis_url(text)
    raise ValueError(f"{_redact_url(text)!r} is not file:<path>, redis://... or rediss://...")


# ---------------------------------------------------------------------------------- globs


def _glob_class(pattern: bytes, i: int) -> tuple[set[int], int]:
    """Parse a ``[...]`` class from just after its ``[`` exactly as Redis does."""
    n = len(pattern)
    negate = i < n and pattern[i] == 0x5E  # ^
    i += negate
    members: set[int] = set()
    while i < n and pattern[i] != 0x5D:  # ]
        if pattern[i] == 0x5C and n - i >= 2:  # \x: literal x
            i += 1
            members.add(pattern[i])
        elif n - i >= 3 and pattern[i + 1] == 0x2D:  # a-z; ends in either order; z may be ]
            low, high = sorted((pattern[i], pattern[i + 2]))
            members.update(range(low, high + 1))
            i += 2
        else:
            members.add(pattern[i])
        i += 1
    # Redis ends an unclosed class at the end of the pattern
    return (set(range(256)) - members if negate else members), i + 1


def _byte_class(members: set[int]) -> bytes:
    if len(members) == 256:
        return b"."
    if not members:
        return rb"[^\x00-\xff]"  # one byte wide, matches nothing
    runs: list[list[int]] = []
    for byte in sorted(members):
        if runs and runs[-1][1] == byte - 1:
            runs[-1][1] = byte
        else:
            runs.append([byte, byte])
    ranges = (b"\\x%02x-\\x%02x" % (low, high) for low, high in runs)
    return b"[" + b"".join(ranges) + b"]"


def _glob_segments(pattern: bytes) -> list[list[bytes]]:
    """The pattern split at its ``*`` runs; one regex piece per one-byte atom."""
    segments: list[list[bytes]] = [[]]
    i, n = 0, len(pattern)
    while i < n:
        byte = pattern[i]
        if byte == 0x2A:  # *
            if segments[-1] or len(segments) == 1:
                segments.append([])
            i += 1
        elif byte == 0x3F:  # ?
            segments[-1].append(b".")
            i += 1
        elif byte == 0x5B:  # [
            members, i = _glob_class(pattern, i + 1)
            segments[-1].append(_byte_class(members))
        else:
            if byte == 0x5C and i + 1 < n:  # \x: literal x (a trailing \ is literal)
                i += 1
            segments[-1].append(re.escape(pattern[i : i + 1]))
            i += 1
    return segments


def redis_glob_regex(pattern: bytes) -> bytes:
    """Regex source (for ``re.DOTALL`` and ``.match``) that matches what the Redis glob does.

    ``a*b*c`` becomes ``\\Aa(?>.*?b).{1,}+(?<=c)``: the first segment is anchored at the start,
    each middle one is found leftmost and never retried (atomic group), the last must be the
    final bytes; leftmost-first is optimal because every segment has a fixed width.
    """
    segments = _glob_segments(pattern)
    head = rb"\A" + b"".join(segments[0])
    if len(segments) == 1:
        return head + rb"\Z"
    middle = b"".join(rb"(?>.*?" + b"".join(s) + b")" for s in segments[1:-1])
    last = segments[-1]
    tail = rb".{%d,}+(?<=%b)" % (len(last), b"".join(last)) if last else b""
    return head + middle + tail


def redis_glob_match(pattern: bytes, string: bytes) -> bool:
    """Whether ``string`` matches the Redis glob ``pattern`` (see the module docstring)."""
    return re.match(redis_glob_regex(pattern), string, re.DOTALL) is not None


def _compile_globs(patterns: Iterable[str], capture: bool = False) -> re.Pattern[bytes] | None:
    sources = [redis_glob_regex(p.encode("utf-8", "surrogateescape")) for p in patterns]
    if not sources:
        return None
    wrap = b"(%b)" if capture else b"(?:%b)"
    return re.compile(b"|".join(wrap % s for s in sources), re.DOTALL)


def _remember(cache: dict[bytes, _R], key: bytes, value: _R) -> _R:
    if len(key) <= _CACHE_KEY_MAX:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = value
    return value


# ------------------------------------------------------------------------- settings tree


@dataclass(frozen=True)
class Namespace:
    """One ``redis.namespaces`` entry; ``key_class`` is the class it maps to (``keys.classes``)."""

    name: str
    pattern: str
    drop_on_revoke: bool = False
    key_class: str = "default"


@dataclass(frozen=True)
class KeyClass:
    """One key class (``[[keys.classes]]``); periods in seconds, inherited from ``keys.*``."""

    name: str
    rotation_period: float
    grace_period: float
    redis_namespaces: tuple[str, ...] = ()
    s3_buckets: tuple[str, ...] = ()


@dataclass(frozen=True)
class S3Credential:
    access_key: str
    secret_key: Secret[str]


@dataclass(frozen=True)
class RedisSettings:
    """``[redis]``. Glob lookups are precompiled and cached: they run per command."""

    listen: Listen | None
    upstream: RedisUrl
    encrypt: tuple[str, ...]
    plaintext: tuple[str, ...]
    namespaces: tuple[Namespace, ...]
    encrypt_channels: tuple[str, ...]
    deterministic_lists: tuple[str, ...]
    deterministic_fields: tuple[str, ...]
    legacy_plaintext: Literal["allow", "refuse"]
    mode: Literal["enforce", "observe"]
    allowed_scripts: frozenset[str]
    allow_flush: bool
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    default_namespace: Namespace = field(default=Namespace("default", "*"), repr=False)
    _always: bool = field(init=False, repr=False, compare=False)
    _encrypt: re.Pattern[bytes] | None = field(init=False, repr=False, compare=False)
    _plain: re.Pattern[bytes] | None = field(init=False, repr=False, compare=False)
    _ns: re.Pattern[bytes] | None = field(init=False, repr=False, compare=False)
    _ns_groups: tuple[Namespace, ...] = field(init=False, repr=False, compare=False)
    _others: dict[str, re.Pattern[bytes] | None] = field(init=False, repr=False, compare=False)
    _enc_cache: dict[bytes, bool] = field(init=False, repr=False, compare=False)
    _ns_cache: dict[bytes, Namespace] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        state = {
            "_always": not self.plaintext and any(set(p) == {"*"} for p in self.encrypt),
            "_encrypt": _compile_globs(self.encrypt),
            "_plain": _compile_globs(self.plaintext),
            "_ns": _compile_globs((ns.pattern for ns in self.namespaces), capture=True),
            "_ns_groups": (self.default_namespace, *self.namespaces),
            "_others": {
                name: _compile_globs(getattr(self, name))
                for name in ("encrypt_channels", "deterministic_lists", "deterministic_fields")
            },
            "_enc_cache": {},
            "_ns_cache": {},
        }
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def is_encrypted_key(self, key: bytes) -> bool:
        """True if an ``encrypt`` glob matches ``key`` and no ``plaintext`` glob does."""
        if self._always:
            return True
        hit = self._enc_cache.get(key)
        if hit is not None:
            return hit
        encrypt, plain = self._encrypt, self._plain
        result = encrypt is not None and encrypt.match(key) is not None
        result = result and (plain is None or plain.match(key) is None)
        return _remember(self._enc_cache, key, result)

    def namespace_for_key(self, key: bytes) -> Namespace:
        """The first ``redis.namespaces`` entry whose pattern matches, else ``default``."""
        if self._ns is None:
            return self.default_namespace
        hit = self._ns_cache.get(key)
        if hit is not None:
            return hit
        match = self._ns.match(key)
        found = self._ns_groups[match.lastindex or 0] if match else self.default_namespace
        return _remember(self._ns_cache, key, found)

    def _matches(self, name: str, value: bytes) -> bool:
        compiled = self._others[name]
        return compiled is not None and compiled.match(value) is not None

    def is_encrypted_channel(self, channel: bytes) -> bool:
        return self._matches("encrypt_channels", channel)

    def is_deterministic_list(self, key: bytes) -> bool:
        return self._matches("deterministic_lists", key)

    def is_deterministic_fields(self, key: bytes) -> bool:
        return self._matches("deterministic_fields", key)

    def is_allowed_script(self, sha1: str | bytes) -> bool:
        text = sha1.decode("ascii", "replace") if isinstance(sha1, bytes) else sha1
        return text.lower() in self.allowed_scripts


@dataclass(frozen=True)
class S3Settings:
    """``[s3]``. ``listen`` is None when off (also when left at its default with no upstream)."""

    listen: Listen | None
    upstream: str | None
    region: str
    access_key: str | None
    secret_key: Secret[str] | None
    credentials: tuple[S3Credential, ...]
    upstream_access_key: str | None
    upstream_secret_key: Secret[str] | None
    legacy_plaintext: Literal["allow", "refuse"]
    single_put_buffer: int
    list_plaintext_etags: bool
    allow_unaligned_parts: bool
    tls_cert: str | None
    tls_key: str | None

    def client_credentials(self) -> dict[str, Secret[str]]:
        """Every access key clients may sign with -> its secret key."""
        pairs = {c.access_key: c.secret_key for c in self.credentials}
        if self.access_key is not None and self.secret_key is not None:
            pairs[self.access_key] = self.secret_key
        return pairs


@dataclass(frozen=True)
class KeySettings:
    """``[keys]``: durations in seconds; ``classes`` always holds ``default``."""

    provider: Literal["local", "aws-kms"]
    store: FileStore | RedisUrl
    root_key_file: str
    rotation_period: float
    grace_period: float
    propagation_delay: float
    heartbeat_interval: float
    max_keyring_age: float
    cache_ttl: float
    max_stale: float
    max_live_versions: int
    index_rotation_period: float
    auto_revoke: bool
    destroy_min_age: float
    sidecar_id: str
    local_copy: str
    promote_timeout: float
    kms_key_id: str | None
    kms_region: str
    kms_endpoint: str | None
    escrow_recipient: bytes | None
    escrow_dir: str | None
    classes: tuple[KeyClass, ...] = ()
    root_key: Secret[bytes] | None = None
    _by_name: dict[str, KeyClass] = field(init=False, repr=False, compare=False)
    _by_namespace: dict[str, KeyClass] = field(init=False, repr=False, compare=False)
    _buckets: tuple[tuple[re.Pattern[str], KeyClass], ...] = field(
        init=False, repr=False, compare=False
    )
    _bucket_cache: dict[str, KeyClass] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not any(c.name == "default" for c in self.classes):
            implicit = KeyClass("default", self.rotation_period, self.grace_period)
            object.__setattr__(self, "classes", (*self.classes, implicit))
        state = {
            "_by_name": {c.name: c for c in self.classes},
            "_by_namespace": {ns: c for c in reversed(self.classes) for ns in c.redis_namespaces},
            "_buckets": tuple(
                (re.compile(fnmatch.translate(glob)), c)
                for c in self.classes
                for glob in c.s3_buckets
            ),
            "_bucket_cache": {},
        }
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @property
    def default_class(self) -> KeyClass:
        return self._by_name["default"]

    def class_named(self, name: str) -> KeyClass:
        """Raises: KeyError for a class that is not configured."""
        return self._by_name[name]

    def class_for_namespace(self, namespace: str) -> KeyClass:
        return self._by_namespace.get(namespace) or self.default_class

    def class_for_bucket(self, bucket: str) -> KeyClass:
        """The first class (in listed order) with a matching ``s3_buckets`` glob, else default."""
        hit = self._bucket_cache.get(bucket)
        if hit is None:
            found = next((c for rx, c in self._buckets if rx.match(bucket)), self.default_class)
            if len(self._bucket_cache) >= _CACHE_MAX:
                self._bucket_cache.clear()
            hit = self._bucket_cache[bucket] = found
        return hit


@dataclass(frozen=True)
class ReencryptSettings:
    """``[reencrypt]``: ``rate`` items/s, ``lease_ttl``/``breaker_window`` seconds."""

    rate: float
    concurrency: int
    batch: int
    lease_ttl: float
    breaker_threshold: int
    breaker_window: float


@dataclass(frozen=True)
class AdminSettings:
    """``[admin]``: ``tokens`` maps a token name (the audit actor) to its secret."""

    listen: Listen | None
    tokens: Mapping[str, Secret[str]]
    tls_cert: str | None
    tls_key: str | None

    def authenticate(self, token: str | bytes) -> str | None:
        """The name of the token equal to ``token``; compares with every token, constant time."""
        found = None
        for name, secret in self.tokens.items():
            if secret.matches(token) and found is None:
                found = name
        return found


@dataclass(frozen=True)
class AuditSettings:
    """``[audit]``: ``path`` is a file path or ``stdout``."""

    path: str

    @property
    def to_stdout(self) -> bool:
        return self.path == "stdout"


@dataclass(frozen=True)
class Settings:
    """All of veil's settings. Build with :func:`load_settings` or :func:`parse_settings`."""

    redis: RedisSettings
    s3: S3Settings
    keys: KeySettings
    reencrypt: ReencryptSettings
    admin: AdminSettings
    audit: AuditSettings
    warnings: tuple[str, ...] = field(default=(), compare=False)
    source: str | None = field(default=None, compare=False)

    def describe(self) -> dict[str, Any]:
        """Every key as JSON-able data (TOML forms: ``"90d"``, ``"8MiB"``), secrets as ``***``.

        The six sections parse back (:func:`parse_settings`) to equal settings when no secret
        is set; ``config_file``, ``root_key`` and ``warnings`` are added beside them.
        """
        out: dict[str, Any] = {section: {} for section in _SECTIONS}
        for key, spec in KEYS.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value is not None:
                value = spec.kind.render(value)
            elif spec.kind is _LISTEN:
                value = "off"
            out[section][name] = value
        out["config_file"] = self.source
        out["root_key"] = None if self.keys.root_key is None else "***"
        out["warnings"] = list(self.warnings)
        return out


# ------------------------------------------------------------------------ value kinds


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names.update({list: "an array", dict: "a table"})
    return names.get(type(value), type(value).__name__)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    return value


def _nonempty(value: object) -> str:
    text = _text(value)
    if not text.strip() or "\x00" in text:
        raise ValueError("must not be empty")
    return text


def _matching(regex: str, what: str) -> Callable[[object], str]:
    compiled = re.compile(regex)

    def convert(value: object) -> str:
        text = _text(value)
        if not compiled.fullmatch(text):
            raise ValueError(f"{text!r} is not {what}")
        return text

    return convert


def _c_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)}")
    return value


def _c_int(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {_type_name(value)}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low} to {high})")
        return value

    return convert


def _c_rate(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"expected a number, got {_type_name(value)}")
    if not 0 < value < 1e9:
        raise ValueError(f"{value} is out of range (more than 0, less than 1e9)")
    return float(value)


def _c_choice(*choices: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = _text(value)
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return convert


def _c_duration(value: object) -> float:
    return parse_duration(_text(value))


def _c_period(value: object) -> float:
    seconds = _c_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _c_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size such as 8MiB, got {_type_name(value)}")
    size = parse_size(value) if isinstance(value, str) else value
    if not 0 <= size <= _MAX_SINGLE_PUT:
        raise ValueError(f"{value!r} is out of range (0 to 5GiB, S3's single-PUT limit)")
    return size


def _c_listen(value: object) -> Listen | None:
    return parse_listen(_text(value))


def _strings(value: object) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"expected an array of strings, got {_type_name(value)}")
    return [_sub(f"[{i}]", _nonempty, item) for i, item in enumerate(value)]


def _c_globs(value: object) -> tuple[str, ...]:
    return tuple(_strings(value))


def _c_sha1s(value: object) -> frozenset[str]:
    sha1 = _matching(r"[0-9a-fA-F]{40}", "a SHA1 (40 hex digits)")
    return frozenset(_sub(f"[{i}]", sha1, s).lower() for i, s in enumerate(_strings(value)))


def _c_file(value: object) -> str:
    path = _nonempty(value)
    if not os.path.isfile(path):
        raise ValueError(f"file not found: {path!r}")
    return path


def _c_secret(value: object) -> Secret[str]:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    if not re.fullmatch(r"[\x21-\x7e]{1,256}", value):
        raise ValueError("must be 1 to 256 printable ASCII characters without spaces")
    return Secret(value)


def _c_token(value: object) -> Secret[str]:
    token = _c_secret(value)
    if len(token.reveal()) < 16:
        raise ValueError("a token must be at least 16 characters")
    return token


def _b64(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional; b"" if it is not base64."""
    text = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        return b""


def _c_x25519(value: object) -> bytes:
    """An X25519 public key: 32 bytes as base64 (standard or URL-safe) or 64 hex digits."""
    text = _text(value).strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    raw = _b64(text)
    if len(raw) != 32:
        raise ValueError(f"{text!r} is not an X25519 public key (32 bytes, base64 or hex)")
    return raw


def _root_key(text: str) -> Secret[bytes]:
    raw = _b64(text)
    if len(raw) != 32:
        raise _Invalid("must be the base64 of a 32-byte key", key="VEIL_KEYS_ROOT_KEY")
    return Secret(raw)


def _sub(path: str, convert: Callable[[Any], _R], value: object) -> _R:
    """Run ``convert``, extending the key of any error by ``path`` (``[0].name``)."""
    try:
        return convert(value)
    except _Invalid as err:
        raise _Invalid(err.message, path + err.sub) from None
    except ValueError as err:
        raise _Invalid(str(err), path) from None


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _tables(value: object, allowed: tuple[str, ...], required: int) -> list[dict[str, Any]]:
    """Check an array of tables: known keys only, the first ``required`` of them present."""
    if not isinstance(value, list):
        raise ValueError(f"expected an array of tables, got {_type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Invalid(f"expected a table, got {_type_name(item)}", f"[{i}]")
        for name in item:
            if name not in allowed:
                raise _Invalid(f"unknown key {name}{_hint(name, allowed)}", f"[{i}]")
        for name in allowed[:required]:
            if name not in item:
                raise _Invalid(f"missing key {name}", f"[{i}]")
    return value


_NS_NAME = _matching(r"[A-Za-z0-9_.-]{1,64}", "a namespace name ([A-Za-z0-9_.-]{1,64})")
_CLASS_NAME = _matching(r"[a-z][a-z0-9_-]{0,31}", "a class name ([a-z][a-z0-9_-]{0,31})")


def _c_namespaces(value: object) -> tuple[Namespace, ...]:
    out: list[Namespace] = []
    drops: dict[str, bool] = {}
    for i, item in enumerate(_tables(value, ("pattern", "name", "drop_on_revoke"), 2)):
        pattern = _sub(f"[{i}].pattern", _nonempty, item["pattern"])
        name = _sub(f"[{i}].name", _NS_NAME, item["name"])
        drop = _sub(f"[{i}].drop_on_revoke", _c_bool, item.get("drop_on_revoke", False))
        if any(ns.pattern == pattern for ns in out):
            raise _Invalid(f"pattern {pattern!r} is listed twice", f"[{i}].pattern")
        if drops.setdefault(name, drop) != drop:
            raise _Invalid(f"conflicts with another entry of {name!r}", f"[{i}].drop_on_revoke")
        out.append(Namespace(name, pattern, drop))
    return tuple(out)


@dataclass(frozen=True)
class _ClassDraft:
    name: str
    rotation_period: float | None
    grace_period: float | None
    redis_namespaces: tuple[str, ...]
    s3_buckets: tuple[str, ...]


_CLASS_FIELDS = ("name", "rotation_period", "grace_period", "redis_namespaces", "s3_buckets")


def _c_classes(value: object) -> tuple[_ClassDraft, ...]:
    out: list[_ClassDraft] = []
    for i, item in enumerate(_tables(value, _CLASS_FIELDS, 1)):
        name = _sub(f"[{i}].name", _CLASS_NAME, item["name"])
        if any(c.name == name for c in out):
            raise _Invalid(f"class {name!r} is listed twice", f"[{i}].name")
        periods = [
            None if key not in item else _sub(f"[{i}].{key}", convert, item[key])
            for key, convert in (("rotation_period", _c_period), ("grace_period", _c_duration))
        ]
        lists = [
            tuple(
                _sub(f"[{i}].{key}", convert, s)
                for s in _sub(f"[{i}].{key}", _strings, item.get(key, []))
            )
            for key, convert in (("redis_namespaces", _NS_NAME), ("s3_buckets", _nonempty))
        ]
        out.append(_ClassDraft(name, periods[0], periods[1], lists[0], lists[1]))
    return tuple(out)


_ACCESS_KEY = _matching(r"[\x21-\x2e\x30-\x7e]{1,128}", "an access key (printable, no / or spaces)")


def _c_credentials(value: object) -> tuple[S3Credential, ...]:
    return tuple(
        S3Credential(
            _sub(f"[{i}].access_key", _ACCESS_KEY, item["access_key"]),
            _sub(f"[{i}].secret_key", _c_secret, item["secret_key"]),
        )
        for i, item in enumerate(_tables(value, ("access_key", "secret_key"), 2))
    )


_TOKEN_NAME = _matching(r"[A-Za-z0-9_.-]{1,64}", "a token name ([A-Za-z0-9_.-]{1,64})")


def _c_tokens(value: object) -> Mapping[str, Secret[str]]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of name = token, got {_type_name(value)}")
    tokens = {_TOKEN_NAME(name): _sub(f".{name}", _c_token, tok) for name, tok in value.items()}
    return types.MappingProxyType(_distinct_tokens(tokens))


def _distinct_tokens(tokens: dict[str, Secret[str]]) -> dict[str, Secret[str]]:
    seen: dict[bytes, str] = {}
    for name, token in tokens.items():
        other = seen.setdefault(hashlib.sha256(token.reveal_bytes()).digest(), name)
        if other != name:
            raise _Invalid(f"tokens {other!r} and {name!r} are identical", key="admin.tokens")
    return tokens


# --------------------------------------------------------------- environment value forms


def _env_text(text: str) -> object:
    return text


def _env_bool(text: str) -> object:
    if text not in ("true", "false"):
        raise ValueError(f"{text!r} is not a boolean (expected true or false)")
    return text == "true"


def _env_int(text: str) -> object:
    if not re.fullmatch(r"-?[0-9]{1,18}", text):
        raise ValueError(f"{text!r} is not an integer")
    return int(text)


def _env_number(text: str) -> object:
    if not re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,12})?", text):
        raise ValueError(f"{text!r} is not a number")
    return float(text)


def _env_size(text: str) -> object:
    return int(text) if re.fullmatch(r"[0-9]{1,15}", text) else text


def _env_list(text: str) -> object:
    return [item.strip() for item in text.split(",") if item.strip()]


def _env_inline(text: str) -> object:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"expected a TOML inline value such as [{{...}}] ({err})") from None


def _env_tokens(text: str) -> object:
    if text.lstrip().startswith("{"):
        return _env_inline(text)
    tokens: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, token = item.partition("=")
        if not sep:
            raise ValueError("expected name=token,... or a TOML inline table")
        tokens[name.strip()] = token.strip()
    return tokens


# ----------------------------------------------------------------------------- key table


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class _Kind:
    label: str  # for docs/CONFIG.md
    convert: Callable[[Any], Any]  # TOML value -> attribute; ValueError if bad
    from_env: Callable[[str], object] = _env_text  # environment string -> TOML value
    render: Callable[[Any], Any] = _same  # attribute -> JSON (describe)


def _render_class(c: KeyClass) -> dict[str, Any]:
    return {
        "name": c.name,
        "rotation_period": format_duration(c.rotation_period),
        "grace_period": format_duration(c.grace_period),
        "redis_namespaces": list(c.redis_namespaces),
        "s3_buckets": list(c.s3_buckets),
    }


def _render_ns(ns: Namespace) -> dict[str, Any]:
    return {"pattern": ns.pattern, "name": ns.name, "drop_on_revoke": ns.drop_on_revoke}


_STARS = "***"
_DURATION = _Kind("duration", _c_duration, render=format_duration)
_PERIOD = _Kind("duration > 0", _c_period, render=format_duration)
_BOOL = _Kind("boolean", _c_bool, _env_bool)
_LISTEN = _Kind("listen", _c_listen, render=str)
_GLOBS = _Kind("globs", _c_globs, _env_list, list)
_FILE = _Kind("file path", _c_file)
_PATH = _Kind("path", _nonempty)
_TEXT = _Kind("string", _nonempty)
_ACCESS = _Kind("access key", _ACCESS_KEY)
_SECRET = _Kind("secret", _c_secret, render=lambda v: _STARS)
_HTTP = _Kind("http(s) URL", _c_http_url)
_LEGACY = _Kind("allow, refuse", _c_choice("allow", "refuse"))
_REGION = _Kind("region", _matching(r"[a-z0-9-]{1,32}", "an AWS region name"))
_REDIS_URL = _Kind("redis URL", lambda v: parse_redis_url(_text(v)), render=str)
_NAMESPACES = _Kind("tables", _c_namespaces, _env_inline, lambda v: [_render_ns(n) for n in v])
_MODE = _Kind("enforce, observe", _c_choice("enforce", "observe"))
_SHA1S = _Kind("SHA1 list", _c_sha1s, _env_list, sorted)
_SIZE = _Kind("size", _c_size, _env_size, format_size)
_CREDENTIALS = _Kind(
    "tables",
    _c_credentials,
    _env_inline,
    lambda v: [{"access_key": c.access_key, "secret_key": _STARS} for c in v],
)
_PROVIDER = _Kind("local, aws-kms", _c_choice("local", "aws-kms"))
_STORE = _Kind("store", _c_store, render=str)
_VERSIONS = _Kind("integer", _c_int(2, 1000), _env_int)
_SIDECAR = _Kind("string", _matching(r"[A-Za-z0-9_.:-]{0,253}", "a sidecar id"))
_X25519 = _Kind("X25519 key", _c_x25519, render=lambda v: base64.b64encode(v).decode())
_CLASSES = _Kind("tables", _c_classes, _env_inline, lambda v: [_render_class(c) for c in v])
_RATE = _Kind("number", _c_rate, _env_number)
_WORKERS = _Kind("integer", _c_int(1, 1024), _env_int)
_BATCH = _Kind("integer", _c_int(1, 100_000), _env_int)
_THRESHOLD = _Kind("integer", _c_int(1, 1_000_000_000), _env_int)
_TOKENS = _Kind("tokens", _c_tokens, _env_tokens, lambda v: dict.fromkeys(v, _STARS))
_AUDIT = _Kind("path or stdout", _nonempty)


@dataclass(frozen=True)
class ConfigKey:
    """One row of :data:`KEYS`: ``default`` is in TOML form (None: unset)."""

    name: str
    kind: _Kind
    default: object
    doc: str

    @property
    def env(self) -> str:
        return "VEIL_" + self.name.replace(".", "_").upper()


_ROWS: list[tuple[str, _Kind, object, str]] = [
    ("redis.listen", _LISTEN, "127.0.0.1:6380", "RESP listener, or `off`"),
    ("redis.upstream", _REDIS_URL, "redis://127.0.0.1:6379", "`rediss://` for TLS upstream"),
    ("redis.encrypt", _GLOBS, ["*"], "key globs whose values are encrypted"),
    ("redis.plaintext", _GLOBS, [], "key globs passed through; plaintext wins where both match"),
    ("redis.namespaces", _NAMESPACES, [], "`[{pattern, name, drop_on_revoke}]`, first match wins"),
    ("redis.encrypt_channels", _GLOBS, [], "pub/sub channel globs whose messages are encrypted"),
    ("redis.deterministic_lists", _GLOBS, [], "key globs whose list elements are deterministic"),
    (
        "redis.deterministic_fields",
        _GLOBS,
        [],
        "key globs whose hash field names are deterministic",
    ),
    ("redis.legacy_plaintext", _LEGACY, "refuse", "`allow` while onboarding an existing Redis"),
    ("redis.mode", _MODE, "enforce", "`observe`: pass through, count `would_refuse`"),
    ("redis.allowed_scripts", _SHA1S, [], "SHA1s of Lua scripts whose keys are all plaintext"),
    ("redis.allow_flush", _BOOL, False, "FLUSHALL/FLUSHDB refused unless true"),
    ("redis.tls_cert", _FILE, None, "TLS certificate (PEM) of the RESP listener"),
    ("redis.tls_key", _FILE, None, "its private key (PEM)"),
    ("redis.tls_client_ca", _FILE, None, "CA (PEM) client certificates must chain to"),
    ("s3.listen", _LISTEN, "127.0.0.1:9000", "S3 listener, or `off`; off if left without upstream"),
    ("s3.upstream", _HTTP, None, "upstream S3 endpoint, `http(s)://host[:port]`"),
    ("s3.region", _REGION, "us-east-1", "region of client and upstream signatures"),
    ("s3.access_key", _ACCESS, None, "the access key clients sign with"),
    ("s3.secret_key", _SECRET, None, "its secret key"),
    ("s3.credentials", _CREDENTIALS, [], "more client pairs `[{access_key, secret_key}]`"),
    ("s3.upstream_access_key", _ACCESS, None, "what veil signs upstream with (none: AWS chain)"),
    ("s3.upstream_secret_key", _SECRET, None, "its secret key"),
    ("s3.legacy_plaintext", _LEGACY, "refuse", "as for Redis, for objects without metadata"),
    ("s3.single_put_buffer", _SIZE, "8MiB", "single PUTs up to this size are buffered"),
    ("s3.list_plaintext_etags", _BOOL, False, "one HEAD per listed object for plaintext ETags"),
    ("s3.allow_unaligned_parts", _BOOL, False, "accept parts that are not 64 KiB multiples"),
    ("s3.tls_cert", _FILE, None, "TLS certificate (PEM) of the S3 listener"),
    ("s3.tls_key", _FILE, None, "its private key (PEM)"),
    ("keys.provider", _PROVIDER, "local", "`aws-kms` needs `keys.kms_key_id`"),
    ("keys.store", _STORE, "file:./veil-keyring.json", "`file:<path>` or `redis(s)://...`"),
    ("keys.root_key_file", _PATH, "./veil-root.key", "or `VEIL_KEYS_ROOT_KEY` holds the key"),
    ("keys.rotation_period", _PERIOD, "90d", "scheduled rotation, from activation"),
    ("keys.grace_period", _DURATION, "7d", "a retired version is revoked no sooner"),
    ("keys.propagation_delay", _DURATION, "5m", "promotion wait without heartbeats"),
    ("keys.heartbeat_interval", _PERIOD, "5s", "sidecar heartbeats"),
    ("keys.max_keyring_age", _PERIOD, "10m", "an older keyring stops encrypting"),
    ("keys.cache_ttl", _PERIOD, "5m", "re-validate unwrapped keys this often"),
    ("keys.max_stale", _DURATION, "24h", "keep serving this long while the KMS is down"),
    ("keys.max_live_versions", _VERSIONS, 8, "no new version while this many are alive"),
    ("keys.index_rotation_period", _PERIOD, "365d", "the deterministic index keyring"),
    ("keys.auto_revoke", _BOOL, False, "revoke retired versions after grace and completion"),
    ("keys.destroy_min_age", _DURATION, "30d", "never destroy younger versions"),
    ("keys.sidecar_id", _SIDECAR, "", "empty: `hostname-pid`, chosen at run time"),
    ("keys.local_copy", _PATH, "./.veil-keyring.sealed", "sealed local copy of the keyring"),
    ("keys.promote_timeout", _PERIOD, "2m", "`keys promote` waits this long for acks"),
    ("keys.kms_key_id", _TEXT, None, "AWS KMS key id or ARN"),
    ("keys.kms_region", _REGION, "us-east-1", "AWS KMS region"),
    ("keys.kms_endpoint", _HTTP, None, "AWS KMS endpoint (none: AWS's own)"),
    ("keys.escrow_recipient", _X25519, None, "escrow on every keyring change to this key"),
    ("keys.escrow_dir", _PATH, None, "where those escrow bundles are written"),
    ("keys.classes", _CLASSES, [], "`[[keys.classes]]`; `default` always exists"),
    ("reencrypt.rate", _RATE, 500, "items per second"),
    ("reencrypt.concurrency", _WORKERS, 4, "workers"),
    ("reencrypt.batch", _BATCH, 100, "scan batch (SCAN COUNT, ListObjectsV2 page)"),
    ("reencrypt.lease_ttl", _PERIOD, "30s", "migration lease"),
    ("reencrypt.breaker_threshold", _THRESHOLD, 20, "decrypt failures per window that pause"),
    ("reencrypt.breaker_window", _PERIOD, "60s", "the breaker's window"),
    ("admin.listen", _LISTEN, "127.0.0.1:9090", "admin API; off loopback needs TLS and tokens"),
    ("admin.tokens", _TOKENS, {}, '`{name = "token"}`, 16+ characters; name = audit actor'),
    ("admin.tls_cert", _FILE, None, "TLS certificate (PEM); mandatory off loopback"),
    ("admin.tls_key", _FILE, None, "its private key (PEM)"),
    ("audit.path", _AUDIT, "./veil-audit.jsonl", "audit log (JSON lines), or `stdout`"),
]


KEYS: Mapping[str, ConfigKey] = types.MappingProxyType(
    {name: ConfigKey(name, kind, default, doc) for name, kind, default, doc in _ROWS}
)
"""Every configuration key, in documentation order."""

SPECIAL_ENV: Mapping[str, str] = types.MappingProxyType(
    {
        "VEIL_CONFIG": "path of the config file (default `./veil.toml` if it exists)",
        "VEIL_ADMIN_TOKEN": "adds (or replaces) the admin token named `default`; the CLI sends it",
        "VEIL_KEYS_ROOT_KEY": "the root key itself (base64, 32 bytes), not from a file",
    }
)
"""Environment variables that are not ``VEIL_<SECTION>_<KEY>`` of a key."""

_ENV_TO_KEY = {spec.env: name for name, spec in KEYS.items()}


# ---------------------------------------------------------------------------- assembling


def _fail(key: str, env_name: str | None, err: ValueError) -> NoReturn:
    sub, message = (err.sub, err.message) if isinstance(err, _Invalid) else ("", str(err))
    where = f" ({env_name})" if env_name else ""
    raise ConfigError(f"config: {key}{sub}{where}: {message}") from None


def _flatten(data: Mapping[str, Any]) -> dict[str, object]:
    raw: dict[str, object] = {}
    for section, table in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"config: unknown key {section}{_hint(section, _SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"config: {section}: expected a table, got {_type_name(table)}")
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in KEYS:
                hint = _hint(key, KEYS)
                if key == "keys.root_key":
                    hint = " (the root key comes from VEIL_KEYS_ROOT_KEY or keys.root_key_file)"
                raise ConfigError(f"config: unknown key {key}{hint}")
            raw[key] = value
    return raw


def _from_env(env: Mapping[str, str], raw: dict[str, object]) -> dict[str, str]:
    """Overlay ``VEIL_<SECTION>_<KEY>`` values onto ``raw``; returns key -> variable name."""
    used: dict[str, str] = {}
    for name, text in env.items():
        if not name.startswith("VEIL_") or name in SPECIAL_ENV:
            continue
        key = _ENV_TO_KEY.get(name)
        if key is None:
            hint = _hint(name, [*_ENV_TO_KEY, *SPECIAL_ENV])
            raise ConfigError(f"config: unknown environment variable {name}{hint}")
        spec = KEYS[key]
        try:
            raw[key] = None if text == "" and spec.default is None else spec.kind.from_env(text)
        except ValueError as err:
            _fail(key, name, err)
        used[key] = name
    return used


def _convert(raw: Mapping[str, object]) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    for key, spec in KEYS.items():
        section, name = key.split(".")
        value = raw.get(key, spec.default)
        try:
            values[section][name] = None if value is None else spec.kind.convert(value)
        except ValueError as err:
            sub, message = (err.sub, err.message) if isinstance(err, _Invalid) else ("", str(err))
            raise _Invalid(message, sub, key) from None
    return values


def _pair(section: str, v: Mapping[str, Any], first: str, second: str) -> None:
    if (v[first] is None) != (v[second] is None):
        missing, given = (second, first) if v[second] is None else (first, second)
        raise _Invalid(f"required when {section}.{given} is set", key=f"{section}.{missing}")


def _build_keys(v: dict[str, Any], root_key: str | None) -> KeySettings:
    if v["provider"] == "aws-kms" and v["kms_key_id"] is None:
        raise _Invalid('required when keys.provider = "aws-kms"', key="keys.kms_key_id")
    if v["max_keyring_age"] <= v["heartbeat_interval"]:
        raise _Invalid("must be longer than keys.heartbeat_interval", key="keys.max_keyring_age")
    _pair("keys", v, "escrow_recipient", "escrow_dir")
    rotation, grace = v["rotation_period"], v["grace_period"]
    classes = [
        KeyClass(
            d.name,
            rotation if d.rotation_period is None else d.rotation_period,
            grace if d.grace_period is None else d.grace_period,
            d.redis_namespaces,
            d.s3_buckets,
        )
        for d in v["classes"]
    ]
    if len(classes) + (not any(c.name == "default" for c in classes)) > 255:
        raise _Invalid("at most 255 classes, the implicit default included", key="keys.classes")
    for attr, what in (("redis_namespaces", "namespace"), ("s3_buckets", "bucket glob")):
        owner: dict[str, str] = {}
        for i, c in enumerate(classes):
            for item in getattr(c, attr):
                if owner.setdefault(item, c.name) != c.name:
                    message = f"{what} {item!r} is already in class {owner[item]!r}"
                    raise _Invalid(message, f"[{i}].{attr}", "keys.classes")
    v["classes"] = tuple(classes)
    return KeySettings(**v, root_key=None if root_key is None else _root_key(root_key))


def _build_redis(v: dict[str, Any], keys: KeySettings) -> RedisSettings:
    names = {ns.name for ns in v["namespaces"]} | {"default"}
    for i, c in enumerate(keys.classes):
        for name in c.redis_namespaces:
            if name not in names:
                message = f"namespace {name!r} is not in redis.namespaces"
                raise _Invalid(message, f"[{i}].redis_namespaces", "keys.classes")
    v["namespaces"] = tuple(
        dataclasses.replace(ns, key_class=keys.class_for_namespace(ns.name).name)
        for ns in v["namespaces"]
    )
    _pair("redis", v, "tls_cert", "tls_key")
    if v["tls_client_ca"] is not None and v["tls_cert"] is None:
        raise _Invalid("needs redis.tls_cert and redis.tls_key", key="redis.tls_client_ca")
    drop = any(ns.drop_on_revoke for ns in v["namespaces"] if ns.name == "default")
    default = Namespace("default", "*", drop, keys.class_for_namespace("default").name)
    return RedisSettings(**v, default_namespace=default)


def _build_s3(v: dict[str, Any], listen_explicit: bool, warnings: list[str]) -> S3Settings:
    _pair("s3", v, "tls_cert", "tls_key")
    _pair("s3", v, "access_key", "secret_key")
    _pair("s3", v, "upstream_access_key", "upstream_secret_key")
    if v["listen"] is not None and v["upstream"] is None:
        if listen_explicit:
            raise _Invalid('required unless s3.listen = "off"', key="s3.upstream")
        v["listen"] = None
        warnings.append("s3: listener off (no s3.upstream configured)")
    keys = [c.access_key for c in v["credentials"]]
    if v["access_key"] is not None:
        keys.append(v["access_key"])
    for access_key in keys:
        if keys.count(access_key) > 1:
            raise _Invalid(f"access key {access_key!r} is configured twice", key="s3.credentials")
    if v["listen"] is not None and not keys:
        message = "the S3 listener needs client credentials (this pair or s3.credentials)"
        raise _Invalid(message, key="s3.access_key")
    return S3Settings(**v)


def _build_admin(v: dict[str, Any], default_token: str | None) -> AdminSettings:
    tokens = dict(v["tokens"])
    if default_token is not None:
        try:
            tokens["default"] = _c_token(default_token)
        except ValueError as err:
            raise _Invalid(str(err), key="VEIL_ADMIN_TOKEN") from None
    v["tokens"] = types.MappingProxyType(_distinct_tokens(tokens))
    _pair("admin", v, "tls_cert", "tls_key")
    listen = v["listen"]
    if listen is not None and not listen.is_loopback:
        for key, given in (("tls_cert", v["tls_cert"]), ("tokens", tokens)):
            if not given:
                message = f"required when admin.listen ({listen}) is not loopback"
                raise _Invalid(message, key=f"admin.{key}")
    return AdminSettings(**v)


def _check_listeners(settings: Settings) -> None:
    seen: list[tuple[str, Listen]] = []
    for section in ("redis", "s3", "admin"):
        listen: Listen | None = getattr(settings, section).listen
        if listen is None or listen.port == 0:
            continue
        for other, taken in seen:
            wildcard = {listen.host, taken.host} & {"0.0.0.0", "::"}
            if taken.port == listen.port and (taken.host == listen.host or wildcard):
                raise _Invalid(f"{listen} is also {other}.listen", key=f"{section}.listen")
        seen.append((section, listen))


def _advice(settings: Settings) -> list[str]:
    notes = []
    if settings.redis.mode == "observe":
        notes.append("redis.mode = observe: values pass through unencrypted")
    for section in ("redis", "s3"):
        if getattr(settings, section).legacy_plaintext == "allow":
            notes.append(f"{section}.legacy_plaintext = allow: non-envelope data is served")
    return notes


def parse_settings(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, *, source: str | None = None
) -> Settings:
    """Settings from parsed TOML ``data`` overlaid with ``env`` (``VEIL_*``; none if None).

    Pure apart from checking that TLS files exist; ``VEIL_CONFIG`` in ``env`` is ignored here.

    Raises:
        ConfigError: an unknown key or variable, or a bad value; the message names the key.
    """
    env = {} if env is None else env
    raw = _flatten(data)
    explicit = set(raw)
    used = _from_env(env, raw)
    try:
        values = _convert(raw)
        warnings: list[str] = []
        keys = _build_keys(values["keys"], env.get("VEIL_KEYS_ROOT_KEY"))
        settings = Settings(
            redis=_build_redis(values["redis"], keys),
            s3=_build_s3(values["s3"], "s3.listen" in explicit or "s3.listen" in used, warnings),
            keys=keys,
            reencrypt=ReencryptSettings(**values["reencrypt"]),
            admin=_build_admin(values["admin"], env.get("VEIL_ADMIN_TOKEN")),
            audit=AuditSettings(**values["audit"]),
            source=source,
        )
        _check_listeners(settings)
    except _Invalid as err:
        _fail(err.key or "?", used.get(err.key or ""), err)
    return dataclasses.replace(settings, warnings=(*warnings, *_advice(settings)))


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config: config file not found: {path!r}") from None
    except OSError as err:
        raise ConfigError(f"config: cannot read {path!r}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: {path}: invalid TOML: {err}") from None


def _exposed_secrets(path: str, data: Mapping[str, Any]) -> list[str]:
    secret_keys = {"s3.secret_key", "s3.upstream_secret_key", "s3.credentials", "admin.tokens"}
    present = {f"{s}.{k}" for s, t in data.items() if isinstance(t, dict) for k in t}
    urls = [data.get("redis", {}).get("upstream"), data.get("keys", {}).get("store")]
    secret = bool(present & secret_keys) or any(isinstance(u, str) and "@" in u for u in urls)
    if not secret or os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO) == 0:
        return []
    return [f"{path} holds secrets and is readable by other users (chmod 600 it)"]


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """veil's settings: ``path`` (else ``VEIL_CONFIG``, else ``./veil.toml`` if it exists, else
    only defaults) overlaid with ``env`` (``os.environ``, read once, if None).

    Raises:
        ConfigError: a named file that does not exist, invalid TOML, or what
            :func:`parse_settings` raises.
    """
    env = dict(os.environ) if env is None else env
    if path is None:
        path = env.get("VEIL_CONFIG") or ("veil.toml" if os.path.isfile("veil.toml") else None)
    data = {} if path is None else _read_toml(path)
    settings = parse_settings(data, env, source=path)
    if path is not None and (exposed := _exposed_secrets(path, data)):
        settings = dataclasses.replace(settings, warnings=(*settings.warnings, *exposed))
    return settings


# ------------------------------------------------------------------------------- docs


def _toml_literal(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def reference_markdown() -> str:
    """docs/CONFIG.md, generated from :data:`KEYS` (a test keeps the file in sync)."""
    lines = [
        "# veil configuration reference",
        "",
        "Generated from `proxy/config.py` (`KEYS`); `tests/unit/test_config.py` fails when this",
        "file is out of date. Regenerate with",
        "`python3 -c 'from proxy.config import reference_markdown as r; print(r(), end=\"\")'"
        " > docs/CONFIG.md`.",
        "",
        "Config is TOML (`veil.toml`, or `-c PATH`, or `VEIL_CONFIG`); every key can be overridden",
        "by the environment variable shown. Durations: `^[0-9]+(s|m|h|d)$`. Sizes: bytes or",
        "`512KiB`, `8MiB`, `1GiB`. Listeners: `host:port`, `[::1]:6380` or `off`. In the",
        "environment, lists are comma-separated, booleans `true|false`, arrays of tables a TOML",
        "inline array, `admin.tokens` `name=token,...`; an empty value resets a key whose default",
        "is none. An unknown key, an unknown `VEIL_*` variable or a bad value stops start-up",
        "(exit code 2) with a message naming the key.",
    ]
    for section in _SECTIONS:
        lines += ["", f"## [{section}]", "", "| key | environment | type | default | meaning |"]
        lines.append("|---|---|---|---|---|")
        for spec in KEYS.values():
            if spec.name.startswith(section + "."):
                default = "none" if spec.default is None else f"`{_toml_literal(spec.default)}`"
                row = f"`{spec.name}` | `{spec.env}` | {spec.kind.label} | {default} | {spec.doc}"
                lines.append(f"| {row} |")
    lines += ["", "## Other environment variables", "", "| variable | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {doc} |" for name, doc in SPECIAL_ENV.items()]
    return "\n".join([*lines, *_RULES]) + "\n"


_RULES = """
## Globs

`redis.encrypt`, `redis.plaintext`, `redis.namespaces[].pattern`, `redis.encrypt_channels`
and `redis.deterministic_*` are Redis globs on the key's bytes, as `KEYS` and `SCAN MATCH` use
them: `*`, `?` (one byte), `[abc]`, `[^abc]`, `[a-z]`, `\\x` (a literal x); an unclosed `[`
runs to the end of the pattern. Two differences: `*` matches the empty key (as `KEYS *` does),
and range ends compare as unsigned bytes. `keys.classes[].s3_buckets` are shell globs
(fnmatch: `*`, `?`, `[seq]`, `[!seq]`).

## Key classes and namespaces

A Redis key's namespace is the first `redis.namespaces` entry whose pattern matches it, else
`default`. A class lists the namespaces (names from `redis.namespaces`, or `default`) and the
bucket globs it protects; each belongs to one class at most, and everything unlisted is in
class `default`, which always exists (list it to set its periods). A bucket matching globs of
several classes takes the first class listed. Periods default to `keys.rotation_period` and
`keys.grace_period`. At most 255 classes.

## Rules between keys

- `tls_cert` and `tls_key` come in pairs; `redis.tls_client_ca` needs them.
- `admin.listen` off loopback needs `admin.tls_cert`, `admin.tls_key` and a token.
- The S3 listener needs `s3.upstream` and client credentials; left at its default address
  with no upstream configured, it is off (a start-up warning says so).
- `keys.provider = "aws-kms"` needs `keys.kms_key_id`; `keys.escrow_recipient` and
  `keys.escrow_dir` come together; `keys.max_keyring_age` exceeds `keys.heartbeat_interval`.
- Two listeners never share a port.""".split("\n")
