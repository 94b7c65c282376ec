"""Configuration value types and their text forms: durations, sizes, listeners, URLs, stores.

Pure functions and frozen dataclasses with no knowledge of the key table: each ``parse_*``
turns one text form into its typed value or raises ``ValueError`` with a message that never
echoes a password (URLs are shown with their user info as ``***``). Also the small value
dataclasses of the settings tree that the key kinds build (:class:`Namespace`,
:class:`KeyClass`, :class:`S3Credential`).

Part of :mod:`proxy.config`, which re-exports the public names; import them from there.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, quote, unquote, urlsplit

from proxy._secret import Secret

__all__ = [
    "FileStore",
    "KeyClass",
    "Listen",
    "Namespace",
    "RedisUrl",
    "S3Credential",
    "format_duration",
    "format_size",
    "is_loopback",
    "parse_duration",
    "parse_listen",
    "parse_redis_url",
    "parse_size",
]

_MAX_DURATION = 100 * 365 * 86400


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


@dataclass(frozen=True)
class FileStore:
    """``keys.store = "file:<path>"``."""

    path: str

    def __str__(self) -> str:
        return f"file:{self.path}"


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
