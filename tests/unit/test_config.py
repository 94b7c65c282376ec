"""proxy.config: the SPEC 3 key table, environment overrides, validation, secrets and globs.

The glob tests compare three things: the expected answer written here, a line-by-line port of
Redis's ``stringmatchlen`` (``_reference_match``), and a real ``redis-server`` (``KEYS``).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hmac
import json
import os
import pickle
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import (
    KEYS,
    SPECIAL_ENV,
    FileStore,
    KeyClass,
    Listen,
    Namespace,
    RedisUrl,
    S3Credential,
    Secret,
    Settings,
    format_duration,
    format_size,
    is_loopback,
    load_settings,
    parse_duration,
    parse_listen,
    parse_settings,
    parse_size,
    redis_glob_match,
    reference_markdown,
)
from proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400.0
S3_ON: dict[str, Any] = {
    "upstream": "http://127.0.0.1:9999",
    "access_key": "AKIDEXAMPLE",
    "secret_key": "wJalrXUtnFEMIK7MDENG",
}
TOKEN = "0123456789abcdef-token"
ROOT_KEY = base64.b64encode(bytes(range(32))).decode()


def parse(data: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
    return parse_settings(data or {}, env or {})


def error(data: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(data, env)
    assert caught.value.exit_code == 2
    # nothing chained (a chained message could hold a value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    return str(caught.value)


def attr(settings: Settings, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(settings, section), name)


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """Files for the TLS keys (their content is not config's business)."""
    paths = {}
    for name in ("cert", "key", "ca"):
        path = tmp_path / f"{name}.pem"
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
        paths[name] = str(path)
    return paths


# ------------------------------------------------------------------ the table and defaults

# SPEC 3's table, verbatim (None: "none"); reencrypt's "yours" values are ours.
SPEC_TABLE: dict[str, object] = {
    "redis.listen": "127.0.0.1:6380",
    "redis.upstream": "redis://127.0.0.1:6379",
    "redis.encrypt": ["*"],
    "redis.plaintext": [],
    "redis.namespaces": [],
    "redis.encrypt_channels": [],
    "redis.deterministic_lists": [],
    "redis.deterministic_fields": [],
    "redis.legacy_plaintext": "refuse",
    "redis.mode": "enforce",
    "redis.allowed_scripts": [],
    "redis.allow_flush": False,
    "redis.tls_cert": None,
    "redis.tls_key": None,
    "redis.tls_client_ca": None,
    "s3.listen": "127.0.0.1:9000",
    "s3.upstream": None,
    "s3.region": "us-east-1",
    "s3.access_key": None,
    "s3.secret_key": None,
    "s3.upstream_access_key": None,
    "s3.upstream_secret_key": None,
    "s3.legacy_plaintext": "refuse",
    "s3.single_put_buffer": "8MiB",
    "s3.list_plaintext_etags": False,
    "s3.allow_unaligned_parts": False,
    "s3.tls_cert": None,
    "s3.tls_key": None,
    "keys.provider": "local",
    "keys.store": "file:./veil-keyring.json",
    "keys.root_key_file": "./veil-root.key",
    "keys.rotation_period": "90d",
    "keys.grace_period": "7d",
    "keys.propagation_delay": "5m",
    "keys.heartbeat_interval": "5s",
    "keys.max_keyring_age": "10m",
    "keys.cache_ttl": "5m",
    "keys.max_stale": "24h",
    "keys.max_live_versions": 8,
    "keys.index_rotation_period": "365d",
    "keys.auto_revoke": False,
    "keys.destroy_min_age": "30d",
    "reencrypt.rate": 500,
    "reencrypt.concurrency": 4,
    "reencrypt.batch": 100,
    "reencrypt.lease_ttl": "30s",
    "reencrypt.breaker_threshold": 20,
    "reencrypt.breaker_window": "60s",
    "admin.listen": "127.0.0.1:9090",
    "admin.tokens": {},
    "admin.tls_cert": None,
    "admin.tls_key": None,
    "audit.path": "./veil-audit.jsonl",
    # the brief's additional keys
    "keys.sidecar_id": "",
    "keys.local_copy": "./.veil-keyring.sealed",
    "keys.promote_timeout": "2m",
    "keys.kms_key_id": None,
    "keys.kms_region": "us-east-1",
    "keys.kms_endpoint": None,
    "keys.escrow_recipient": None,
    "keys.escrow_dir": None,
    "keys.classes": [],
    "s3.credentials": [],
}

DEFAULT_CLASS = KeyClass("default", 90 * DAY, 7 * DAY)
DEFAULTS: dict[str, object] = {
    "redis.listen": Listen("127.0.0.1", 6380),
    "redis.upstream": RedisUrl("redis", "127.0.0.1", 6379, 0),
    "redis.encrypt": ("*",),
    "redis.plaintext": (),
    "redis.namespaces": (),
    "redis.encrypt_channels": (),
    "redis.deterministic_lists": (),
    "redis.deterministic_fields": (),
    "redis.legacy_plaintext": "refuse",
    "redis.mode": "enforce",
    "redis.allowed_scripts": frozenset(),
    "redis.allow_flush": False,
    "redis.tls_cert": None,
    "redis.tls_key": None,
    "redis.tls_client_ca": None,
    "s3.listen": Listen("127.0.0.1", 9000),  # checked with an upstream configured
    "s3.upstream": None,
    "s3.region": "us-east-1",
    "s3.access_key": None,
    "s3.secret_key": None,
    "s3.credentials": (),
    "s3.upstream_access_key": None,
    "s3.upstream_secret_key": None,
    "s3.legacy_plaintext": "refuse",
    "s3.single_put_buffer": 8 * 1024 * 1024,
    "s3.list_plaintext_etags": False,
    "s3.allow_unaligned_parts": False,
    "s3.tls_cert": None,
    "s3.tls_key": None,
    "keys.provider": "local",
    "keys.store": FileStore("./veil-keyring.json"),
    "keys.root_key_file": "./veil-root.key",
    "keys.rotation_period": 90 * DAY,
    "keys.grace_period": 7 * DAY,
    "keys.propagation_delay": 300.0,
    "keys.heartbeat_interval": 5.0,
    "keys.max_keyring_age": 600.0,
    "keys.cache_ttl": 300.0,
    "keys.max_stale": DAY,
    "keys.max_live_versions": 8,
    "keys.index_rotation_period": 365 * DAY,
    "keys.auto_revoke": False,
    "keys.destroy_min_age": 30 * DAY,
    "keys.sidecar_id": "",
    "keys.local_copy": "./.veil-keyring.sealed",
    "keys.promote_timeout": 120.0,
    "keys.kms_key_id": None,
    "keys.kms_region": "us-east-1",
    "keys.kms_endpoint": None,
    "keys.escrow_recipient": None,
    "keys.escrow_dir": None,
    "keys.classes": (DEFAULT_CLASS,),
    "reencrypt.rate": 500.0,
    "reencrypt.concurrency": 4,
    "reencrypt.batch": 100,
    "reencrypt.lease_ttl": 30.0,
    "reencrypt.breaker_threshold": 20,
    "reencrypt.breaker_window": 60.0,
    "admin.listen": Listen("127.0.0.1", 9090),
    "admin.tokens": {},
    "admin.tls_cert": None,
    "admin.tls_key": None,
    "audit.path": "./veil-audit.jsonl",
}


def test_table_reproduces_the_spec() -> None:
    assert set(SPEC_TABLE) == set(KEYS)
    for key, spec in KEYS.items():
        assert spec.default == SPEC_TABLE[key], key


def test_every_default() -> None:
    assert set(DEFAULTS) == set(KEYS)
    plain, with_s3 = parse(), parse({"s3": S3_ON})
    for key, expected in DEFAULTS.items():
        assert attr(with_s3 if key == "s3.listen" else plain, key) == expected, key
    assert plain.keys.root_key is None
    assert plain.redis.default_namespace == Namespace("default", "*", False, "default")


def test_all_defaults_leave_s3_off_with_a_warning() -> None:
    settings = parse()
    assert settings.s3.listen is None
    assert settings.warnings == ("s3: listener off (no s3.upstream configured)",)


def test_env_names() -> None:
    names = [spec.env for spec in KEYS.values()]
    assert len(set(names)) == len(names)
    assert not set(names) & set(SPECIAL_ENV)
    assert KEYS["redis.listen"].env == "VEIL_REDIS_LISTEN"
    assert KEYS["keys.rotation_period"].env == "VEIL_KEYS_ROTATION_PERIOD"
    assert KEYS["s3.single_put_buffer"].env == "VEIL_S3_SINGLE_PUT_BUFFER"


# ------------------------------------------------------------------- every key by environment

X25519 = base64.b64encode(b"\x09" * 32).decode()
SHA = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4"


def samples(pem: dict[str, str]) -> dict[str, tuple[str, object, dict[str, str]]]:
    """key -> (environment value, expected attribute, other variables it needs)."""
    cert, key, ca = pem["cert"], pem["key"], pem["ca"]
    creds = {"VEIL_S3_CREDENTIALS": '[{access_key="A", secret_key="S"}]'}
    s3 = {"VEIL_S3_UPSTREAM": "http://h:1", **creds}
    return {
        "redis.listen": ("[::1]:7000", Listen("::1", 7000), {}),
        "redis.upstream": (
            "rediss://u:p%40ss@redis.internal:6390/3",
            RedisUrl("rediss", "redis.internal", 6390, 3, "u", Secret("p@ss")),
            {},
        ),
        "redis.encrypt": ("user:*, session:*", ("user:*", "session:*"), {}),
        "redis.plaintext": ("counter:*", ("counter:*",), {}),
        "redis.namespaces": (
            '[{pattern = "t1:*", name = "t1", drop_on_revoke = true}]',
            (Namespace("t1", "t1:*", True),),
            {},
        ),
        "redis.encrypt_channels": ("chat.*", ("chat.*",), {}),
        "redis.deterministic_lists": ("q:*", ("q:*",), {}),
        "redis.deterministic_fields": ("h:*,idx:*", ("h:*", "idx:*"), {}),
        "redis.legacy_plaintext": ("allow", "allow", {}),
        "redis.mode": ("observe", "observe", {}),
        "redis.allowed_scripts": (SHA, frozenset({SHA.lower()}), {}),
        "redis.allow_flush": ("true", True, {}),
        "redis.tls_cert": (cert, cert, {"VEIL_REDIS_TLS_KEY": key}),
        "redis.tls_key": (key, key, {"VEIL_REDIS_TLS_CERT": cert}),
        "redis.tls_client_ca": (
            ca,
            ca,
            {"VEIL_REDIS_TLS_CERT": cert, "VEIL_REDIS_TLS_KEY": key},
        ),
        "s3.listen": ("0.0.0.0:9100", Listen("0.0.0.0", 9100), s3),
        "s3.upstream": ("https://s3.example.com/", "https://s3.example.com", creds),
        "s3.region": ("eu-west-1", "eu-west-1", {}),
        "s3.access_key": ("AKIA1", "AKIA1", {"VEIL_S3_SECRET_KEY": "sk1"}),
        "s3.secret_key": ("sk1", Secret("sk1"), {"VEIL_S3_ACCESS_KEY": "AKIA1"}),
        "s3.credentials": (
            '[{access_key = "A2", secret_key = "s2"}]',
            (S3Credential("A2", Secret("s2")),),
            {},
        ),
        "s3.upstream_access_key": ("UP", "UP", {"VEIL_S3_UPSTREAM_SECRET_KEY": "us"}),
        "s3.upstream_secret_key": ("us", Secret("us"), {"VEIL_S3_UPSTREAM_ACCESS_KEY": "UP"}),
        "s3.legacy_plaintext": ("allow", "allow", {}),
        "s3.single_put_buffer": ("16MiB", 16 << 20, {}),
        "s3.list_plaintext_etags": ("true", True, {}),
        "s3.allow_unaligned_parts": ("true", True, {}),
        "s3.tls_cert": (cert, cert, {"VEIL_S3_TLS_KEY": key}),
        "s3.tls_key": (key, key, {"VEIL_S3_TLS_CERT": cert}),
        "keys.provider": ("aws-kms", "aws-kms", {"VEIL_KEYS_KMS_KEY_ID": "alias/veil"}),
        "keys.store": (
            "redis://:pw@10.0.0.5:6379/1",
            RedisUrl("redis", "10.0.0.5", 6379, 1, None, Secret("pw")),
            {},
        ),
        "keys.root_key_file": ("/etc/veil/root.key", "/etc/veil/root.key", {}),
        "keys.rotation_period": ("30d", 30 * DAY, {}),
        "keys.grace_period": ("12h", 43200.0, {}),
        "keys.propagation_delay": ("90s", 90.0, {}),
        "keys.heartbeat_interval": ("10s", 10.0, {}),
        "keys.max_keyring_age": ("1h", 3600.0, {}),
        "keys.cache_ttl": ("1m", 60.0, {}),
        "keys.max_stale": ("2d", 2 * DAY, {}),
        "keys.max_live_versions": ("4", 4, {}),
        "keys.index_rotation_period": ("730d", 730 * DAY, {}),
        "keys.auto_revoke": ("true", True, {}),
        "keys.destroy_min_age": ("60d", 60 * DAY, {}),
        "keys.sidecar_id": ("pod-7:1", "pod-7:1", {}),
        "keys.local_copy": ("/var/lib/veil/ring", "/var/lib/veil/ring", {}),
        "keys.promote_timeout": ("5m", 300.0, {}),
        "keys.kms_key_id": ("arn:aws:kms:eu-1:1:key/x", "arn:aws:kms:eu-1:1:key/x", {}),
        "keys.kms_region": ("eu-central-1", "eu-central-1", {}),
        "keys.kms_endpoint": ("http://127.0.0.1:5000", "http://127.0.0.1:5000", {}),
        "keys.escrow_recipient": (X25519, b"\x09" * 32, {"VEIL_KEYS_ESCROW_DIR": "/escrow"}),
        "keys.escrow_dir": ("/escrow", "/escrow", {"VEIL_KEYS_ESCROW_RECIPIENT": X25519}),
        "keys.classes": (
            '[{name = "pii", rotation_period = "30d", s3_buckets = ["pii-*"]}]',
            (KeyClass("pii", 30 * DAY, 7 * DAY, (), ("pii-*",)), DEFAULT_CLASS),
            {},
        ),
        "reencrypt.rate": ("250.5", 250.5, {}),
        "reencrypt.concurrency": ("8", 8, {}),
        "reencrypt.batch": ("500", 500, {}),
        "reencrypt.lease_ttl": ("45s", 45.0, {}),
        "reencrypt.breaker_threshold": ("5", 5, {}),
        "reencrypt.breaker_window": ("5m", 300.0, {}),
        "admin.listen": ("127.0.0.2:9191", Listen("127.0.0.2", 9191), {}),
        "admin.tokens": (
            f"ops={TOKEN}1, ci={TOKEN}2",
            {"ops": Secret(TOKEN + "1"), "ci": Secret(TOKEN + "2")},
            {},
        ),
        "admin.tls_cert": (cert, cert, {"VEIL_ADMIN_TLS_KEY": key}),
        "admin.tls_key": (key, key, {"VEIL_ADMIN_TLS_CERT": cert}),
        "audit.path": ("stdout", "stdout", {}),
    }


def test_every_key_is_overridable_by_environment(pem: dict[str, str]) -> None:
    table = samples(pem)
    assert set(table) == set(KEYS)
    for key, (text, expected, needs) in table.items():
        settings = parse(env={**needs, KEYS[key].env: text})
        assert attr(settings, key) == expected, key
        assert attr(settings, key) != DEFAULTS[key], key


def test_environment_wins_over_the_file() -> None:
    settings = parse({"keys": {"grace_period": "1d"}}, {"VEIL_KEYS_GRACE_PERIOD": "2d"})
    assert settings.keys.grace_period == 2 * DAY


def test_empty_environment_value_resets_a_key_whose_default_is_none() -> None:
    assert (
        parse({"keys": {"kms_key_id": "k"}}, {"VEIL_KEYS_KMS_KEY_ID": ""}).keys.kms_key_id is None
    )
    assert "VEIL_KEYS_KMS_REGION" in error(env={"VEIL_KEYS_KMS_REGION": ""})


def test_environment_forms() -> None:
    env = {
        "VEIL_REDIS_PLAINTEXT": "",
        "VEIL_S3_SINGLE_PUT_BUFFER": "1048576",
        "VEIL_ADMIN_TOKENS": f'{{ops = "{TOKEN}"}}',
        "VEIL_REENCRYPT_RATE": "7",
    }
    settings = parse(env=env)
    assert settings.redis.plaintext == ()
    assert settings.s3.single_put_buffer == 1 << 20
    assert settings.admin.tokens == {"ops": Secret(TOKEN)}
    assert settings.reencrypt.rate == 7.0


def test_special_environment_variables() -> None:
    settings = parse(
        {"admin": {"tokens": {"ci": TOKEN + "ci"}}},
        {"VEIL_CONFIG": "/nowhere", "VEIL_ADMIN_TOKEN": TOKEN, "VEIL_KEYS_ROOT_KEY": ROOT_KEY},
    )
    assert settings.admin.tokens == {"ci": Secret(TOKEN + "ci"), "default": Secret(TOKEN)}
    assert settings.keys.root_key == Secret(bytes(range(32)))
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("=")
    key = parse(env={"VEIL_KEYS_ROOT_KEY": urlsafe}).keys.root_key
    assert key is not None and key.reveal() == b"\xfb" * 32
    replaced = parse({"admin": {"tokens": {"default": TOKEN + "x"}}}, {"VEIL_ADMIN_TOKEN": TOKEN})
    assert replaced.admin.tokens == {"default": Secret(TOKEN)}


def test_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "veil.toml"
    path.write_text(
        """
[redis]
listen = "0.0.0.0:6380"
plaintext = ["counter:*"]
namespaces = [{pattern = "t1:*", name = "t1"}, {pattern = "pii:*", name = "pii"}]

[s3]
upstream = "http://minio:9000"
credentials = [{access_key = "app", secret_key = "app-secret"}]
single_put_buffer = 1048576

[keys]
rotation_period = "30d"

[[keys.classes]]
name = "pii"
rotation_period = "7d"
redis_namespaces = ["pii"]
s3_buckets = ["pii-*"]

[reencrypt]
rate = 50

[audit]
path = "stdout"
"""
    )
    settings = load_settings(str(path), {})
    assert settings.source == str(path)
    assert settings.redis.listen == Listen("0.0.0.0", 6380)
    assert settings.s3.listen == Listen("127.0.0.1", 9000)
    assert settings.s3.client_credentials() == {"app": Secret("app-secret")}
    assert settings.keys.classes == (
        KeyClass("pii", 7 * DAY, 7 * DAY, ("pii",), ("pii-*",)),
        KeyClass("default", 30 * DAY, 7 * DAY),
    )
    assert settings.redis.namespace_for_key(b"pii:1") == Namespace("pii", "pii:*", False, "pii")
    assert settings.audit.to_stdout


# ------------------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"redis": {"listne": "x"}},
            "config: unknown key redis.listne (did you mean redis.listen?)",
        ),
        ({"redsi": {}}, "config: unknown key redsi (did you mean redis?)"),
        ({"proxy": {}}, "config: unknown key proxy"),
        ({"redis": {"frobnicate": 1}}, "config: unknown key redis.frobnicate"),
        ({"redis": "x"}, "config: redis: expected a table, got a string"),
        (
            {"keys": {"root_key": "x"}},
            "config: unknown key keys.root_key (the root key comes from VEIL_KEYS_ROOT_KEY"
            " or keys.root_key_file)",
        ),
        (
            {"keys": {"classes": [{"name": "pii", "rotatoin_period": "1d"}]}},
            "config: keys.classes[0]: unknown key rotatoin_period (did you mean rotation_period?)",
        ),
        (
            {"redis": {"namespaces": [{"pattern": "a*", "name": "a", "drop": True}]}},
            "config: redis.namespaces[0]: unknown key drop",
        ),
        (
            {"s3": {"credentials": [{"access_key": "a", "secret_key": "b", "region": "x"}]}},
            "config: s3.credentials[0]: unknown key region",
        ),
    ],
)
def test_unknown_keys_in_the_file(data: dict[str, Any], message: str) -> None:
    assert error(data) == message


