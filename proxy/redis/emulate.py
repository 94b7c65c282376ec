"""Read-modify-write emulation on a side connection: APPEND and SETRANGE on encrypted strings.

Theory of operation
===================
Redis cannot append to ciphertext, so veil reads, edits and re-seals the value itself -- never
on the client's own upstream connection (its WATCHes, transaction and blocking state must not
change), but on a *side connection* in the client's database (``RespServer.side``):

1. The command is a barrier: the client connection stops reading, waits until every earlier
   command has been answered (so the emulation sees their writes), and plans nothing after it
   until the emulation has answered -- the pipeline keeps its order.
2. ``ACL DRYRUN <user> <command> <args>`` asks Redis whether the client's user may run the
   original command; a refusal is answered as Redis would (``-NOPERM ...``).
3. ``WATCH key``, ``GET``, open, edit, seal, ``MULTI``/``SET key new KEEPTTL``/``EXEC``: a
   concurrent writer aborts the EXEC and the loop retries (up to ``ATTEMPTS`` times), so no
   write is ever lost or overwritten (compare-and-set semantics, TTL kept).

Inside MULTI these commands are refused (``session``): their outcome would depend on commands
that have not run yet. The side connection uses the upstream URL's credentials, which must be
allowed to run ``ACL DRYRUN``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from protocols.resp import ErrorReply, Value
from proxy.errors import VeilError
from proxy.redis.cipher import KeyInfo, NeedsReload
from proxy.redis.policy import Refusal, Row

if TYPE_CHECKING:
    from proxy.redis.connection import ClientConnection

log = logging.getLogger("veil.redis")
ATTEMPTS: Final = 16
MAX_SIZE: Final = 512 * 1024 * 1024
_TOO_BIG: Final = "ERR string exceeds maximum allowed size (proto-max-bulk-len)"


def appended(plain: bytes, cmd: list[bytes]) -> tuple[bytes | None, Value]:
    new = plain + cmd[2]
    if len(new) > MAX_SIZE:
        raise Refusal(_TOO_BIG)
    return new, len(new)


def setrange(plain: bytes, cmd: list[bytes]) -> tuple[bytes | None, Value]:
    try:
        offset = int(cmd[2])
    except ValueError:
        raise Refusal("ERR value is not an integer or out of range") from None
    if offset < 0:
        raise Refusal("ERR offset is out of range")
    value = cmd[3]
    if not value:
        return None, len(plain)  # Redis writes nothing for an empty value
    if offset + len(value) > MAX_SIZE:
        raise Refusal(_TOO_BIG)
    new = plain[:offset].ljust(offset, b"\0") + value + plain[offset + len(value) :]
    return new, len(new)


EDITS: Final[dict[bytes, Callable[[bytes, list[bytes]], tuple[bytes | None, Value]]]] = {
    b"APPEND": appended,
    b"SETRANGE": setrange,
}


def start(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    """Makes ``cmd`` a barrier and runs it once everything before it has been answered."""
    if conn.transport is not None:
        conn.transport.pause_reading()
    conn.blocked = asyncio.ensure_future(_barrier(conn, row, cmd))


async def _barrier(conn: ClientConnection, row: Row, cmd: list[bytes]) -> None:
    try:
        await conn.drained()
        try:
            reply = await run(conn, cmd)
        except Refusal as r:
            reply = r.reply
        except (VeilError, NeedsReload) as e:
            reply = ErrorReply(
                e.resp_error if isinstance(e, VeilError) else b"ERR veil: unknown key version"
            )
        except Exception as e:  # the side connection failed: never a silent success
            log.warning("%s emulation failed: %s", cmd[0].decode("latin-1"), type(e).__name__)
            reply = ErrorReply(b"ERR veil: upstream unavailable")
        if type(reply) is ErrorReply:
            conn.errors[row.index] += 1
        conn.local(reply, row.index)
        conn.flush_client()
    finally:
        conn.blocked = None
    if not conn.closing:
        if conn.transport is not None:
            conn.transport.resume_reading()
        conn.process()


async def run(conn: ClientConnection, cmd: list[bytes]) -> Value:
    from redis.exceptions import ResponseError, WatchError

    key = cmd[1]
    info = conn.cipher.key(key)
    assert info is not None
    side: Any = conn.server.side(conn.state.db)
    try:
        verdict = await side.execute_command("ACL", "DRYRUN", conn.state.user, *cmd)
    except ResponseError as e:
        raise Refusal(
            f"ERR veil: emulation needs ACL DRYRUN for veil's upstream user ({e})"
        ) from None
    if verdict not in (b"OK", "OK", True):
        text = verdict if isinstance(verdict, bytes) else str(verdict).encode()
        return ErrorReply(b"NOPERM " + text)
    edit = EDITS[cmd[0].upper()]
    for _ in range(ATTEMPTS):
        async with side.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            try:
                stored = await pipe.get(key)
            except ResponseError as e:
                return ErrorReply(str(e).encode())
            plain = b"" if stored is None else _open(conn, info, stored, key)
            new, reply = edit(plain, cmd)
            if new is None:
                return reply
            pipe.multi()
            pipe.set(key, conn.cipher.seal_string(info, new), keepttl=True)
            try:
                await pipe.execute()
            except WatchError:
                continue
            return reply
    raise Refusal(f"ERR veil: {cmd[0].decode('latin-1').upper()} kept losing to concurrent writers")


def _open(conn: ClientConnection, info: KeyInfo, stored: bytes, key: bytes) -> bytes:
    from proxy.crypto.context import Role

    return conn.cipher.open(info, Role.STRING, stored, key)
