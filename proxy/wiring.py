"""Builds the keyring pieces from ``Settings``: one place, shared by the CLI and ``veil serve``."""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.audit import AuditLog
from proxy.config import FileStore as FileStoreUrl
from proxy.config import KeySettings, Settings
from proxy.crypto.keys import KeyKind
from proxy.keys import escrow
from proxy.keys.lifecycle import Policy
from proxy.keys.model import Keyring, State
from proxy.keys.ops import KeyOps
from proxy.keys.providers import (
    AwsKmsProvider,
    KmsObserver,
    LocalProvider,
    Provider,
    encode_root_key,
    load_root_key,
    write_secret_file,
)
from proxy.keys.runtime import KeyringRuntime, default_sidecar_id, unwrap_meta, unwrap_version
from proxy.keys.stores import FileStore, KeyringStore, RedisStore

log = logging.getLogger("veil.keys")


def build_store(keys: KeySettings) -> KeyringStore:
    if isinstance(keys.store, FileStoreUrl):
        return FileStore(keys.store.path)
    return RedisStore(keys.store.reveal())


def root_key_bytes(keys: KeySettings, create: bool = False) -> bytes:
    """The local provider's root key: ``VEIL_KEYS_ROOT_KEY``, else the file (created 0600 by
    ``veil keys init`` when ``create``)."""
    if keys.root_key is not None:
        return keys.root_key.reveal()
    path = Path(keys.root_key_file)
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret_file(path, encode_root_key(os.urandom(32)))
        log.warning("created a new root key in %s: back it up (or export an escrow bundle)", path)
    return load_root_key(str(path), None)


def build_provider(
    keys: KeySettings, observer: KmsObserver | None = None, create_root: bool = False
) -> Provider:
    if keys.provider == "aws-kms":
        assert keys.kms_key_id is not None  # validated by config
        if observer is None:
            return AwsKmsProvider(keys.kms_key_id, keys.kms_region, keys.kms_endpoint)
        return AwsKmsProvider(keys.kms_key_id, keys.kms_region, keys.kms_endpoint, observer)
    return LocalProvider(root_key_bytes(keys, create=create_root))


def policy_of(keys: KeySettings) -> Policy:
    return Policy(
        grace_period=keys.default_class.grace_period,
        destroy_min_age=keys.destroy_min_age,
        max_live_versions=keys.max_live_versions,
    )


def policy_for_class(keys: KeySettings, class_name: str) -> Policy:
    try:
        grace = keys.class_named(class_name).grace_period
    except KeyError:
        grace = keys.grace_period
    return Policy(grace, keys.destroy_min_age, keys.max_live_versions)


def build_ops(
    settings: Settings, store: KeyringStore, provider: Provider, class_name: str = "default"
) -> KeyOps:
    k = settings.keys
    return KeyOps(
        store=store,
        provider=provider,
        policy=policy_for_class(k, class_name),
        heartbeat_interval=k.heartbeat_interval,
        propagation_delay=k.propagation_delay,
    )


def build_runtime(
    settings: Settings,
    store: KeyringStore,
    provider: Provider,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> KeyringRuntime:
    k = settings.keys
    return KeyringRuntime(
        store,
        provider,
        sidecar_id=k.sidecar_id or default_sidecar_id(),
        local_copy=Path(k.local_copy) if k.local_copy else None,
        heartbeat_interval=k.heartbeat_interval,
        max_keyring_age=k.max_keyring_age,
        cache_ttl=k.cache_ttl,
        max_stale=k.max_stale,
        on_event=on_event,
    )


def operator() -> str:
    """The CLI's audit actor: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def cli_audit(
    settings: Settings, meta_key: bytes, store: KeyringStore, anchors: list[dict[str, Any]]
) -> Callable[[dict[str, Any]], None]:
    """An audit sink for one CLI invocation: its own chain, anchored after key events."""
    chain = f"cli-{operator()}@{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
    log_ = AuditLog(settings.audit.path, chain, meta_key)
    log_.anchor_sink = anchors.append
    actor = operator()

    def sink(event: dict[str, Any]) -> None:
        log_.append(event, actor)

    return sink


async def unwrap_everything(
    provider: Provider, kr: Keyring
) -> tuple[bytes, dict[escrow.Ref, bytes]]:
    """Meta key and every non-destroyed version's material (escrow export, rewrap-root)."""
    materials: dict[escrow.Ref, bytes] = {}
    for c, kind, v in kr.all_versions():
        if v.state is not State.DESTROYED and v.wrapped is not None:
            key = await unwrap_version(provider, kr, c.id, kind, v)
            materials[(c.name, kind, v.version)] = key.material
    return await unwrap_meta(provider, kr), materials


async def write_escrow(settings: Settings, provider: Provider, kr: Keyring) -> Path | None:
    """Automatic escrow (``keys.escrow_recipient`` + ``keys.escrow_dir``) after a change."""
    k = settings.keys
    if k.escrow_recipient is None or k.escrow_dir is None:
        return None
    meta, materials = await unwrap_everything(provider, kr)
    recipient = escrow.Recipient(public_key=escrow.load_public_key(escrow._b64(k.escrow_recipient)))
    bundle = escrow.export_bundle(kr, meta, materials, recipient, kr.updated)
    out = Path(k.escrow_dir) / f"veil-escrow-{kr.keyring_id.hex()[:8]}-r{kr.revision}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("." + out.name + ".tmp")
    tmp.write_text(json.dumps(bundle, indent=1) + "\n")
    os.replace(tmp, out)
    return out


def kind_of(index: bool) -> KeyKind:
    return KeyKind.INDEX if index else KeyKind.MASTER