def test_unknown_environment_variables() -> None:
    assert error(env={"VEIL_REDIS_LISTNE": "x"}) == (
        "config: unknown environment variable VEIL_REDIS_LISTNE (did you mean VEIL_REDIS_LISTEN?)"
    )
    assert error(env={"VEIL_DEBUG": "1"}) == "config: unknown environment variable VEIL_DEBUG"
    # not ours: other prefixes, other case
    parse(env={"VEILED": "1", "veil_redis_listne": "x", "PATH": "/bin"})


# -------------------------------------------------------------------------------- bad values

BAD_VALUES: list[tuple[str, object, str]] = [
    # durations
    ("keys.grace_period", "7x", "'7x' is not a duration (expected e.g. 30s, 5m, 12h, 7d)"),
    ("keys.grace_period", "7", "'7' is not a duration"),
    ("keys.grace_period", "1.5h", "'1.5h' is not a duration"),
    ("keys.grace_period", "-1s", "'-1s' is not a duration"),
    ("keys.grace_period", " 5m", "' 5m' is not a duration"),
    ("keys.grace_period", "5M", "'5M' is not a duration"),
    ("keys.grace_period", "", "'' is not a duration"),
    ("keys.grace_period", 300, "expected a string, got an integer"),
    ("keys.grace_period", "99999999999999d", "'99999999999999d' is longer than 100 years"),
    ("keys.rotation_period", "0d", "must be longer than 0s"),
    # sizes
    ("s3.single_put_buffer", "8MB", "'8MB' is not a size (expected bytes or e.g. 512KiB"),
    ("s3.single_put_buffer", "1.5MiB", "'1.5MiB' is not a size"),
    ("s3.single_put_buffer", "8 MiB", "'8 MiB' is not a size"),
    ("s3.single_put_buffer", "8mib", "'8mib' is not a size"),
    ("s3.single_put_buffer", "-1", "'-1' is not a size"),
    ("s3.single_put_buffer", -1, "-1 is out of range (0 to 5GiB"),
    ("s3.single_put_buffer", "6GiB", "'6GiB' is out of range"),
    ("s3.single_put_buffer", 8.5, "expected a size such as 8MiB, got a float"),
    ("s3.single_put_buffer", True, "expected a size such as 8MiB, got a boolean"),
    # booleans
    ("redis.allow_flush", "true", "expected true or false, got a string"),
    ("redis.allow_flush", 1, "expected true or false, got an integer"),
    # addresses
    ("redis.listen", "localhost", "'localhost' is not host:port ([::1]:6380 for IPv6) or off"),
    ("redis.listen", "1.2.3.4:99999", "is not host:port"),
    ("redis.listen", "::1:6380", "is not host:port"),
    ("redis.listen", "[::1]", "is not host:port"),
    ("redis.listen", "[nothost]:80", "is not host:port"),
    ("redis.listen", ":80", "is not host:port"),
    ("redis.listen", "host:port", "is not host:port"),
    ("redis.listen", "256.1.1.1:80", "is not host:port"),
    ("redis.listen", "-bad-:80", "is not host:port"),
    ("redis.listen", "Off", "is not host:port"),
    ("redis.listen", 6380, "expected a string, got an integer"),
    # numbers
    ("keys.max_live_versions", 1, "1 is out of range (2 to 1000)"),
    ("keys.max_live_versions", "8", "expected an integer, got a string"),
    ("keys.max_live_versions", True, "expected an integer, got a boolean"),
    ("reencrypt.concurrency", 0, "0 is out of range (1 to 1024)"),
    ("reencrypt.rate", 0, "0 is out of range"),
    ("reencrypt.rate", "fast", "expected a number, got a string"),
    # choices
    ("redis.legacy_plaintext", "Allow", "'Allow' is not one of allow, refuse"),
    ("redis.mode", "off", "'off' is not one of enforce, observe"),
    ("keys.provider", "kms", "'kms' is not one of local, aws-kms"),
    # URLs and stores
    ("keys.store", "keyring.json", "'keyring.json' is not file:<path>, redis://... or rediss://"),
    ("keys.store", "file:", "'file:' needs a path"),
    ("redis.upstream", "http://x", "'http://x' is not a redis:// or rediss:// URL"),
    ("redis.upstream", "redis://h:notaport", "'redis://h:notaport' is not a valid URL"),
    ("redis.upstream", "redis://h/abc", "'redis://h/abc': the database must be a number"),
    ("redis.upstream", "redis://h?db=1", "query parameters are not supported"),
    ("s3.upstream", "ftp://x", "'ftp://x' is not a http:// or https:// URL"),
    ("s3.upstream", "http://h/bucket", "'http://h/bucket': only scheme://host[:port] is allowed"),
    ("s3.upstream", "http://u:p@h", "credentials do not belong in the URL"),
    # the rest
    ("redis.allowed_scripts", ["abc"], "[0]: 'abc' is not a SHA1 (40 hex digits)"),
    ("redis.encrypt", [""], "[0]: must not be empty"),
    ("redis.encrypt", "user:*", "expected an array of strings, got a string"),
    ("s3.region", "EU_WEST", "'EU_WEST' is not an AWS region name"),
    ("s3.access_key", "a/b", "'a/b' is not an access key"),
    ("keys.sidecar_id", "has space", "'has space' is not a sidecar id"),
    ("keys.escrow_recipient", "c2hvcnQ=", "'c2hvcnQ=' is not an X25519 public key"),
    ("audit.path", "", "must not be empty"),
    ("redis.tls_cert", "/no/such/file.pem", "file not found: '/no/such/file.pem'"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    section, name = key.split(".")
    text = error({section: {name: value}})
    assert text.startswith(f"config: {key}"), text
    assert message in text, text


def test_the_spec_example_message_exactly() -> None:
    assert error({"keys": {"grace_period": "7x"}}) == (
        "config: keys.grace_period: '7x' is not a duration (expected e.g. 30s, 5m, 12h, 7d)"
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("VEIL_REDIS_ALLOW_FLUSH", "yes", "'yes' is not a boolean (expected true or false)"),
        ("VEIL_REDIS_ALLOW_FLUSH", "True", "'True' is not a boolean"),
        ("VEIL_REDIS_ALLOW_FLUSH", "1", "'1' is not a boolean"),
        ("VEIL_REDIS_ALLOW_FLUSH", "", "'' is not a boolean"),
        ("VEIL_KEYS_MAX_LIVE_VERSIONS", "eight", "'eight' is not an integer"),
        ("VEIL_REENCRYPT_RATE", "1e3", "'1e3' is not a number"),
        ("VEIL_KEYS_GRACE_PERIOD", "7x", "'7x' is not a duration"),
        ("VEIL_REDIS_NAMESPACES", "[{pattern=}]", "expected a TOML inline value"),
        ("VEIL_ADMIN_TOKENS", "ops", "expected name=token,... or a TOML inline table"),
    ],
)
def test_bad_environment_values_name_key_and_variable(name: str, text: str, message: str) -> None:
    key = next(k for k, spec in KEYS.items() if spec.env == name)
    result = error(env={name: text})
    assert result.startswith(f"config: {key}"), result
    assert f"({name}): " in result and message in result, result


# ------------------------------------------------------------------------------ cross rules


@pytest.mark.parametrize("section", ["redis", "s3", "admin"])
def test_tls_cert_and_key_come_in_pairs(section: str, pem: dict[str, str]) -> None:
    assert error({section: {"tls_cert": pem["cert"]}}) == (
        f"config: {section}.tls_key: required when {section}.tls_cert is set"
    )
    assert error({section: {"tls_key": pem["key"]}}) == (
        f"config: {section}.tls_cert: required when {section}.tls_key is set"
    )


def test_client_ca_needs_tls(pem: dict[str, str]) -> None:
    assert error({"redis": {"tls_client_ca": pem["ca"]}}) == (
        "config: redis.tls_client_ca: needs redis.tls_cert and redis.tls_key"
    )


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:9090", "127.8.9.10:1", "[::1]:9090", "localhost:9090", "off"]
)
def test_admin_on_loopback_needs_no_tls(listen: str) -> None:
    parse({"admin": {"listen": listen}})


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9090", "[::]:9090", "10.1.2.3:9090", "admin.example.com:9090"]
)
def test_admin_off_loopback_needs_tls_and_tokens(listen: str, pem: dict[str, str]) -> None:
    shown = str(parse_listen(listen))
    assert error({"admin": {"listen": listen}}) == (
        f"config: admin.tls_cert: required when admin.listen ({shown}) is not loopback"
    )
    tls = {"listen": listen, "tls_cert": pem["cert"], "tls_key": pem["key"]}
    assert error({"admin": tls}) == (
        f"config: admin.tokens: required when admin.listen ({shown}) is not loopback"
    )
    assert parse({"admin": {**tls, "tokens": {"ops": TOKEN}}}).admin.listen == parse_listen(listen)
    assert parse({"admin": tls}, {"VEIL_ADMIN_TOKEN": TOKEN}).admin.authenticate(TOKEN) == "default"


