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

Secrets are :class:`Secret` objects that never print (:mod:`proxy._secret`); Redis globs match
as Redis ``stringmatchlen`` does on bytes, in linear time (:mod:`proxy._glob`).

Layout
------
This module is the public face: import everything from here. It holds the loading (file,
environment, conversion, rules between keys) and the docs generator; the rest lives in private
modules, each importing only those above it: :mod:`proxy._secret` (:class:`Secret`),
:mod:`proxy._glob` (Redis globs), :mod:`proxy._config_values` (value types and text forms),
:mod:`proxy._config_kinds` (value kinds: converters and environment forms),
:mod:`proxy._config_keys` (the key table) and :mod:`proxy._config_settings` (the settings
dataclasses and their lookups).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tomllib
import types
from collections.abc import Mapping
from typing import Any, NoReturn

from proxy._config_keys import _ENV_TO_KEY, _SECTIONS, KEYS, SPECIAL_ENV, ConfigKey
from proxy._config_kinds import (
    _c_token,
    _distinct_tokens,
    _hint,
    _Invalid,
    _root_key,
    _type_name,
)
from proxy._config_settings import (
    AdminSettings,
    AuditSettings,
    KeySettings,
    RedisSettings,
    ReencryptSettings,
    S3Settings,
    Settings,
)
from proxy._config_values import (
    FileStore,
    KeyClass,
    Listen,
    Namespace,
    RedisUrl,
    S3Credential,
    format_duration,
    format_size,
    is_loopback,
    parse_duration,
    parse_listen,
    parse_redis_url,
    parse_size,
)
from proxy._glob import redis_glob_match, redis_glob_regex
from proxy._secret import Secret
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
