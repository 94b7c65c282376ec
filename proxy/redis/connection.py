"""One client connection: requests in, one upstream write per batch, replies out in order.

Theory of operation (STYLE 2.1, "One GET through the RESP proxy")
===================================================================
``data_received`` feeds the request decoder (``keep_raw``) and plans each command with the
``Dispatcher``: unchanged commands stay as the client's bytes, rewritten ones are
``replace()``d, and ``forward()`` then yields the whole batch for *one* upstream write. Each
forwarded command leaves one item in ``pending`` (``entries``): the FIFO that pairs replies
with commands, so pipelining keeps its order. Commands veil answers itself (refusals, ``VEIL
COMMAND``, ``CLIENT REPLY``) ride behind the entry before them, or go straight into the
client's write buffer when nothing is in flight.

``upstream_data`` feeds the reply decoder (``keep_raw`` too) and pops one item per reply. The
hot path is a plain ``int``: the reply's bytes go out untouched. An ``Entry`` with a transform
opens what the reply carries and ``replace()``s it; ``forward()`` then yields one client write
per upstream read. RESP3 pushes and pub/sub messages (``session.on_pubsub``) never pop an item,
except subscription confirmations, which answer their SUBSCRIBE-family command.

Connection state that changes what veil does (protocol, database, user, MULTI, CLIENT REPLY,
subscriptions) is tracked in ``session``; everything else lives on the pinned upstream
connection. A reply that meets a key version this keyring has never seen suspends reading
until the keyring has been reloaded once (SPEC 4), then resumes where it stopped.

Faults: a malformed or oversized request gets Redis's protocol error, in order behind the
replies of the commands before it (which run, as in Redis), and closes only this connection.
If the upstream cannot be reached, commands are answered ``-ERR veil: upstream unavailable``
and the next batch tries again; if an established upstream connection drops, pending commands
get that error and the client connection is closed (its server-side state -- database, user,
subscriptions, transaction -- is gone, and a silent reconnect would hide that).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import hiredis

from protocols.resp import (
    CLIENT_LIMITS,
    NEED_DATA,
    UPSTREAM_LIMITS,
    ErrorReply,
    Push,
    RespProtocolError,
    Value,
    encode_command,
    encode_reply,
    reply_decoder_class,
    request_decoder_class,
)
from proxy.errors import VeilError
from proxy.redis import fast, session
from proxy.redis.cipher import NeedsReload
from proxy.redis.entries import PUBSUB, SESSION, TRANSFORM, Entry, Pending, as_entry
from proxy.redis.policy import Refusal
from proxy.redis.upstream import HIGH_WATER, LOW_WATER, Upstream, connect

if TYPE_CHECKING:
    from proxy.redis.server import RespServer

log = logging.getLogger("veil.redis")

UNAVAILABLE: Final = ErrorReply(b"ERR veil: upstream unavailable")
REDIRECT: Final = ErrorReply(b"ERR veil: cluster redirections are not supported (one upstream)")
OTHER: Final = -1  # counter slot of commands that have no row
SAMPLE_EVERY: Final = 16  # batches per latency sample (veil_request_duration_seconds)


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.cipher = server.cipher
        self.dispatch = server.dispatch
        self.observe = server.observe
        self.req = request_decoder_class()(CLIENT_LIMITS, keep_raw=True)
        self.rep = reply_decoder_class()(UPSTREAM_LIMITS, keep_raw=True)
        self.pending: deque[Pending] = deque()
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.established = False
        self.queued: list[bytes] = []  # upstream-bound bytes while connecting
        self.out: list[bytes] = []  # client-bound local replies of this turn
        self.blocked: asyncio.Task[None] | None = None  # a side-connection emulation
        self.closing = False
        n = len(server.dispatch.table.labels) + 1
        self.counts = [0] * n  # per row index; the last slot is OTHER
        self.errors = [0] * n
        self.refused = [0] * n
        self.sent = 0  # commands planned (for duration sampling)
        self.done = 0
        self.sample: tuple[int, float] | None = None
        self.countdown = 1
        self.set_idx = server.set_idx
        self.quit_idx = server.dispatch.table.rows["quit"].index
        self.state = session.State()
        # planners of the fast path; None: the general path only (observe, MULTI, CLIENT REPLY)
        self.fast: dict[bytes, fast.Planner] | None = None if self.observe else server.fast
        self.chunk_requests = server.chunk_requests  # compiled, or fast.requests
        self.chunk_replies = server.chunk_replies
        self.raw_requests = hiredis.Reader()  # fast.requests (the Python chunk functions)
        self.raw_replies = hiredis.Reader()  # fast.replies
        self.req_idle = True  # the request decoder holds no partial command
        self.rep_idle = True
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_read = False  # QUIT or a protocol error: nothing more is read from it

    # --- client side -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.server.connections.add(self)
        self._connect()

    def data_received(self, data: bytes) -> None:
        if self.last_read:
            return
        if (
            self.req_idle
            and self.fast is not None
            and self.blocked is None
            and data[:1] == b"*"
            and len(data) <= fast.MAX_CHUNK
            and self.chunk_requests(self, data)
        ):
            return
        self.req.feed(data)
        self.req_idle = False
        if self.blocked is None:
            self.process()

    def apply(self, plans: list[fast.Plan], commands: list[list[bytes]], data: bytes) -> None:
        """Records a chunk planned by ``fast.requests`` and forwards it in one write."""
        pending, counts, set_idx = self.pending, self.counts, self.set_idx
        rewritten = 0
        for plan in plans:
            kind = plan.__class__
            if kind is int:
                counts[plan] += 1  # type: ignore[index]
            elif kind is tuple:
                counts[plan[2]] += 1  # type: ignore[index]
            else:
                rewritten += 1
                counts[set_idx] += 1
                plan = set_idx
            pending.append(plan)  # type: ignore[arg-type]
        if rewritten == len(plans):
            data = b"".join(plans)  # type: ignore[arg-type]
        elif rewritten:
            pack = hiredis.pack_command
            data = b"".join(
                p if p.__class__ is bytes else pack(tuple(c))  # type: ignore[arg-type]
                for p, c in zip(plans, commands, strict=True)
            )
        self.send_upstream(data)
        self._sent(len(plans))

    def apply_one(self, plan: fast.Plan, data: bytes) -> None:
        """``apply`` for a chunk of one planned command."""
        kind = plan.__class__
        if kind is bytes:  # a SET with its value sealed
            self.counts[self.set_idx] += 1
            self.pending.append(self.set_idx)
            data = plan  # type: ignore[assignment]
        else:
            self.counts[plan[2] if kind is tuple else plan] += 1  # type: ignore[index]
            self.pending.append(plan)  # type: ignore[arg-type]
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data)
        else:
            self.send_upstream(data)
        if self.sample is None:
            self._sent(1)
        else:
            self.sent += 1

    def _sent(self, count: int) -> None:
        """Counts planned commands; one in ``SAMPLE_EVERY`` batches has its latency observed."""
        if self.sample is None:
            self.countdown -= 1
            if self.countdown <= 0:
                self.countdown = SAMPLE_EVERY
                self.sample = (self.sent + 1, self.server.loop.time())
        self.sent += count

    def process(self) -> None:
        """Plans every complete command, then one upstream write and one client write."""
        req = self.req
        nxt = req.next
        n = 0
        try:
            while self.blocked is None and not self.last_read:
                cmd = nxt()
                if cmd is NEED_DATA:
                    break
                n += 1
                planners = self.fast
                if planners is not None:
                    planner = planners.get(cmd[0])
                    if planner is not None:
                        plan = planner(cmd)
                        if plan is not None:
                            self._planned(plan)
                            continue
                self.command(cmd)
        except RespProtocolError as e:
            self._protocol_error(e)
            return
        data = req.forward()
        self.req_idle = req.at_boundary()
        if data:
            self.send_upstream(data)
        if n:
            self._sent(n)
        if self.out:
            self.flush_client()

    def command(self, cmd: list[bytes]) -> None:
        try:
            row = self.dispatch.row(cmd)
        except Refusal as r:
            if cmd[0].upper() == b"VEIL":
                session.veil_command(self, cmd)
                return
            self.counts[OTHER] += 1
            self.refuse(r, OTHER, cmd)
            return
        idx = row.index
        self.counts[idx] += 1
        if idx == self.quit_idx:
            self.forward(idx)
            self._read_no_more()  # Redis answers QUIT, closes, and runs nothing after it
            return
        handler = session.HANDLERS.get(row.transform)
        if handler is not None:
            handler(self, row, cmd)
            return
        try:
            new, fn, arg = self.dispatch.plan(row, cmd)
        except Refusal as r:
            self.refuse(r, idx, cmd)
            return
        except VeilError as e:  # sealing impossible (keyring stale, no active version)
            self.errors[idx] += 1
            self.req.replace(b"")
            if self.state.in_multi:
                self.state.dirty = True
            self.local(ErrorReply(e.resp_error), idx)
            return
        if self.observe:
            self.forward(idx)
            return
        if new is not None:
            self.req.replace(encode_command(new))
        self.forward(idx if fn is None else Entry(TRANSFORM, idx, fn, arg))

    def _planned(self, plan: fast.Plan) -> None:
        if plan.__class__ is bytes:
            self.req.replace(plan)
            plan = self.server.set_idx
        self.counts[plan[2] if plan.__class__ is tuple else plan] += 1  # type: ignore[index]
        self.pending.append(plan)  # type: ignore[arg-type]

    def refresh_fast(self) -> None:
        """The fast functions apply outside MULTI, CLIENT REPLY OFF|SKIP and observe mode."""
        state = self.state
        plain = not (state.in_multi or state.reply_mode or self.observe)
        self.fast = self.server.fast if plain else None

    def refuse(self, refusal: Refusal, idx: int, cmd: list[bytes]) -> None:
        """A refused command: an error in its slot, or (observe mode) forwarded and counted.

        The command's bytes are dropped here (never forwarded), so callers must not have
        replaced them already.
        """
        self.refused[idx] += 1
        if self.observe:
            self.forward(idx)
            return
        self.req.replace(b"")
        if self.state.in_multi:
            self.state.dirty = True
        self.local(refusal.reply, idx)

    def forward(self, item: Pending) -> None:
        """Records a forwarded command (inside MULTI its real entry waits for EXEC)."""
        state = self.state
        if state.in_multi:
            state.queued.append(item)
            item = item if type(item) is int else as_entry(item).idx
        if state.reply_mode:
            item = as_entry(item)
            item.discard = True
            state.after_reply()
            self.refresh_fast()
        self.pending.append(item)

    def local(self, value: Value, idx: int) -> None:
        """A reply veil gives itself, in order behind whatever is in flight."""
        state = self.state
        if state.reply_mode:
            state.after_reply()
            self.refresh_fast()
            return
        pending = self.pending
        if not pending:
            self.out.append(encode_reply(value, state.protocol))
            return
        last = pending[-1]
        if type(last) is not Entry:
            last = pending[-1] = as_entry(last)
        assert isinstance(last, Entry)
        if last.after is None:
            last.after = []
        last.after.append(value)

    def flush_client(self) -> None:
        if self.out and self.transport is not None:
            out, self.out = self.out, []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _protocol_error(self, e: RespProtocolError) -> None:
        """As Redis does: the commands before the bad bytes run and are answered in order, then
        the protocol error, then the connection closes; nothing after the bad bytes is read."""
        self.counts[OTHER] += 1
        self.errors[OTHER] += 1
        data = self.req.forward()  # the commands parsed before the error
        if data:
            self.send_upstream(data)
        self.local(ErrorReply(e.resp_error), OTHER)
        self.flush_client()
        self._read_no_more()

    def _read_no_more(self) -> None:
        """Stops reading this client; the connection closes once what is in flight is answered."""
        self.last_read = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.drained().add_done_callback(lambda _: self.close())

    def pause_writing(self) -> None:  # the client reads slowly: stop reading replies
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self.server.collect(self)
        if self.upstream is not None:
            self.upstream.close()
        for task in (self.connecting, self.blocked):
            if task is not None:
                task.cancel()

    def drained(self) -> asyncio.Future[None]:
        """Resolves once every command in flight has been answered."""
        fut: asyncio.Future[None] = self.server.loop.create_future()
        if self.pending:
            self.drain_waiter = fut
        else:
            fut.set_result(None)
        return fut

    def _check_drained(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not self.pending:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # --- upstream side ---------------------------------------------------------------------

    def _connect(self) -> None:
        if self.connecting is None and self.upstream is None:
            self.connecting = asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        server = self.server
        try:
            upstream = await connect(server.url, self, server.upstream_tls)
        except (TimeoutError, OSError) as e:
            log.warning("upstream %s unreachable: %s", server.url, type(e).__name__)
            self.connecting = None
            self.queued.clear()
            self._fail_pending()
            return
        self.connecting = None
        if self.closing:
            upstream.close()
            return
        self.upstream, self.established = upstream, True
        if self.queued:
            queued, self.queued = self.queued, []
            upstream.write(b"".join(queued))

    def send_upstream(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data)
            return
        self.queued.append(data)
        self._connect()

    def upstream_paused(self, paused: bool) -> None:
        if self.transport is not None and not self.closing:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if self.closing:
            return
        self._fail_pending()
        self.close()

    def _fail_pending(self) -> None:
        """Every command in flight gets ``upstream unavailable``; local replies keep their order."""
        protocol, out = self.state.protocol, self.out
        while self.pending:
            entry = as_entry(self.pending.popleft())
            self.errors[entry.idx] += 1
            if not entry.discard:
                out.append(encode_reply(UNAVAILABLE, protocol))
            if entry.after:
                out += [encode_reply(v, protocol) for v in entry.after]
        self.state.pending_lost()
        self.flush_client()
        self._check_drained()

    def upstream_data(self, data: bytes) -> None:
        """Pairs each reply with its command; one client write per upstream read."""
        state = self.state
        self.cipher.db = state.db
        if (
            self.rep_idle
            and data
            and self.pending
            and not (state.protocol == 3 or state.pubsub_mode)
            and len(data) <= fast.MAX_CHUNK
            and self.chunk_replies(self, data)
        ):
            return
        rep = self.rep
        rep.feed(data)
        pending = self.pending
        popleft = pending.popleft
        nxt = rep.next
        special = state.protocol == 3 or state.pubsub_mode
        open_string = self.cipher.open_string
        count = 0
        try:
            while True:
                value = nxt()
                if value is NEED_DATA:
                    break
                count += 1
                if not special and pending:
                    entry = popleft()
                    kind = entry.__class__
                    if kind is int:
                        if value.__class__ is ErrorReply:
                            self._raw_error(value, entry)  # type: ignore[arg-type]
                        continue
                    if kind is tuple and value.__class__ is bytes:
                        try:
                            plain = open_string(entry[0], value, entry[1])  # type: ignore[index]
                        except (VeilError, NeedsReload):
                            pending.appendleft(entry)  # the general path words the error
                        else:
                            rep.replace(b"$%d\r\n%s\r\n" % (len(plain), plain))
                            continue
                    else:
                        pending.appendleft(entry)
                if self._general(value):
                    break
                special = state.protocol == 3 or state.pubsub_mode
        except RespProtocolError as e:
            log.error("upstream sent malformed RESP: %s", e.message)
            if self.upstream is not None:
                self.upstream.close()
            return
        self.rep_idle = rep.at_boundary()
        self.write_replies(rep.forward(), count)

    def write_replies(self, data: bytes, count: int) -> None:
        """One client write for a chunk of replies (and local replies queued behind them)."""
        if self.sample is None:
            self.done += count
        else:
            self._replied(count)
        if self.out:
            self.out.append(data)
            self.flush_client()
        elif data and self.transport is not None:
            self.transport.write(data)
        if self.drain_waiter is not None:
            self._check_drained()

    def _replied(self, count: int) -> None:
        self.done += count
        sample = self.sample
        if sample is not None and self.done >= sample[0]:
            self.server.durations.observe(self.server.loop.time() - sample[1])
            self.sample = None

    def _error(self, value: ErrorReply, idx: int) -> Value:
        """Counts an error reply; a cluster redirection never reaches the client."""
        self.errors[idx] += 1
        if value.message[:6].startswith((b"MOVED ", b"ASK ")):
            return REDIRECT
        return value

    def _raw_error(self, value: ErrorReply, idx: int) -> None:
        new = self._error(value, idx)
        if new is not value:
            self.rep.replace(encode_reply(new, self.state.protocol))

    def _general(self, value: Value) -> bool:
        """Any reply or push; True when processing must stop (a keyring reload)."""
        kind = type(value)
        if kind is Push or (kind is list and self.state.pubsub_mode):
            if session.on_pubsub(self, value):
                return False
        if not self.pending:
            self.rep.replace(b"")  # nothing to pair it with: never forward it out of order
            return False
        item = self.pending.popleft()
        if type(item) is int:
            if kind is ErrorReply:
                self._raw_error(value, item)  # type: ignore[arg-type]
            return False
        return self.reply(value, as_entry(item))

    def reply(self, value: Value, entry: Entry) -> bool:
        kind = entry.kind
        new = value
        if type(value) is ErrorReply:
            new = self._error(value, entry.idx)
            if kind == SESSION:
                new = self._apply(new, entry)
            elif kind == PUBSUB:
                self.state.pubsub_done()
        elif kind == TRANSFORM or kind == SESSION:
            try:
                new = self._apply(value, entry)
            except NeedsReload:
                self.rep.replace(b"")
                self._suspend(value, entry)
                return True
        if entry.discard:
            self.rep.replace(b"")
        elif new is not value:
            self.rep.replace(encode_reply(new, self.state.protocol))
        self.emit_after(entry)
        return False

    def _apply(self, value: Value, entry: Entry) -> Value:
        """The entry's reply function; its failures become an error in the reply's slot."""
        fn = entry.fn
        assert fn is not None
        try:
            return fn(self.cipher if entry.kind == TRANSFORM else self, value, entry.arg)
        except NeedsReload:
            raise
        except (VeilError, Refusal) as e:
            self.errors[entry.idx] += 1
            return ErrorReply(e.resp_error if isinstance(e, VeilError) else e.reply.message)

    def emit_after(self, entry: Entry) -> None:
        if entry.after:
            self.out.append(self.rep.forward())
            protocol = self.state.protocol
            self.out += [encode_reply(v, protocol) for v in entry.after]

    def _suspend(self, value: Value, entry: Entry) -> None:
        """Reload the keyring once (single flight), then answer this reply and go on."""
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

        async def resume() -> None:
            try:
                await self.server.runtime.reload()
            except Exception as e:  # the retry below then fails with the real error
                log.warning("keyring reload failed: %s", type(e).__name__)
            self.server.cipher.reset()
            try:
                new = self._apply(value, entry)
            except NeedsReload:
                self.errors[entry.idx] += 1
                new = ErrorReply(b"ERR veil: unknown key version (keyring reloaded)")
            if not entry.discard:
                self.out.append(encode_reply(new, self.state.protocol))
            if entry.after:
                self.out += [encode_reply(v, self.state.protocol) for v in entry.after]
            if upstream is not None and upstream.transport is not None:
                upstream.transport.resume_reading()
            self.upstream_data(b"")

        self.server.background(resume())

    # --- metrics ---------------------------------------------------------------------------

    def take_counts(self) -> tuple[list[int], list[int], list[int]] | None:
        """The per-row counters since the last call (None: nothing happened -- an idle
        connection costs the one-second tick three C-level scans, no allocation)."""
        if not (any(self.counts) or any(self.errors) or any(self.refused)):
            return None
        n = len(self.counts)
        out = self.counts, self.errors, self.refused
        self.counts, self.errors, self.refused = [0] * n, [0] * n, [0] * n
        return out