def test_key_provider_rules() -> None:
    assert error({"keys": {"provider": "aws-kms"}}) == (
        'config: keys.kms_key_id: required when keys.provider = "aws-kms"'
    )
    assert parse({"keys": {"provider": "aws-kms", "kms_key_id": "alias/veil"}}).keys.kms_key_id
    assert error({"keys": {"max_keyring_age": "5s"}}) == (
        "config: keys.max_keyring_age: must be longer than keys.heartbeat_interval"
    )
    assert error({"keys": {"escrow_recipient": X25519}}) == (
        "config: keys.escrow_dir: required when keys.escrow_recipient is set"
    )
    assert error({"keys": {"escrow_dir": "/e"}}) == (
        "config: keys.escrow_recipient: required when keys.escrow_dir is set"
    )


def test_key_stores() -> None:
    assert parse({"keys": {"store": "file:/k/ring.json"}}).keys.store == FileStore("/k/ring.json")
    store = parse({"keys": {"store": "rediss://veil@r:6390"}}).keys.store
    assert store == RedisUrl("rediss", "r", 6390, 0, "veil") and isinstance(store, RedisUrl)
    assert store.tls and str(store) == "rediss://veil@r:6390/0"


def test_s3_listener_rules() -> None:
    assert error({"s3": {"listen": "127.0.0.1:9000"}}) == (
        'config: s3.upstream: required unless s3.listen = "off"'
    )
    assert error(env={"VEIL_S3_LISTEN": "127.0.0.1:9000"}).startswith("config: s3.upstream:")
    assert parse({"s3": {"listen": "off"}}).warnings == ()
    assert error({"s3": {"upstream": "http://h"}}) == (
        "config: s3.access_key: the S3 listener needs client credentials"
        " (this pair or s3.credentials)"
    )
    assert error({"s3": {"access_key": "a"}}) == (
        "config: s3.secret_key: required when s3.access_key is set"
    )
    assert error({"s3": {"upstream_secret_key": "x"}}) == (
        "config: s3.upstream_access_key: required when s3.upstream_secret_key is set"
    )
    twice = {**S3_ON, "credentials": [{"access_key": "AKIDEXAMPLE", "secret_key": "other"}]}
    assert error({"s3": twice}) == (
        "config: s3.credentials: access key 'AKIDEXAMPLE' is configured twice"
    )
    both = parse({"s3": {**S3_ON, "credentials": [{"access_key": "b", "secret_key": "bs"}]}})
    assert both.s3.client_credentials() == {
        "b": Secret("bs"),
        "AKIDEXAMPLE": Secret("wJalrXUtnFEMIK7MDENG"),
    }


