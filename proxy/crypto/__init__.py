"""veil's envelope cryptography: pure functions and small classes, no I/O.

See docs/FORMAT.md for every byte. Public names are re-exported here.
"""

from proxy.crypto.context import Role, field_context, value_context
from proxy.crypto.envelope import (
    MAGIC,
    SMALL_OVERHEAD,
    KeyLookup,
    Opener,
    SmallSealer,
    is_envelope,
    open_deterministic,
    parse_header,
    seal_deterministic,
)
from proxy.crypto.keys import KeyKind, VersionKey
from proxy.crypto.objects import (
    MAX_SINGLE_PUT_PLAINTEXT,
    SEGMENT,
    DataKey,
    Layout,
    PartEncryptor,
    RangeDecryptor,
    Segment,
    encrypt_part,
    open_upload_token,
    plaintext_size,
    rewrap_data_key,
    seal_upload_token,
    stored_size,
    unwrap_data_key,
    wrap_data_key,
)

__all__ = [
    "MAGIC",
    "MAX_SINGLE_PUT_PLAINTEXT",
    "SEGMENT",
    "SMALL_OVERHEAD",
    "DataKey",
    "KeyKind",
    "KeyLookup",
    "Layout",
    "Opener",
    "PartEncryptor",
    "RangeDecryptor",
    "Role",
    "Segment",
    "SmallSealer",
    "VersionKey",
    "encrypt_part",
    "field_context",
    "is_envelope",
    "open_deterministic",
    "open_upload_token",
    "parse_header",
    "plaintext_size",
    "rewrap_data_key",
    "seal_deterministic",
    "seal_upload_token",
    "stored_size",
    "unwrap_data_key",
    "value_context",
    "wrap_data_key",
]
