"""From a parsed command to a ``Plan``: table lookup, arity, keys, guards, then the transform.

``HANDLERS`` maps the table's transform names to functions (``transform``, ``_collections``,
``_streams``, ``_emulated``); ``SESSION`` lists the names the connection handles itself
(connection state: HELLO, AUTH, SELECT, MULTI/EXEC, CLIENT REPLY, pub/sub, side-connection
emulations). A test checks that every name in the table is in one of the two.

``Dispatcher.plan`` is the one place where the policy is applied (STYLE 2.1 step 2):

1. unknown command or subcommand -> refused; wrong arity -> Redis's own error;
2. the row's key specs give the keys; a reserved key (``__veil__:*``) -> refused;
3. ``deny`` -> refused; ``veil`` rows always run their transform (guards, filters);
4. every key plaintext -> the command and its reply pass byte for byte;
5. ``refuse`` -> refused on the first encrypted key; ``pass`` without transform -> forwarded;
6. otherwise the transform rewrites the command and names the reply function.
"""

from __future__ import annotations

from typing import Final

from proxy.redis import _collections as coll
from proxy.redis import _emulated as emul
from proxy.redis import _rotation as rot
from proxy.redis import _streams as streams
from proxy.redis import transform as t
from proxy.redis.cipher import Cipher, KeyInfo
from proxy.redis.policy import (
    Action,
    Refusal,
    Row,
    Table,
    arity_error,
    denied,
    not_supported,
    printable,
    unknown,
)

HANDLERS: Final[dict[str, t.Handler]] = {
    # strings
    "get": t.get,
    "set": t.set_,
    "value2": t.value_at(2, True),
    "value3": t.value_at(3, False),
    "getdel": t.get,
    "mset": t.mset,
    "msetex": t.mset,
    "mget": t.mget,
    "strlen": emul.strlen,
    "getrange": emul.getrange,
    "lcs": emul.lcs,
    "getbit": emul.getbit,
    "bitcount": emul.bitcount,
    "bitpos": emul.bitpos,
    "bitfield_ro": emul.bitfield_ro,
    # hashes
    "hset": t.hset,
    "hsetnx": t.hsetnx,
    "hget": t.hget,
    "hmget": t.hmget,
    "hgetall": t.hgetall,
    "hvals": t.hvals,
    "hkeys": t.hkeys,
    "hfields": t.hfields,
    "hfieldsn": t.hfieldsn,
    "hstrlen": emul.hstrlen,
    "hrandfield": t.hrandfield,
    "hscan": t.hscan,
    "hgetdel": t.hgetdel,
    "hsetex": t.hsetex,
    # lists
    "push": coll.push,
    "pop": coll.elements,
    "lrange": coll.elements,
    "lindex": coll.elements,
    "lset": coll.lset,
    "linsert": coll.linsert,
    "lrem": coll.lrem,
    "lpos": coll.lpos,
    "lmove": coll.lmove,
    "lmovem": coll.lmove,
    "lmpop": coll.lmpop,
    "blpop": coll.blpop,
    # sets
    "members2": coll.members2,
    "member2": coll.member_at(2),
    "smembers": coll.members,
    "spop": coll.members,
    "setalgebra": coll.setalgebra,
    "setstore": coll.samens,
    "setcard": coll.samens,
    "smove": coll.smove,
    "sscan": coll.sscan,
    # sorted sets
    "zadd": coll.zadd,
    "zincrby": coll.member_at(3),
    "zmember": coll.member_at(2),
    "zrange": coll.zrange,
    "zrangeby": coll.zrange,
    "zrangestore": coll.zrangestore,
    "zpop": coll.zpop,
    "bzpop": coll.bzpop,
    "zmpop": coll.zmpop,
    "zrandmember": coll.zrandmember,
    "zalgebra": coll.zalgebra,
    "zstore": coll.samens,
    "zscan": coll.zscan,
    # geo, hyperloglog
    "geoadd": coll.geoadd,
    "geodist": coll.geodist,
    "georadius": coll.georadius,
    "georadiusbymember": coll.georadiusbymember,
    "geosearch": coll.geosearch,
    "geosearchstore": coll.geosearch,
    "samens": coll.samens,
    # streams
    "xadd": streams.xadd,
    "xrange": streams.xrange,
    "xread": streams.xread,
    "xclaim": streams.xclaim,
    "xautoclaim": streams.xautoclaim,
    "xinfo_stream": streams.xinfo_stream,
    # keyspace, guards, scripts, pub/sub
    "move": t.move,
    "sort": t.sort,
    "scan": t.scan,
    "randomkey": t.randomkey,
    "swapdb": t.swapdb,
    "flush": t.flush,
    "eval": t.eval_,
    "evalsha": t.evalsha,
    "publish": t.publish,
    "slowlog": t.slowlog,
}
# hash field names under redis.deterministic_fields: looked up under every index version while
# an index rotation is in progress (each wrapper checks the flag, then calls the one above)
HANDLERS.update(rot.HASH_HANDLERS)

# handled by the connection (state, side connections); see server.py / session.py
SESSION: Final = frozenset(
    {"hello", "auth", "select", "reset", "multi", "exec", "discard", "client_reply",
     "subscribe", "append", "setrange"}
)  # fmt: skip
# transforms whose "keys" are channels (SPUBLISH/SSUBSCRIBE have shard-channel key specs)
CHANNELS: Final = frozenset({"subscribe", "publish"})


class Dispatcher:
    """Applies the policy table to one command (pure: no I/O, no connection state)."""

    def __init__(self, table: Table, cipher: Cipher) -> None:
        self.table = table
        self.cipher = cipher

    def row(self, cmd: list[bytes]) -> Row:
        """The command's row, its arity checked.

        Raises:
            Refusal: unknown command or subcommand, wrong number of arguments.
        """
        row = self.table.lookup(cmd)
        if row is None:
            raise unknown(cmd)
        if row.subcommands:
            if len(cmd) < 2:
                raise arity_error(row)
            name = f"{row.name}|{printable(cmd[1]).lower()}".encode()
            raise unknown([name])
        if not row.arity_ok(len(cmd)):
            raise arity_error(row)
        return row

    def keys(self, row: Row, cmd: list[bytes]) -> tuple[list[int], list[KeyInfo | None]]:
        """Key positions and their classification (reserved keys refused)."""
        if row.transform in CHANNELS:
            return [], []
        positions = row.key_positions(cmd)
        if positions is None:
            raise Refusal(f"ERR veil: cannot find the keys of '{row.name}' (syntax error?)")
        key = self.cipher.key
        return positions, [key(cmd[p]) for p in positions]

    def plan(self, row: Row, cmd: list[bytes]) -> t.Plan:
        """What to send and how to treat the reply (steps 2-6 of the module docstring)."""
        positions, infos = self.keys(row, cmd)
        action = row.action
        if action is Action.DENY:
            raise denied(row)
        if action is Action.VEIL:
            handler = HANDLERS.get(row.transform)
            return t.PASS if handler is None else handler(self.cipher, cmd, positions, infos)
        if not any(info is not None for info in infos):
            return t.PASS
        if action is Action.REFUSE:
            raise not_supported(cmd, t.first_encrypted(cmd, positions, infos), row.note)
        if not row.transform:
            return t.PASS
        return HANDLERS[row.transform](self.cipher, cmd, positions, infos)
