"""What a connection remembers about each command in flight (its FIFO of pending replies).

A plain ``int`` (the row index) means "forward the reply unchanged, count it" -- the common
case costs no allocation. An ``Entry`` says how to treat the reply:

* ``RAW``: forward unchanged, then emit ``after`` (local replies queued behind it);
* ``TRANSFORM``: ``fn(cipher, value, arg)`` rewrites the reply (never called on an error);
* ``SESSION``: ``fn(connection, value, arg)`` updates connection state (HELLO, SELECT, EXEC,
  ...) and may rewrite the reply; it sees errors too;
* ``PUBSUB``: a SUBSCRIBE-family command, answered by ``count`` confirmations (``-1``: as many
  as there are subscriptions when it reaches the head, for an argument-less UNSUBSCRIBE).

``discard`` marks a reply that ``CLIENT REPLY OFF|SKIP`` silenced: it is read and dropped, so
later replies still pair with their commands. Local replies (refusals, veil's own answers) are
never entries of their own: they ride in the ``after`` list of the entry before them, because a
value's raw bytes are forwarded as soon as it is parsed, and a local reply must follow them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from protocols.resp import Value

RAW: Final = 0
TRANSFORM: Final = 1
SESSION: Final = 2
PUBSUB: Final = 3


class Entry:
    __slots__ = ("after", "arg", "count", "discard", "fn", "idx", "kind")

    def __init__(
        self,
        kind: int,
        idx: int,
        fn: Callable[[Any, Value, Any], Value] | None = None,
        arg: Any = None,
        count: int = 0,
    ) -> None:
        self.kind = kind
        self.idx = idx
        self.fn = fn
        self.arg = arg
        self.count = count
        self.discard = False
        self.after: list[Value] | None = None

    def __repr__(self) -> str:
        return f"Entry(kind={self.kind}, idx={self.idx}, count={self.count})"


# a GET on an encrypted key (``fast``): (key info, key, row index)
StringRead = tuple[Any, bytes, int]
Pending = int | Entry | StringRead


def r_string(cipher: Any, value: Value, arg: tuple[Any, bytes]) -> Value:
    return cipher.open_string(arg[0], value, arg[1]) if type(value) is bytes else value


def as_entry(item: Pending) -> Entry:
    """Any FIFO item as an ``Entry`` (the general path's form of the fast ones)."""
    if type(item) is Entry:
        return item
    if type(item) is tuple:
        return Entry(TRANSFORM, item[2], r_string, (item[0], item[1]))
    return Entry(RAW, item)  # type: ignore[arg-type]
