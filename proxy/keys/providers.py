"""Key providers: what protects version material at rest (SPEC 4).

* ``LocalProvider`` -- the embedded default: material sealed with AES-SIV under a key derived
  from a 32-byte root key (a file, or ``VEIL_KEYS_ROOT_KEY``).
* ``AwsKmsProvider`` -- material wrapped by AWS KMS ``Encrypt``/``Decrypt`` with an
  encryption context naming the keyring, class, kind and version, through aiobotocore.

Providers are called when a version is created and when the keyring is loaded or re-validated
(``keys.cache_ttl``), never per request. Every wrap is bound to its context, so wrapped material
cannot be moved to another version, class or keyring.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from proxy.crypto import _kdf
from proxy.errors import AuthenticationError, ConfigError, DecryptionFailed, KmsUnavailable

ROOT_KEY_LEN = 32

# op, seconds, error (or None): how providers report to metrics (SPEC 10) without importing them
KmsObserver = Callable[[str, str, float, bool], None]


def _noop_observer(provider: str, op: str, seconds: float, error: bool) -> None:
    return None


def wrap_context(keyring_id: bytes, class_id: int, kind: str, version: int) -> dict[str, str]:
    """The encryption context every wrap is bound to (KMS EncryptionContext / SIV AD)."""
    return {
        "veil:keyring": keyring_id.hex(),
        "veil:class": str(class_id),
        "veil:kind": kind,
        "veil:version": str(version),
    }


def _canonical(context: Mapping[str, str]) -> bytes:
    return json.dumps(dict(sorted(context.items())), separators=(",", ":")).encode()


class Provider(Protocol):
    name: str

    def describe(self) -> dict[str, str]:
        """What the keyring document records about this provider (no secrets)."""
        ...

    def check(self, recorded: Mapping[str, str]) -> None:
        """Raises ``AuthenticationError`` if this provider cannot be the one that wrapped."""
        ...

    async def wrap(self, material: bytes, context: Mapping[str, str]) -> str: ...

    async def unwrap(self, wrapped: str, context: Mapping[str, str]) -> bytes: ...

    async def close(self) -> None: ...


def decode_root_key(text: str | bytes) -> bytes:
    """A root key is 32 bytes, written as base64 (one line)."""
    raw = text.strip() if isinstance(text, bytes) else text.strip().encode()
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != ROOT_KEY_LEN:
        raise ConfigError("root key must be 32 bytes, base64-encoded")
    return key


def encode_root_key(key: bytes) -> str:
    return base64.b64encode(key).decode() + "\n"


def write_secret_file(path: Path, content: str) -> None:
    """Writes a new secret file with mode 0600, atomically; never overwrites one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if ``path`` exists: never clobber a root key
    finally:
        os.unlink(tmp)


def load_root_key(path: str, env_value: str | None) -> bytes:
    if env_value:
        return decode_root_key(env_value)
    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"root key file {path} not found (run `veil keys init`, or set VEIL_KEYS_ROOT_KEY)"
        ) from None
    if p.stat().st_mode & 0o077:
        os.chmod(p, 0o600)  # a root key readable by others is tightened, not trusted as is
    return decode_root_key(text)


class LocalProvider:
    name = "local"

    def __init__(self, root_key: bytes) -> None:
        if len(root_key) != ROOT_KEY_LEN:
            raise ConfigError("root key must be 32 bytes")
        self._siv = AESSIV(_kdf.derive(root_key, "root-wrap"))
        self._kcv = _kdf.check_value(root_key, b"root").hex()

    def __repr__(self) -> str:
        return "LocalProvider(<root key>)"

    def describe(self) -> dict[str, str]:
        return {"type": "local", "root_kcv": self._kcv}

    def check(self, recorded: Mapping[str, str]) -> None:
        if recorded.get("type") != "local":
            raise ConfigError(f"keyring uses provider {recorded.get('type')!r}, not 'local'")
        if recorded.get("root_kcv") != self._kcv:
            raise AuthenticationError(
                "root key does not match the keyring (key-check value differs): refusing to start"
            )

    async def wrap(self, material: bytes, context: Mapping[str, str]) -> str:
        return base64.b64encode(self._siv.encrypt(material, [_canonical(context)])).decode()

    async def unwrap(self, wrapped: str, context: Mapping[str, str]) -> bytes:
        try:
            return self._siv.decrypt(base64.b64decode(wrapped), [_canonical(context)])
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptionFailed(
                "wrapped key material does not open with this root key"
            ) from None

    async def close(self) -> None:
        return None


class AwsKmsProvider:
    """AWS KMS through aiobotocore. ``endpoint`` points at moto (tests) or a VPC endpoint."""

    name = "aws-kms"

    def __init__(
        self,
        key_id: str,
        region: str,
        endpoint: str | None = None,
        observer: KmsObserver = _noop_observer,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        self._key_id = key_id
        self._region = region
        self._endpoint = endpoint
        self._observer = observer
        self._credentials = dict(credentials or {})
        self._client: Any = None
        self._ctx: Any = None

    def describe(self) -> dict[str, str]:
        return {"type": "aws-kms", "key_id": self._key_id}

    def check(self, recorded: Mapping[str, str]) -> None:
        if recorded.get("type") != "aws-kms":
            raise ConfigError(f"keyring uses provider {recorded.get('type')!r}, not 'aws-kms'")

    async def _kms(self) -> Any:
        if self._client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            cfg = AioConfig(
                retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=10
            )
            self._ctx = get_session().create_client(
                "kms",
                region_name=self._region,
                endpoint_url=self._endpoint,
                config=cfg,
                **self._credentials,
            )
            self._client = await self._ctx.__aenter__()
        return self._client

    async def _call(self, op: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        start = time.perf_counter()
        error = True
        try:
            client = await self._kms()
            result = await getattr(client, op)(**kwargs)
            error = False
            return result
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise DecryptionFailed("KMS refused the wrapped key material") from None
            if code in (
                "AccessDeniedException",
                "DisabledException",
                "NotFoundException",
                "KMSInvalidStateException",
            ):
                raise AuthenticationError(f"KMS refused {op}: {code}") from None
            raise KmsUnavailable(f"KMS {op} failed: {code or 'error'}") from None
        except (BotoCoreError, OSError) as e:
            raise KmsUnavailable(f"KMS unreachable ({type(e).__name__})") from None
        finally:
            self._observer(self.name, op, time.perf_counter() - start, error)

    async def wrap(self, material: bytes, context: Mapping[str, str]) -> str:
        r = await self._call(
            "encrypt", KeyId=self._key_id, Plaintext=material, EncryptionContext=dict(context)
        )
        return base64.b64encode(r["CiphertextBlob"]).decode()

    async def unwrap(self, wrapped: str, context: Mapping[str, str]) -> bytes:
        r = await self._call(
            "decrypt",
            KeyId=self._key_id,
            CiphertextBlob=base64.b64decode(wrapped),
            EncryptionContext=dict(context),
        )
        plaintext: bytes = r["Plaintext"]
        return plaintext

    async def close(self) -> None:
        if self._ctx is not None:
            await self._ctx.__aexit__(None, None, None)
            self._client = self._ctx = None
