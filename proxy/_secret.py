"""The :class:`Secret` type: configuration secrets that never print.

Secrets (the root key, admin tokens, S3 secret keys, URL passwords) are :class:`Secret` objects
whose repr is ``Secret(***)``; no error message echoes them and exceptions are raised
``from None`` so no chained message does either.

Part of :mod:`proxy.config`, which re-exports :class:`Secret`; import it from there.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Generic, NoReturn, TypeVar

__all__ = ["Secret"]

_T = TypeVar("_T", str, bytes)


class Secret(Generic[_T]):
    """A secret that never prints: repr and str are ``Secret(***)``; pickling is refused.

    ``matches`` compares in constant time (SHA-256 of both sides through
    ``hmac.compare_digest``, so not even the length leaks); ``reveal`` hands out the value.
    """

    __slots__ = ("_value",)
    _value: _T

    def __init__(self, value: _T) -> None:
        self._value = value

    def reveal(self) -> _T:
        return self._value

    def reveal_bytes(self) -> bytes:
        value = self._value
        return value.encode() if isinstance(value, str) else value

    def matches(self, candidate: str | bytes) -> bool:
        other = candidate.encode() if isinstance(candidate, str) else candidate
        mine = hashlib.sha256(self.reveal_bytes()).digest()
        return hmac.compare_digest(mine, hashlib.sha256(other).digest())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.matches(other.reveal_bytes())

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("secrets cannot be pickled")

    def __copy__(self) -> Secret[_T]:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Secret[_T]:
        return self