def test_listeners_must_not_collide() -> None:
    assert error({"admin": {"listen": "127.0.0.1:6380"}}) == (
        "config: admin.listen: 127.0.0.1:6380 is also redis.listen"
    )
    assert error({"s3": {**S3_ON, "listen": "0.0.0.0:6380"}}) == (
        "config: s3.listen: 0.0.0.0:6380 is also redis.listen"
    )
    parse({"redis": {"listen": "127.0.0.1:0"}, "admin": {"listen": "127.0.0.1:0"}})
    parse({"admin": {"listen": "127.0.0.2:6380"}})


def test_advisory_warnings() -> None:
    settings = parse({"redis": {"mode": "observe", "legacy_plaintext": "allow"}})
    assert "redis.mode = observe: values pass through unencrypted" in settings.warnings
    assert any(w.startswith("redis.legacy_plaintext = allow") for w in settings.warnings)


# ---------------------------------------------------------------- classes and namespaces


def classes(*entries: dict[str, Any], namespaces: list[dict[str, Any]] | None = None) -> Settings:
    return parse({"keys": {"classes": list(entries)}, "redis": {"namespaces": namespaces or []}})


def test_classes_inherit_periods_and_default_always_exists() -> None:
    settings = parse(
        {
            "keys": {
                "rotation_period": "60d",
                "grace_period": "2d",
                "classes": [{"name": "pii", "grace_period": "1d"}],
            }
        }
    )
    assert settings.keys.classes == (
        KeyClass("pii", 60 * DAY, DAY),
        KeyClass("default", 60 * DAY, 2 * DAY),
    )
    explicit = classes({"name": "default", "rotation_period": "30d"}, {"name": "pii"})
    assert [c.name for c in explicit.keys.classes] == ["default", "pii"]
    assert explicit.keys.default_class == KeyClass("default", 30 * DAY, 7 * DAY)
    assert explicit.keys.class_named("pii").rotation_period == 90 * DAY
    with pytest.raises(KeyError):
        explicit.keys.class_named("nope")


