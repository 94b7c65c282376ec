"""Connection state veil must follow, and the commands that change it (SPEC 6).

Everything else about a connection lives on its pinned upstream connection; veil tracks only
what changes its own behaviour:

* ``protocol`` -- from a successful ``HELLO 2|3`` (the upstream speaks the client's protocol,
  so replies already have the client's shape; veil's own replies are encoded for it);
* ``db`` and ``user`` -- from ``SELECT`` and ``AUTH``/``HELLO ... AUTH`` replies (the lazy
  re-encryption hook needs the database, side-connection emulations both);
* ``MULTI``: commands queued upstream answer ``+QUEUED``; their real entries wait in ``queued``
  and are applied element by element to ``EXEC``'s array. A command veil refuses inside MULTI
  makes the transaction *dirty*: ``EXEC`` is then sent as ``DISCARD`` and answered
  ``-EXECABORT``, exactly as Redis does after a queueing error;
* ``CLIENT REPLY OFF|SKIP|ON`` -- never forwarded: veil drops the replies itself, so the
  upstream's replies keep pairing with their commands;
* subscriptions -- from confirmations, so an argument-less ``UNSUBSCRIBE`` knows how many
  confirmations it gets, and RESP2 pub/sub messages are told apart from replies.

Pub/sub messages on ``redis.encrypt_channels`` are opened for subscribers; one that does not
open (legacy plaintext under ``refuse``, tampered, another namespace) is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from protocols.resp import ErrorReply, Map, Protocol, Push, SimpleString, Value, encode_reply
from proxy.errors import VeilError
from proxy.redis import emulate
from proxy.redis.cipher import NeedsReload
from proxy.redis.entries import PUBSUB, SESSION, Entry, as_entry
from proxy.redis.policy import Refusal, Row, veil_command_reply

if TYPE_CHECKING:
    from proxy.redis.connection import ClientConnection

MESSAGES: Final = frozenset({b"message", b"pmessage", b"smessage"})
CONFIRMS: Final = {
    b"subscribe": ("channels", True),
    b"psubscribe": ("patterns", True),
    b"ssubscribe": ("shards", True),
    b"unsubscribe": ("channels", False),
    b"punsubscribe": ("patterns", False),
    b"sunsubscribe": ("shards", False),
}
_SETS: Final = {
    b"unsubscribe": "channels",
    b"punsubscribe": "patterns",
    b"sunsubscribe": "shards",
}
EXECABORT: Final = ErrorReply(b"EXECABORT Transaction discarded because of previous errors.")
OK: Final = SimpleString(b"OK")
ON, OFF, SKIP = 0, 1, 2


@dataclass
class State:
    protocol: Protocol = 2
    db: int = 0
    user: bytes = b"default"
    in_multi: bool = False
    dirty: bool = False
    queued: list[Any] = field(default_factory=list)
    reply_mode: int = ON
    channels: set[bytes] = field(default_factory=set)
    patterns: set[bytes] = field(default_factory=set)
    shards: set[bytes] = field(default_factory=set)
    pubsub_pending: int = 0
    pubsub_mode: bool = False

    def after_reply(self) -> None:
        """A reply was silenced: SKIP applies to one command only."""
        if self.reply_mode == SKIP:
            self.reply_mode = ON

    def pubsub_done(self) -> None:
        self.pubsub_pending -= 1
        self.refresh()

    def refresh(self) -> None:
        self.pubsub_mode = bool(
            self.pubsub_pending or self.channels or self.patterns or self.shards
        )

    def pending_lost(self) -> None:
        self.pubsub_pending = 0
        self.refresh()


# --- the commands --------------------------------------------------------------------------


def _session(conn: ClientConnection, row: Row, fn: Callable[..., Value], arg: Any) -> None:
    conn.forward(Entry(SESSION, row.index, fn, arg))


def _refuse_in_multi(conn: ClientConnection, row: Row, cmd: list[bytes]) -> bool:
    if conn.state.in_multi:
        name = cmd[0].decode("latin-1").upper()
        conn.refuse(Refusal(f"ERR veil: {name} cannot be used inside MULTI through veil"),
                    row.index, cmd)  # fmt: skip
        return True
    return False


def r_hello(conn: ClientConnection, value: Value, arg: tuple[int, bytes | None]) -> Value:
    if type(value) is Map or type(value) is list:
        protocol, user = arg
        if protocol == 2:
            conn.state.protocol = 2
        elif protocol == 3:
            conn.state.protocol = 3
        if user is not None:
            conn.state.user = user
    return value


def hello(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    protocol = int(cmd[1]) if len(cmd) > 1 and cmd[1].isdigit() else 0
    user = None
    for i in range(2, len(cmd) - 2):
        if cmd[i].upper() == b"AUTH":
            user = cmd[i + 1]
    _session(conn, row, r_hello, (protocol if protocol in (2, 3) else 0, user))


def r_auth(conn: ClientConnection, value: Value, user: bytes) -> Value:
    if type(value) is SimpleString:
        conn.state.user = user
    return value


def auth(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    _session(conn, row, r_auth, cmd[1] if len(cmd) > 2 else b"default")


def r_select(conn: ClientConnection, value: Value, db: int) -> Value:
    if type(value) is SimpleString:
        conn.state.db = db
    return value


def select(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    db = int(cmd[1]) if cmd[1].isdigit() else 0
    _session(conn, row, r_select, db)


def r_reset(conn: ClientConnection, value: Value, _: None) -> Value:
    if type(value) is SimpleString:
        s = conn.state
        s.protocol, s.db, s.user = 2, 0, b"default"
        s.channels.clear()
        s.patterns.clear()
        s.shards.clear()
        s.refresh()
    return value


def reset(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    s = conn.state
    s.in_multi, s.dirty, s.queued, s.reply_mode = False, False, [], ON
    conn.refresh_fast()
    _session(conn, row, r_reset, None)


def multi(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    s = conn.state
    if s.in_multi:  # Redis answers "MULTI calls can not be nested" and stays in MULTI
        conn.forward(row.index)
        return
    conn.forward(row.index)
    s.in_multi, s.dirty, s.queued = True, False, []
    conn.refresh_fast()


def r_exec(conn: ClientConnection, value: Value, queued: list[Any]) -> Value:
    """EXEC's array: each element treated as the reply of its queued command."""
    if type(value) is not list or len(value) != len(queued):
        return value
    out: list[Value] = []
    changed = False
    for item, queued_item in zip(value, queued, strict=True):
        new = item
        entry = as_entry(queued_item)
        if type(item) is not ErrorReply and entry.fn is not None:
            new = _element(conn, item, entry)
        changed = changed or new is not item
        out.append(new)
    return out if changed else value


