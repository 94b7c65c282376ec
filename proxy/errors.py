"""veil's error tree.

Every error knows its own wire mapping, so each adapter translates it in exactly one place:

* ``resp_error`` -- the RESP error line a Redis client sees (``-ERR veil: ...``);
* ``s3_code`` / ``http_status`` -- the S3 error code and HTTP status an S3 client sees;
* ``exit_code`` -- the CLI exit code of SPEC 2 (0 ok, 1 internal, 2 usage/config,
  3 refused by state, 4 unreachable, 5 authentication).

Messages never contain values, key material or plaintext; they may name a Redis key, a
bucket/object key or a key *version* (an integer), which are not secret.
"""

from __future__ import annotations


class VeilError(Exception):
    """Base class. Subclasses set the class attributes below."""

    exit_code: int = 1
    http_status: int = 500
    s3_code: str = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def resp_error(self) -> bytes:
        """The RESP simple error, without the leading ``-`` and trailing CRLF."""
        return ("ERR veil: " + self.message).encode("utf-8", "replace")

    def to_json(self) -> dict[str, str]:
        return {"error": self.message}


class ConfigError(VeilError):
    """A bad or unknown configuration key or value (start-up error)."""

    exit_code = 2
    http_status = 400
    s3_code = "InvalidArgument"


class UsageError(VeilError):
    """A malformed command line or request."""

    exit_code = 2
    http_status = 400
    s3_code = "InvalidArgument"


class RefusedError(VeilError):
    """Refused by state or precondition (illegal transition, incomplete migration...)."""

    exit_code = 3
    http_status = 409
    s3_code = "InvalidRequest"


class IllegalTransition(RefusedError):
    """A key-lifecycle transition that SPEC 4's table does not allow."""


class BreakerOpen(RefusedError):
    """The migration circuit breaker is open."""

    http_status = 423


class UnavailableError(VeilError):
    """A store, upstream or KMS could not be reached."""

    exit_code = 4
    http_status = 503
    s3_code = "ServiceUnavailable"


class StoreUnavailable(UnavailableError):
    """The keyring store could not be read or written."""


class KmsUnavailable(UnavailableError):
    """The key provider (KMS) could not be reached."""


class AuthenticationError(VeilError):
    """A missing or wrong credential (admin token, root key, S3 signature)."""

    exit_code = 5
    http_status = 403
    s3_code = "AccessDenied"


class CryptoError(VeilError):
    """Base of everything the envelope layer raises about a ciphertext."""


class DecryptionFailed(CryptoError):
    """One opaque failure for every tampered, truncated, transplanted or misrouted envelope.

    Deliberately says nothing about *which* check failed (pyca ``InvalidTag``, tink's
    ``'Decryption failed.'``).
    """

    def __init__(self, message: str = "decryption failed") -> None:
        super().__init__(message)


class NotAnEnvelope(CryptoError):
    """The bytes do not start with veil's magic: legacy plaintext, not ciphertext."""

    def __init__(self, message: str = "value is not a veil envelope") -> None:
        super().__init__(message)


class UnsupportedFormat(CryptoError):
    """veil's magic with an envelope format this build does not know (never guessed at)."""


class WrongKeyring(CryptoError):
    """The envelope names another keyring (another region, staging vs production)."""


class KeyUnavailable(CryptoError):
    """The envelope's key version exists but cannot decrypt (revoked, destroyed, unknown)."""

    http_status = 403
    s3_code = "AccessDenied"


class KeyringStale(VeilError):
    """The loaded keyring is older than ``keys.max_keyring_age``: encryption stops."""

    exit_code = 4
    http_status = 503
    s3_code = "ServiceUnavailable"

    def __init__(self, message: str = "keyring stale") -> None:
        super().__init__(message)


class LegacyPlaintextRefused(CryptoError):
    """A non-envelope value where ciphertext was expected, under ``legacy_plaintext = refuse``."""

    def __init__(
        self, message: str = "stored value is not encrypted (legacy plaintext refused)"
    ) -> None:
        super().__init__(message)