@pytest.mark.parametrize("name", ["PII", "1abc", "a" * 33, "", "pii!", "_x"])
def test_class_names(name: str) -> None:
    assert error({"keys": {"classes": [{"name": name}]}}).startswith(
        "config: keys.classes[0].name: "
    )


def test_class_limits_and_duplicates() -> None:
    names = [{"name": f"c{i}"} for i in range(254)]
    assert len(classes(*names).keys.classes) == 255
    assert error({"keys": {"classes": [*names, {"name": "one-more"}]}}) == (
        "config: keys.classes: at most 255 classes, the implicit default included"
    )
    assert len(classes(*names, {"name": "default"}).keys.classes) == 255
    assert error({"keys": {"classes": [{"name": "a"}, {"name": "a"}]}}) == (
        "config: keys.classes[1].name: class 'a' is listed twice"
    )
    assert error({"keys": {"classes": [{"rotation_period": "1d"}]}}) == (
        "config: keys.classes[0]: missing key name"
    )
    assert error({"keys": {"classes": [{"name": "a", "rotation_period": "0s"}]}}) == (
        "config: keys.classes[0].rotation_period: must be longer than 0s"
    )


def test_a_namespace_or_bucket_glob_maps_to_one_class() -> None:
    ns = [{"pattern": "t1:*", "name": "t1"}]
    assert error(
        {
            "keys": {
                "classes": [
                    {"name": "a", "redis_namespaces": ["t1"]},
                    {"name": "b", "redis_namespaces": ["t1"]},
                ]
            },
            "redis": {"namespaces": ns},
        }
    ) == ("config: keys.classes[1].redis_namespaces: namespace 't1' is already in class 'a'")
    assert error(
        {
            "keys": {
                "classes": [
                    {"name": "a", "s3_buckets": ["x-*"]},
                    {"name": "b", "s3_buckets": ["x-*"]},
                ]
            }
        }
    ) == ("config: keys.classes[1].s3_buckets: bucket glob 'x-*' is already in class 'a'")
    assert error({"keys": {"classes": [{"name": "a", "redis_namespaces": ["t9"]}]}}) == (
        "config: keys.classes[0].redis_namespaces: namespace 't9' is not in redis.namespaces"
    )


def test_class_lookups() -> None:
    settings = classes(
        {"name": "pii", "redis_namespaces": ["t1", "default"], "s3_buckets": ["pii-*"]},
        {"name": "logs", "s3_buckets": ["*-logs", "pii-eu-*"]},
        namespaces=[{"pattern": "t1:*", "name": "t1"}, {"pattern": "t2:*", "name": "t2"}],
    )
    keys = settings.keys
    assert keys.class_for_namespace("t1").name == "pii"
    assert keys.class_for_namespace("default").name == "pii"
    assert keys.class_for_namespace("t2").name == "default"
    assert keys.class_for_bucket("pii-eu-1").name == "pii"  # first listed class wins
    assert keys.class_for_bucket("app-logs").name == "logs"
    assert keys.class_for_bucket("app").name == "default"
    assert keys.class_for_bucket("app").name == "default"  # cached
    assert settings.redis.namespace_for_key(b"t1:x").key_class == "pii"
    assert settings.redis.namespace_for_key(b"t2:x").key_class == "default"
    assert settings.redis.namespace_for_key(b"other").key_class == "pii"


