"""The configuration key table (SPEC 3): :data:`KEYS` and :data:`SPECIAL_ENV`.

Every key lives in one table, :data:`KEYS` (dotted name -> kind, default, meaning); the docs
(``docs/CONFIG.md``, :func:`proxy.config.reference_markdown`), ``Settings.describe`` and the
tests all walk it. Defaults are written in TOML form, so they pass the same checks as the file
and the environment.

Part of :mod:`proxy.config`, which re-exports the public names; import them from there.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass

from proxy._config_kinds import (
    _ACCESS,
    _AUDIT,
    _BATCH,
    _BOOL,
    _CLASSES,
    _CREDENTIALS,
    _DURATION,
    _FILE,
    _GLOBS,
    _HTTP,
    _LEGACY,
    _LISTEN,
    _MODE,
    _NAMESPACES,
    _PATH,
    _PERIOD,
    _PROVIDER,
    _RATE,
    _REDIS_URL,
    _REGION,
    _SECRET,
    _SHA1S,
    _SIDECAR,
    _SIZE,
    _STORE,
    _TEXT,
    _THRESHOLD,
    _TOKENS,
    _VERSIONS,
    _WORKERS,
    _X25519,
    _Kind,
)

__all__ = ["KEYS", "SPECIAL_ENV", "ConfigKey"]

_SECTIONS = ("redis", "s3", "keys", "reencrypt", "admin", "audit")


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