def _element(conn: ClientConnection, item: Value, entry: Entry) -> Value:
    fn = entry.fn
    assert fn is not None
    target: Any = conn.cipher if entry.kind != SESSION else conn
    try:
        return fn(target, item, entry.arg)
    except NeedsReload:
        return ErrorReply(b"ERR veil: unknown key version")
    except (VeilError, Refusal) as e:
        return ErrorReply(e.resp_error if isinstance(e, VeilError) else e.reply.message)


def r_aborted(conn: ClientConnection, value: Value, _: None) -> Value:
    if type(value) is SimpleString:
        return EXECABORT
    if type(value) is ErrorReply and b"DISCARD without MULTI" in value.message:
        return ErrorReply(b"ERR EXEC without MULTI")
    return value


def exec_(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    s = conn.state
    if not s.in_multi:
        conn.forward(row.index)
        return
    queued, dirty = s.queued, s.dirty
    s.in_multi, s.dirty, s.queued = False, False, []
    conn.refresh_fast()
    if dirty:
        conn.req.replace(b"*1\r\n$7\r\nDISCARD\r\n")
        _session(conn, row, r_aborted, None)
    else:
        _session(conn, row, r_exec, queued)


def discard(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    s = conn.state
    s.in_multi, s.dirty, s.queued = False, False, []
    conn.refresh_fast()
    conn.forward(row.index)


def client_reply(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    """CLIENT REPLY ON|OFF|SKIP, emulated: the upstream keeps answering, veil drops replies."""
    if _refuse_in_multi(conn, row, cmd):
        return
    conn.req.replace(b"")
    mode = cmd[2].upper()
    s = conn.state
    if mode == b"ON":
        s.reply_mode = ON
        conn.local(OK, row.index)
    elif mode in (b"OFF", b"SKIP"):
        s.reply_mode = OFF if mode == b"OFF" else SKIP
    else:
        conn.local(ErrorReply(b"ERR syntax error"), row.index)
    conn.refresh_fast()


def subscribe(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    if _refuse_in_multi(conn, row, cmd):
        return
    s = conn.state
    s.pubsub_pending += 1
    s.refresh()
    conn.forward(Entry(PUBSUB, row.index, count=len(cmd) - 1 or -1, arg=cmd[0].lower()))


def _emulation(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    if conn.observe or conn.cipher.key(cmd[1]) is None:
        conn.forward(row.index)
        return
    if conn.state.in_multi:
        name = cmd[0].decode("latin-1").upper()
        conn.refuse(Refusal(f"ERR veil: {name} cannot be emulated inside MULTI"), row.index, cmd)
        return
    conn.req.replace(b"")
    emulate.start(conn, row, cmd)


HANDLERS: Final[dict[str, Callable[[Any, Row, list[bytes]], None]]] = {
    "hello": hello,
    "auth": auth,
    "select": select,
    "reset": reset,
    "multi": multi,
    "exec": exec_,
    "discard": discard,
    "client_reply": client_reply,
    "subscribe": subscribe,
    "append": _emulation,
    "setrange": _emulation,
}


def veil_command(conn: ClientConnection, cmd: list[bytes]) -> None:
    """``VEIL COMMAND [name ...]``: the policy table (veil's own command, never forwarded)."""
    conn.req.replace(b"")
    if len(cmd) < 2 or cmd[1].upper() != b"COMMAND":
        conn.local(ErrorReply(b"ERR veil: usage: VEIL COMMAND [name ...]"), -1)
        return
    if conn.state.in_multi:
        conn.state.dirty = True
        conn.local(ErrorReply(b"ERR veil: VEIL cannot be used inside MULTI"), -1)
        return
    conn.local(veil_command_reply(conn.dispatch.table, cmd[2:]), -1)


# --- pub/sub messages -----------------------------------------------------------------------


def on_pubsub(conn: ClientConnection, value: Value) -> bool:
    """Handles a push or RESP2 pub/sub array; False if it is an ordinary reply after all."""
    items = value.items if type(value) is Push else value
    if type(items) is not list or not items or type(items[0]) is not bytes:
        return type(value) is Push  # a push is never a reply; forward it as it is
    kind = items[0].lower()
    if kind in MESSAGES:
        _message(conn, value, items, kind)
        return True
    confirm = CONFIRMS.get(kind)
    if confirm is None:
        return type(value) is Push  # tracking invalidations and other pushes pass
    _confirmation(conn, items, kind, confirm)
    return True


def _message(conn: ClientConnection, value: Value, items: list[Value], kind: bytes) -> None:
    channel = items[2] if kind == b"pmessage" else items[1]
    if type(channel) is not bytes or len(items) < 3:
        return
    cipher = conn.cipher
    state = cipher.channel(channel)
    payload = items[-1]
    if state is None or type(payload) is not bytes:
        return
    try:
        plain = cipher.open_channel(state, payload, channel)
    except (VeilError, NeedsReload):
        conn.rep.replace(b"")  # dropped (counted by the cipher): never ciphertext to a client
        return
    new_items = [*items[:-1], plain]
    new: Value = Push(new_items) if type(value) is Push else new_items
    conn.rep.replace(encode_reply(new, conn.state.protocol))


def _confirmation(
    conn: ClientConnection, items: list[Value], kind: bytes, confirm: tuple[str, bool]
) -> None:
    s = conn.state
    name, adding = confirm
    target: set[bytes] = getattr(s, name)
    if len(items) > 1 and type(items[1]) is bytes:
        (target.add if adding else target.discard)(items[1])
    pending = conn.pending
    head = pending[0] if pending else None
    if type(head) is Entry and head.kind == PUBSUB:
        if head.count < 0:  # argument-less UNSUBSCRIBE: one per subscription, at least one
            remaining = len(getattr(s, _SETS.get(head.arg, "channels")))
            head.count = remaining + (1 if len(items) > 1 and items[1] is not None else 0) or 1
        head.count -= 1
        if head.discard:
            conn.rep.replace(b"")
        if head.count <= 0:
            pending.popleft()
            s.pubsub_pending -= 1
            conn.emit_after(head)
    s.refresh()