def test_namespaces() -> None:
    settings = parse(
        {
            "redis": {
                "namespaces": [
                    {"pattern": "t1:public:*", "name": "default"},
                    {"pattern": "t1:*", "name": "t1"},
                    {"pattern": "t1:*:x", "name": "never"},
                    {"pattern": "cache:*", "name": "cache", "drop_on_revoke": True},
                    {"pattern": "c2:*", "name": "cache", "drop_on_revoke": True},
                ]
            }
        }
    )
    lookup = settings.redis.namespace_for_key
    assert lookup(b"t1:secret:x") == Namespace("t1", "t1:*")  # first match wins
    assert lookup(b"t1:public:a").name == "default"
    assert lookup(b"cache:1") == Namespace("cache", "cache:*", True)
    assert lookup(b"c2:1").drop_on_revoke
    assert lookup(b"zzz") is settings.redis.default_namespace
    assert lookup(b"zzz") == Namespace("default", "*", False, "default")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"pattern": "a*", "name": "bad name"}], "[0].name: 'bad name' is not a namespace name"),
        ([{"pattern": "a*", "name": "x" * 65}], "[0].name: "),
        ([{"pattern": "", "name": "a"}], "[0].pattern: must not be empty"),
        ([{"name": "a"}], "[0]: missing key pattern"),
        ([{"pattern": "a*"}], "[0]: missing key name"),
        (["a*"], "[0]: expected a table, got a string"),
        (
            [{"pattern": "a*", "name": "a"}, {"pattern": "a*", "name": "b"}],
            "[1].pattern: pattern 'a*' is listed twice",
        ),
        (
            [
                {"pattern": "a*", "name": "a"},
                {"pattern": "b*", "name": "a", "drop_on_revoke": True},
            ],
            "[1].drop_on_revoke: conflicts with another entry of 'a'",
        ),
    ],
)
def test_bad_namespaces(entries: list[Any], message: str) -> None:
    assert error({"redis": {"namespaces": entries}}) == f"config: redis.namespaces{message}" or (
        error({"redis": {"namespaces": entries}}).startswith(f"config: redis.namespaces{message}")
    )


# ---------------------------------------------------------------------------------- secrets

MARKS = ["S3SECRETMARK", "UPSECRETMARK", "CREDSECRETMARK", "TOKENMARK0123456", "ENVTOKENMARK0123"]


def test_secrets_never_print() -> None:
    settings = parse(
        {
            "redis": {"upstream": "redis://veil:URLPASSMARK@r:6379"},
            "s3": {
                **S3_ON,
                "secret_key": MARKS[0],
                "upstream_access_key": "UP",
                "upstream_secret_key": MARKS[1],
                "credentials": [{"access_key": "c", "secret_key": MARKS[2]}],
            },
            "keys": {"store": "redis://:STOREPASSMARK@r:6379/2"},
            "admin": {"tokens": {"ops": MARKS[3]}},
        },
        {"VEIL_ADMIN_TOKEN": MARKS[4], "VEIL_KEYS_ROOT_KEY": ROOT_KEY},
    )
    described = json.dumps(settings.describe())
    shown = [repr(settings), str(settings), described, f"{settings}"]
    shown += [repr(getattr(settings, s)) for s in ("redis", "s3", "keys", "admin")]
    shown += [str(settings.redis.upstream), str(settings.keys.store)]
    secrets = [*MARKS, "URLPASSMARK", "STOREPASSMARK", ROOT_KEY, repr(bytes(range(32)))]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert "Secret(***)" in repr(settings)
    assert settings.describe()["admin"]["tokens"] == {"ops": "***", "default": "***"}
    assert settings.describe()["root_key"] == "***"
    assert settings.redis.upstream.reveal() == "redis://veil:URLPASSMARK@r:6379/0"
    assert settings.redis.upstream.password == Secret("URLPASSMARK")


@pytest.mark.parametrize(
    ("data", "env"),
    [
        ({"s3": {"secret_key": "has space MARKSECRET"}}, {}),
        ({"s3": {"secret_key": "MARKSECRET\x01"}}, {}),
        ({"s3": {"credentials": [{"access_key": "a", "secret_key": "MARK SECRET"}]}}, {}),
        ({"admin": {"tokens": {"ops": "MARKSECRET"}}}, {}),
        ({"admin": {"tokens": {"a": "MARKSECRET-long-enough", "b": "MARKSECRET-long-enough"}}}, {}),
        ({}, {"VEIL_ADMIN_TOKEN": "MARKSECRET"}),
        ({}, {"VEIL_ADMIN_TOKENS": "ops=MARKSECRET"}),
        ({}, {"VEIL_ADMIN_TOKENS": "{ops = MARKSECRET}"}),
        ({}, {"VEIL_KEYS_ROOT_KEY": "MARKSECRET"}),
        ({}, {"VEIL_KEYS_ROOT_KEY": base64.b64encode(b"MARKSECRET").decode()}),
        ({"redis": {"upstream": "redis://:MARKSECRET@h:notaport"}}, {}),
        ({"redis": {"upstream": "redis://:MARKSECRET@h/x"}}, {}),
        ({"redis": {"upstream": "redis://:MARK/SECRET@h/x"}}, {}),
        ({"keys": {"store": "redis://u:MARKSECRET@h?x=1"}}, {}),
        ({"keys": {"store": "mysql://u:MARKSECRET@h"}}, {}),
        ({"s3": {"upstream": "http://u:MARKSECRET@h"}}, {}),
        ({"s3": {"upstream": "http://u:MARKSECRET@h/p"}}, {}),
    ],
)
def test_error_messages_never_hold_secrets(data: dict[str, Any], env: dict[str, str]) -> None:
    message = error(data, env)
    assert "MARK" not in message and "SECRET" not in message, message
    assert base64.b64encode(b"MARKSECRET").decode() not in message


def test_secret_type() -> None:
    secret = Secret("hunter2-hunter2")
    assert repr(secret) == str(secret) == f"{secret}" == "Secret(***)"
    assert secret.reveal() == "hunter2-hunter2"
    assert secret.matches("hunter2-hunter2") and secret.matches(b"hunter2-hunter2")
    assert not secret.matches("hunter2") and not secret.matches("")
    assert hmac.compare_digest(secret.reveal_bytes(), b"hunter2-hunter2")
    assert secret == Secret("hunter2-hunter2") and secret != Secret("other")
    assert hash(secret) == hash(Secret("hunter2-hunter2"))
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert copy.deepcopy(secret) is secret and copy.copy(secret) is secret
    assert Secret(b"\x00\x01").reveal_bytes() == b"\x00\x01"


def test_admin_authenticate() -> None:
    admin = parse({"admin": {"tokens": {"ops": TOKEN + "o", "ci": TOKEN + "c"}}}).admin
    assert admin.authenticate(TOKEN + "c") == "ci"
    assert admin.authenticate((TOKEN + "o").encode()) == "ops"
    assert admin.authenticate(TOKEN) is None
    assert admin.authenticate("") is None
    assert parse().admin.authenticate(TOKEN) is None


# ------------------------------------------------------------------- helpers and describe


def test_durations_and_sizes() -> None:
    assert parse_duration("0s") == 0.0
    assert parse_duration("90d") == 90 * DAY
    assert parse_duration("007m") == 420.0
    assert [format_duration(s) for s in (0.0, 59.0, 60.0, 3600.0, 86400.0, 90.0)] == [
        "0s",
        "59s",
        "1m",
        "1h",
        "1d",
        "90s",
    ]
    assert parse_size("8MiB") == 8 << 20
    assert parse_size("512KiB") == 512 << 10
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("17B") == parse_size("17") == 17
    assert [format_size(n) for n in (0, 1000, 1024, 8 << 20, 3 << 30)] == [
        "0B",
        "1000B",
        "1KiB",
        "8MiB",
        "3GiB",
    ]
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration("1w")


