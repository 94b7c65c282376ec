"""The settings tree: one frozen dataclass per section and :class:`Settings` over them.

Attributes carry the TOML key names. Units: durations are ``float`` seconds
(``keys.rotation_period == 7776000.0``), sizes ``int`` bytes, listeners a :class:`Listen` or
``None`` for ``off``. The lookups that run per command or request (is this key encrypted,
which namespace, which key class for a bucket) are precompiled in ``__post_init__`` (Redis
globs through :mod:`proxy._glob`, bucket globs fnmatch-style) and their answers cached in
bounded dicts that are cleared when full.

Part of :mod:`proxy.config`, which re-exports the public names; import them from there.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from proxy._config_keys import _SECTIONS, KEYS
from proxy._config_kinds import _LISTEN
from proxy._config_values import FileStore, KeyClass, Listen, Namespace, RedisUrl, S3Credential
from proxy._glob import _compile_globs
from proxy._secret import Secret

__all__ = [
    "AdminSettings",
    "AuditSettings",
    "KeySettings",
    "RedisSettings",
    "ReencryptSettings",
    "S3Settings",
    "Settings",
]

_R = TypeVar("_R")
_CACHE_MAX = 4096  # entries per lookup cache; cleared when full
_CACHE_KEY_MAX = 256  # longer keys are matched but not cached


def _remember(cache: dict[bytes, _R], key: bytes, value: _R) -> _R:
    if len(key) <= _CACHE_KEY_MAX:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = value
    return value


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
