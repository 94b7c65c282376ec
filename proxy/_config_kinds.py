"""Configuration value kinds: the checks that turn a raw TOML or environment value into a typed
attribute, and the kinds (:class:`_Kind`) that the key table (:mod:`proxy._config_keys`) uses.

Each converter takes a TOML value and returns the attribute or raises ``ValueError``;
:class:`_Invalid` (a ``ValueError``) also carries the sub-path of the bad item (``[0].name``)
and, for rules between keys, the key to blame. ``_env_*`` turn an environment string into the
TOML value the converter expects: scalars as in TOML but unquoted, lists comma-separated,
arrays of tables a TOML inline array, ``admin.tokens`` ``name=token,...`` or an inline table.
A kind's ``render`` goes back from the attribute to its TOML form (``Settings.describe``).

Private to :mod:`proxy.config`.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import os
import re
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from proxy._config_values import (
    FileStore,
    KeyClass,
    Listen,
    Namespace,
    RedisUrl,
    S3Credential,
    _redact_url,
    _split_url,
    format_duration,
    format_size,
    parse_duration,
    parse_listen,
    parse_redis_url,
    parse_size,
)
from proxy._secret import Secret

_R = TypeVar("_R")
_MAX_SINGLE_PUT = 5 << 30  # S3's single-PUT limit


class _Invalid(ValueError):
    """A bad value: ``sub`` extends the key (``[0].name``); ``key`` names it for cross rules."""

    def __init__(self, message: str, sub: str = "", key: str | None = None) -> None:
        super().__init__(message)
        self.message, self.sub, self.key = message, sub, key


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


def _c_http_url(value: object) -> str:
    parts, shown, _, _ = _split_url(_text(value), ("http", "https"))
    if "@" in parts.netloc:
        raise ValueError("credentials do not belong in the URL (use the *_access_key keys)")
    if parts.path not in ("", "/"):
        raise ValueError(f"{shown!r}: only scheme://host[:port] is allowed")
    return _text(value).rstrip("/")


def _c_store(value: object) -> FileStore | RedisUrl:
    text = _text(value)
    if text.startswith("file:"):
        if not text[5:]:
            raise ValueError("'file:' needs a path (e.g. file:./veil-keyring.json)")
        return FileStore(text[5:])
    if text.startswith(("redis://", "rediss://")):
        return parse_redis_url(text)
    raise ValueError(f"{_redact_url(text)!r} is not file:<path>, redis://... or rediss://...")


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


# --------------------------------------------------------------------------------- kinds


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