def test_listen_and_loopback() -> None:
    assert parse_listen("off") is None
    assert parse_listen("[::1]:6380") == Listen("::1", 6380)
    assert str(Listen("::1", 6380)) == "[::1]:6380"
    assert parse_listen("redis-0.redis.svc.cluster.local:6379") == Listen(
        "redis-0.redis.svc.cluster.local", 6379
    )
    assert parse_listen("0.0.0.0:65535") == Listen("0.0.0.0", 65535)
    loopback = [
        "127.0.0.1",
        "127.255.0.9",
        "::1",
        "[::1]",
        "localhost",
        "LOCALHOST",
        "::ffff:127.0.0.1",
    ]
    others = ["0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com", "", "[::]"]
    assert all(is_loopback(h) for h in loopback)
    assert not any(is_loopback(h) for h in others)


def test_describe_is_json_and_parses_back() -> None:
    data = {
        "redis": {
            "listen": "[::1]:7000",
            "plaintext": ["counter:*"],
            "namespaces": [{"pattern": "t1:*", "name": "t1", "drop_on_revoke": True}],
            "allowed_scripts": [SHA],
        },
        "s3": {"listen": "off", "single_put_buffer": 1000},
        "keys": {
            "store": "redis://r:6379/1",
            "escrow_recipient": X25519,
            "escrow_dir": "/e",
            "classes": [{"name": "pii", "redis_namespaces": ["t1"], "s3_buckets": ["p-*"]}],
        },
        "reencrypt": {"rate": 2.5},
        "audit": {"path": "stdout"},
    }
    settings = parse(data)
    described = json.loads(json.dumps(settings.describe()))
    assert described["keys"]["rotation_period"] == "90d"
    assert described["s3"]["single_put_buffer"] == "1000B"
    assert described["s3"]["listen"] == "off"
    assert described["keys"]["escrow_recipient"] == X25519
    sections = {
        k: v
        for k, v in described.items()
        if k in ("redis", "s3", "keys", "reencrypt", "admin", "audit")
    }
    again = parse(sections)
    assert again == settings
    assert again.describe() == settings.describe()
    assert set(described) == {
        "redis",
        "s3",
        "keys",
        "reencrypt",
        "admin",
        "audit",
        "config_file",
        "root_key",
        "warnings",
    }


def test_settings_are_frozen_and_replace_recompiles() -> None:
    settings = parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.redis.allow_flush = True  # type: ignore[misc]
    assert settings.redis.is_encrypted_key(b"counter:1")
    changed = dataclasses.replace(settings.redis, plaintext=("counter:*",))
    assert not changed.is_encrypted_key(b"counter:1")
    assert changed.is_encrypted_key(b"user:1")


# -------------------------------------------------------------------------------- load_settings


def test_load_settings_file_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).source is None
    (tmp_path / "veil.toml").write_text('[redis]\nlisten = "127.0.0.1:7001"\n')
    assert load_settings(env={}).redis.listen == Listen("127.0.0.1", 7001)
    other = tmp_path / "other.toml"
    other.write_text('[redis]\nlisten = "127.0.0.1:7002"\n')
    assert load_settings(env={"VEIL_CONFIG": str(other)}).redis.listen == Listen("127.0.0.1", 7002)
    assert load_settings(str(other), {"VEIL_CONFIG": "veil.toml"}).source == str(other)
    with pytest.raises(ConfigError, match=r"^config: config file not found: 'missing.toml'$"):
        load_settings("missing.toml", {})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(env={"VEIL_CONFIG": "missing.toml"})


def test_load_settings_reads_os_environ_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VEIL_REDIS_LISTEN", "127.0.0.1:7003")
    assert load_settings().redis.listen == Listen("127.0.0.1", 7003)
    assert load_settings(env={}).redis.listen == Listen("127.0.0.1", 6380)


def test_load_settings_bad_toml_and_permissions(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[redis\n")
    with pytest.raises(ConfigError, match=r"^config: .*bad.toml: invalid TOML: "):
        load_settings(str(bad), {})
    exposed = tmp_path / "exposed.toml"
    exposed.write_text(f'[admin.tokens]\nops = "{TOKEN}"\n')
    exposed.chmod(0o644)
    assert any("chmod 600" in w for w in load_settings(str(exposed), {}).warnings)
    exposed.chmod(0o600)
    assert not any("chmod 600" in w for w in load_settings(str(exposed), {}).warnings)


def test_config_docs_are_in_sync() -> None:
    text = (ROOT / "docs" / "CONFIG.md").read_text()
    assert text == reference_markdown(), (
        "docs/CONFIG.md is stale: python3 -c 'from proxy.config import reference_markdown as r;"
        ' print(r(), end="")\' > docs/CONFIG.md'
    )
    for spec in KEYS.values():
        assert f"`{spec.name}`" in text and f"`{spec.env}`" in text
    for name in SPECIAL_ENV:
        assert f"`{name}`" in text


# ------------------------------------------------------------------------------------ globs


def _reference_match(pattern: bytes, string: bytes) -> bool:
    """Redis util.c ``stringmatchlen_impl`` (nocase=0), ported line by line."""
    skip = [False]

    def rec(pi: int, si: int) -> bool:
        plen, slen = len(pattern) - pi, len(string) - si
        while plen and slen:
            c = pattern[pi]
            if c == ord("*"):
                while plen and pi + 1 < len(pattern) and pattern[pi + 1] == ord("*"):
                    pi, plen = pi + 1, plen - 1
                if plen == 1:
                    return True
                while slen:
                    if rec(pi + 1, si):
                        return True
                    if skip[0]:
                        return False
                    si, slen = si + 1, slen - 1
                skip[0] = True
                return False
            if c == ord("["):
                pi, plen = pi + 1, plen - 1
                negate = plen > 0 and pattern[pi] == ord("^")
                if negate:
                    pi, plen = pi + 1, plen - 1
                match = False
                while True:
                    cur = pattern[pi] if plen > 0 else 0
                    if cur == ord("\\") and plen >= 2:
                        pi, plen = pi + 1, plen - 1
                        match = match or pattern[pi] == string[si]
                    elif cur == ord("]") and plen > 0:
                        break
                    elif plen == 0:
                        pi, plen = pi - 1, plen + 1
                        break
                    elif plen >= 3 and pattern[pi + 1] == ord("-"):
                        low, high = sorted((pattern[pi], pattern[pi + 2]))
                        pi, plen = pi + 2, plen - 2
                        match = match or low <= string[si] <= high
                    else:
                        match = match or cur == string[si]
                    pi, plen = pi + 1, plen - 1
                if match == negate:
                    return False
            elif c != ord("?"):
                if c == ord("\\") and plen >= 2:
                    pi, plen = pi + 1, plen - 1
                if pattern[pi] != string[si]:
                    return False
            si, slen = si + 1, slen - 1
            pi, plen = pi + 1, plen - 1
            if slen == 0:
                while pi < len(pattern) and pattern[pi] == ord("*"):
                    pi, plen = pi + 1, plen - 1
                break
        return plen == 0 and slen == 0

    return rec(0, 0)


GLOB_CASES: list[tuple[bytes, bytes, bool]] = [
    (b"user:*", b"user:1", True),
    (b"user:*", b"user:", True),
    (b"user:*", b"users:1", False),
    (b"*:profile", b"u:1:profile", True),
    (b"*:profile", b":profile", True),
    (b"*:profile", b"profile", False),
    (b"a*b*c", b"abc", True),
    (b"a*b*c", b"axxbyyc", True),
    (b"a*b*c", b"acb", False),
    (b"a*a", b"a", False),
    (b"a*a", b"aa", True),
    (b"**x**", b"x", True),
    (b"h?llo", b"hello", True),
    (b"h?llo", b"hllo", False),
    (b"h?llo", b"h\xc3\xa9llo", False),  # ? is one byte, not one character
    (b"h??llo", b"h\xc3\xa9llo", True),
    (b"h[ae]llo", b"hallo", True),
    (b"h[ae]llo", b"hillo", False),
    (b"h[^e]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False),
    (b"h[a-c]llo", b"hbllo", True),
    (b"h[c-a]llo", b"hbllo", True),  # reversed range
    (b"h[a-c]llo", b"hdllo", False),
    (b"[]a]", b"]", False),  # [] is an empty class; then a literal a]
    (b"[]a]", b"a]", False),
    (b"[]a]", b"xa]", False),
    (b"[^]a]", b"xa]", True),
    (b"[a-]", b"_", True),  # the range a-] (0x5d..0x61); the class stays open
    (b"[a-]", b"b", False),
    (b"[abc", b"b", True),  # unclosed: ends at the end of the pattern
    (b"x[", b"x", False),
    (b"x[", b"xy", False),
    (b"x[^", b"xy", True),
    (b"\\*", b"*", True),
    (b"\\*", b"x", False),
    (b"\\?x", b"?x", True),
    (b"\\[a]", b"[a]", True),
    (b"a\\", b"a\\", True),  # a trailing backslash is literal
    (b"[\\]]", b"]", True),
    (b"[\\-a]", b"-", True),
    (b"[\\^]", b"^", True),
    (b"[a\\-z]", b"m", False),
    (b"[a\\-z]", b"-", True),
    (b"\\a", b"a", True),
    (b"*\\**", b"a*b", True),
    (b"*\\**", b"ab", False),
    (b"k[\x80-\x90]", b"k\x85", True),  # high bytes on one side of 0x80
    (b"k[\x80-\x90]", b"k\x91", False),
    (b"k\xff*", b"k\xff\x00\x01", True),
    (b"k?", b"k\n", True),  # newlines are ordinary bytes
    (b"*", b"a\nb", True),
    (b"a*\n", b"a\nb\n", True),
    (b"*1", b"\x001", True),
    (b"[[]x", b"[x", True),
    (b"[*]", b"*", True),
    (b"[*]", b"a", False),
    (b"[?]", b"?", True),
    (b"exact", b"exact", True),
    (b"exact", b"exactly", False),
]


@pytest.mark.parametrize(("pattern", "string", "expected"), GLOB_CASES)
def test_glob_cases(pattern: bytes, string: bytes, expected: bool) -> None:
    assert redis_glob_match(pattern, string) is expected
    assert _reference_match(pattern, string) is expected


def test_empty_key_matches_only_all_star_patterns() -> None:
    """The deliberate difference from stringmatchlen: '' matches '*' (KEYS * returns it)."""
    assert redis_glob_match(b"*", b"") and redis_glob_match(b"**", b"")
    assert redis_glob_match(b"", b"")
    assert not redis_glob_match(b"?", b"") and not redis_glob_match(b"*a", b"")
    assert parse().redis.is_encrypted_key(b"")
    assert (
        parse({"redis": {"plaintext": ["*"], "encrypt": ["x*"]}}).redis.is_encrypted_key(b"")
        is False
    )


@given(
    st.binary(max_size=8).map(lambda b: bytes(b"ab*?[]^-\\"[x % 9] for x in b)),
    st.binary(min_size=1, max_size=8).map(lambda b: bytes(b"ab]^-\\[*\x80"[x % 9] for x in b)),
)
def test_glob_agrees_with_stringmatchlen(pattern: bytes, string: bytes) -> None:
    assert redis_glob_match(pattern, string) is _reference_match(pattern, string)


def test_glob_cost_is_not_exponential() -> None:
    settings = parse({"redis": {"plaintext": ["*a*a*a*a*a*a*a*a*b", "*a?a?a?a?a?a?c"]}})
    key = b"a" * 200_000
    started = time.perf_counter()
    assert settings.redis.is_encrypted_key(key)
    assert time.perf_counter() - started < 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        pytest.fail("redis-server not found: apt-get install redis-server")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.02)
    yield client
    client.close()
    proc.terminate()
    proc.wait(10)


def _keys(client: redis.Redis, pattern: bytes, strings: set[bytes]) -> dict[bytes, bool]:
    found = set(client.keys(pattern))
    return {s: s in found for s in strings}


def test_glob_cases_against_real_redis(real_redis: redis.Redis) -> None:
    strings = {s for _, s, _ in GLOB_CASES}
    real_redis.flushall()
    real_redis.mset(dict.fromkeys(strings, b"1"))
    for pattern in {p for p, _, _ in GLOB_CASES}:
        for string, matched in _keys(real_redis, pattern, strings).items():
            assert redis_glob_match(pattern, string) is matched, (pattern, string)


def test_random_globs_against_real_redis(real_redis: redis.Redis) -> None:
    rng = random.Random(20240601)
    strings = {bytes(rng.choice(b"ab]^-\\[*") for _ in range(rng.randint(1, 5))) for _ in range(80)}
    real_redis.flushall()
    real_redis.mset(dict.fromkeys(strings, b"1"))
    pipe = real_redis.pipeline(transaction=False)
    patterns = [
        bytes(rng.choice(b"ab*?[]^-\\") for _ in range(rng.randint(1, 7))) for _ in range(400)
    ]
    for pattern in patterns:
        pipe.keys(pattern)
    for pattern, found in zip(patterns, pipe.execute(), strict=True):
        for string in strings:
            assert redis_glob_match(pattern, string) is (string in found), (pattern, string)
            assert _reference_match(pattern, string) is (string in found), (pattern, string)


def test_real_redis_keys_star_returns_the_empty_key(real_redis: redis.Redis) -> None:
    real_redis.flushall()
    real_redis.set(b"", b"1")
    assert real_redis.keys(b"*") == [b""]
    assert redis_glob_match(b"*", b"")


def test_encrypt_and_plaintext_globs() -> None:
    r = parse(
        {"redis": {"encrypt": ["user:*", "session:*"], "plaintext": ["user:*:counter"]}}
    ).redis
    assert r.is_encrypted_key(b"user:1")
    assert not r.is_encrypted_key(b"user:1:counter")  # plaintext wins
    assert r.is_encrypted_key(b"session:x")
    assert not r.is_encrypted_key(b"other")
    for _ in range(2):  # cached answers stay right
        assert not r.is_encrypted_key(b"user:1:counter") and r.is_encrypted_key(b"user:1")
    long_key = b"user:" + b"x" * 1000 + b":counter"
    assert not r.is_encrypted_key(long_key) and not r.is_encrypted_key(long_key)
    for i in range(5000):
        r.is_encrypted_key(b"user:%d" % i)
    assert len(r._enc_cache) <= 4096
    assert not parse({"redis": {"encrypt": []}}).redis.is_encrypted_key(b"user:1")


def test_other_redis_lookups() -> None:
    r = parse(
        {
            "redis": {
                "encrypt_channels": ["chat.*"],
                "deterministic_lists": ["q:*"],
                "deterministic_fields": ["idx:*"],
                "allowed_scripts": [SHA],
            }
        }
    ).redis
    assert r.is_encrypted_channel(b"chat.room1") and not r.is_encrypted_channel(b"news")
    assert r.is_deterministic_list(b"q:1") and not r.is_deterministic_list(b"idx:1")
    assert r.is_deterministic_fields(b"idx:1") and not r.is_deterministic_fields(b"q:1")
    assert r.is_allowed_script(SHA) and r.is_allowed_script(SHA.lower().encode())
    assert not r.is_allowed_script("0" * 40)
    assert not parse().redis.is_encrypted_channel(b"chat.room1")
