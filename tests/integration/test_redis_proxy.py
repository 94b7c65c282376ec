"""The RESP proxy end to end: redis-py (RESP2 and RESP3) through veil against a real Redis.

Every test also reads the upstream directly: encrypted keys hold envelopes (veil's magic, not
the plaintext), keys under ``plain:*`` hold exactly the client's bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from proxy.crypto.envelope import MAGIC
from tests.servers import RedisServer, VeilResp, start_veil_resp

# redis-py marks some commands veil must still serve (SETNX, SUBSTR, RPOPLPUSH ...) deprecated
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SETTINGS: dict[str, Any] = {
    "plaintext": ["plain:*", "counter:*"],
    "namespaces": [{"pattern": "t1:*", "name": "t1"}, {"pattern": "t2:*", "name": "t2"}],
    "deterministic_lists": ["dl:*"],
    "deterministic_fields": ["df:*"],
    "encrypt_channels": ["enc:*"],
}


@pytest.fixture(scope="module")
def veil(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[VeilResp]:
    v = start_veil_resp(tmp_path_factory.mktemp("veil"), redis_server, **SETTINGS)
    yield v
    v.stop()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def c(veil: VeilResp, request: pytest.FixtureRequest) -> Iterator[Any]:
    veil.upstream.cli("FLUSHALL")
    client = veil.client(protocol=request.param)
    yield client
    client.close()


@pytest.fixture
def d(veil: VeilResp) -> Iterator[Any]:
    client = veil.direct()
    yield client
    client.close()


def pairs(items: Any) -> list[tuple[bytes, float]]:
    """Scored members as tuples (redis-py gives tuples in RESP2, lists in RESP3)."""
    if items and not isinstance(items[0], (list, tuple)):
        items = list(zip(items[0::2], items[1::2], strict=True))
    return [(m, float(s)) for m, s in items]


def sealed(raw: Any, plain: bytes) -> None:
    """What Redis holds is an envelope, not the plaintext."""
    assert isinstance(raw, bytes), raw
    assert raw[:3] == MAGIC and raw != plain, raw
    if len(plain) >= 4:  # a short plaintext may occur in random bytes by chance
        assert plain not in raw, raw


# --- strings ---------------------------------------------------------------------------------


def test_strings_round_trip_and_are_sealed_upstream(c: Any, d: Any) -> None:
    assert c.set("s", b"hello") is True
    assert c.get("s") == b"hello"
    sealed(d.get("s"), b"hello")
    assert c.set("s", b"v2", get=True) == b"hello"
    assert c.set("s", b"x", nx=True) is None
    assert c.set("s", b"v3", xx=True, ex=100) is True
    assert 0 < c.ttl("s") <= 100
    assert c.set("s", b"v4", keepttl=True) is True and c.ttl("s") > 0
    assert c.getset("s", b"v5") == b"v4"
    assert c.getex("s", persist=True) == b"v5" and c.ttl("s") == -1
    assert c.setnx("n", b"1") is True and c.setnx("n", b"2") is False
    assert c.execute_command("SETEX", "e", 50, b"ex") and c.execute_command(
        "PSETEX", "p", 50000, b"px"
    )
    assert c.mset({"m1": b"a", "m2": b"b", "plain:m3": b"c"}) is True
    assert c.msetnx({"m4": b"d", "m5": b"e"}) is True
    assert c.mget("m1", "m2", "plain:m3", "missing", "m4") == [b"a", b"b", b"c", None, b"d"]
    for key, plain in [("n", b"1"), ("e", b"ex"), ("p", b"px"), ("m1", b"a"), ("m5", b"e")]:
        sealed(d.get(key), plain)
    assert d.get("plain:m3") == b"c"
    assert c.getdel("m1") == b"a" and c.get("m1") is None


def test_plaintext_patterns_pass_byte_for_byte(c: Any, d: Any) -> None:
    value = bytes(range(256)) * 3
    assert c.set("plain:bin", value)
    assert d.get("plain:bin") == value
    assert c.incr("counter:x") == 1 and c.incrby("counter:x", 5) == 6
    assert d.get("counter:x") == b"6"
    assert c.append("plain:bin", b"!") == len(value) + 1
    d.set("plain:direct", b"written directly")
    assert c.get("plain:direct") == b"written directly"


def test_read_only_emulations(c: Any, d: Any) -> None:
    c.set("s", b"Hello, World")
    assert c.strlen("s") == 12 and c.strlen("nope") == 0
    assert c.getrange("s", 0, 4) == b"Hello" and c.getrange("s", -5, -1) == b"World"
    assert c.substr("s", 7, 100) == b"World"
    assert c.getbit("s", 1) == 1 and c.getbit("s", 0) == 0 and c.getbit("s", 10_000) == 0
    assert c.bitcount("s") == sum(bin(b).count("1") for b in b"Hello, World")
    assert c.bitpos("s", 1) == 1
    c.set("a", b"ohmytext")
    c.set("b", b"mynewtext")
    assert c.lcs("a", "b") == b"mytext"
    assert c.lcs("a", "b", len=True) == 6
    c.hset("h", "f", b"twelve chars")
    assert c.hstrlen("h", "f") == 12


def test_read_modify_write_emulation_keeps_ttl_and_seals(c: Any, d: Any) -> None:
    assert c.append("s", b"abc") == 3
    c.expire("s", 100)
    assert c.append("s", b"def") == 6 and c.get("s") == b"abcdef"
    assert c.ttl("s") > 0
    assert c.setrange("s", 8, b"XY") == 10
    assert c.get("s") == b"abcdef\0\0XY"
    sealed(d.get("s"), b"abcdef")
    pipe = c.pipeline(transaction=False)
    pipe.set("p", b"1").append("p", b"2").get("p").append("p", b"3").get("p")
    assert pipe.execute() == [True, 2, b"12", 3, b"123"]


def test_refusals_name_the_command_and_key(c: Any, d: Any) -> None:
    c.set("s", b"1")
    with pytest.raises(redis.ResponseError, match="INCRBY is not supported on encrypted key 's'"):
        c.incr("s")
    with pytest.raises(redis.ResponseError, match="not supported on encrypted key"):
        c.setbit("s", 1, 1)
    with pytest.raises(redis.ResponseError, match="reserved for veil"):
        c.get("__veil__:keyring")
    with pytest.raises(redis.ResponseError, match="is refused"):
        c.execute_command("MONITOR")
    with pytest.raises(redis.ResponseError, match="FLUSHALL is refused"):
        c.flushall()
    with pytest.raises(redis.ResponseError, match="not in veil's policy table"):
        c.execute_command("NOSUCHCOMMAND", "x")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        c.execute_command("GET")
    assert c.get("s") == b"1"  # the connection is still in sync


# --- hashes ----------------------------------------------------------------------------------


def test_hashes(c: Any, d: Any) -> None:
    assert c.hset("h", mapping={"f1": b"v1", "f2": b"v2"}) == 2
    assert c.hsetnx("h", "f3", b"v3") == 1 and c.hsetnx("h", "f3", b"zz") == 0
    assert c.hget("h", "f1") == b"v1" and c.hget("h", "nope") is None
    assert c.hmget("h", ["f1", "nope", "f3"]) == [b"v1", None, b"v3"]
    assert c.hgetall("h") == {b"f1": b"v1", b"f2": b"v2", b"f3": b"v3"}
    assert sorted(c.hvals("h")) == [b"v1", b"v2", b"v3"]
    assert sorted(c.hkeys("h")) == [b"f1", b"f2", b"f3"]
    assert c.hexists("h", "f2") and c.hlen("h") == 3
    _, found = c.hscan("h", 0, count=100)
    assert found == {b"f1": b"v1", b"f2": b"v2", b"f3": b"v3"}
    assert c.hrandfield("h") in (b"f1", b"f2", b"f3")
    pairs = c.hrandfield("h", 2, withvalues=True)
    assert len(pairs) in (2, 4)
    assert sorted(d.hkeys("h")) == [b"f1", b"f2", b"f3"]  # field names stay plaintext
    sealed(d.hget("h", "f1"), b"v1")
    with pytest.raises(redis.ResponseError, match="not supported on encrypted key"):
        c.hincrby("h", "n", 1)
    # a value copied to another field does not open: the field name is in its context
    d.hset("h", "f2", d.hget("h", "f1"))
    with pytest.raises(redis.ResponseError, match="decryption failed"):
        c.hget("h", "f2")


def test_deterministic_field_names(c: Any, d: Any) -> None:
    c.hset("df:h", mapping={"name": b"alice", "city": b"paris"})
    assert c.hget("df:h", "name") == b"alice"
    assert c.hgetall("df:h") == {b"name": b"alice", b"city": b"paris"}
    assert sorted(c.hkeys("df:h")) == [b"city", b"name"]
    assert c.hexists("df:h", "city") and not c.hexists("df:h", "zip")
    stored = d.hkeys("df:h")
    assert b"name" not in stored and all(f[:3] == MAGIC for f in stored)
    assert c.hdel("df:h", "city") == 1 and c.hkeys("df:h") == [b"name"]


# --- lists -----------------------------------------------------------------------------------


def test_lists(c: Any, d: Any) -> None:
    assert c.rpush("l", b"a", b"b", b"c") == 3 and c.lpush("l", b"z") == 4
    assert c.lrange("l", 0, -1) == [b"z", b"a", b"b", b"c"]
    assert c.lindex("l", 1) == b"a" and c.lset("l", 1, b"A")
    assert c.lpop("l") == b"z" and c.rpop("l", 2) == [b"c", b"b"]
    sealed(d.lindex("l", 0), b"A")
    c.rpush("src", b"1", b"2")
    assert c.lmove("src", "dst", "LEFT", "RIGHT") == b"1"
    assert c.rpoplpush("src", "dst") == b"2"
    assert c.lrange("dst", 0, -1) == [b"2", b"1"]
    assert c.lmpop(2, "nothing", "dst", direction="LEFT", count=5) == [b"dst", [b"2", b"1"]]
    with pytest.raises(redis.ResponseError, match=r"needs redis\.deterministic_lists"):
        c.lrem("l", 0, b"A")
    with pytest.raises(redis.ResponseError, match="different encryption policies"):
        c.lmove("l", "plain:l", "LEFT", "LEFT")


def test_deterministic_lists(c: Any, d: Any) -> None:
    c.rpush("dl:q", b"a", b"b", b"a", b"c")
    assert c.lpos("dl:q", b"a") == 0 and c.lpos("dl:q", b"a", rank=2) == 2
    assert c.lrem("dl:q", 0, b"a") == 2
    assert c.linsert("dl:q", "BEFORE", b"c", b"x") == 3
    assert c.lrange("dl:q", 0, -1) == [b"b", b"x", b"c"]
    raw = d.lrange("dl:q", 0, -1)
    assert all(r[:3] == MAGIC for r in raw)
    c.rpush("dl:q2", b"b")
    assert d.lindex("dl:q2", 0) == raw[0]  # equal plaintexts, equal envelopes


# --- sets, sorted sets, geo, hyperloglog -----------------------------------------------------


def test_sets(c: Any, d: Any) -> None:
    assert c.sadd("s1", b"a", b"b", b"c") == 3 and c.sadd("s1", b"a") == 0
    c.sadd("s2", b"b", b"c", b"d")
    assert c.smembers("s1") == {b"a", b"b", b"c"}
    assert c.sismember("s1", b"a") and not c.sismember("s1", b"z")
    assert c.smismember("s1", [b"a", b"z"]) == [1, 0]
    assert c.sinter("s1", "s2") == {b"b", b"c"}
    assert c.sunion("s1", "s2") == {b"a", b"b", b"c", b"d"}
    assert c.sdiff("s1", "s2") == {b"a"}
    assert c.sinterstore("s3", ["s1", "s2"]) == 2 and c.smembers("s3") == {b"b", b"c"}
    assert c.sintercard(2, ["s1", "s2"]) == 2
    assert c.smove("s1", "s2", b"a") and c.sismember("s2", b"a")
    assert c.srem("s2", b"a") == 1
    assert c.spop("s3") in (b"b", b"c") and c.srandmember("s3") in (b"b", b"c")
    _, members = c.sscan("s2")
    assert set(members) == {b"b", b"c", b"d"}
    assert all(m[:3] == MAGIC for m in d.smembers("s1"))
    with pytest.raises(redis.ResponseError, match="different encryption policies"):
        c.sunion("s1", "t1:s")
    with pytest.raises(redis.ResponseError, match="MATCH"):
        c.sscan("s2", match="b*")


def test_sorted_sets(c: Any, d: Any) -> None:
    # ties are ordered by the stored (encrypted) member: the test avoids equal scores
    assert c.zadd("z", {b"a": 1, b"b": 2, b"c": 3}) == 3
    assert c.zadd("z", {b"a": 5}, xx=True, ch=True) == 1
    assert c.zscore("z", b"a") == 5.0 and c.zrank("z", b"a") == 2
    assert c.zincrby("z", 2, b"b") == 4.0
    assert c.zrange("z", 0, -1) == [b"c", b"b", b"a"]
    assert pairs(c.zrange("z", 0, -1, withscores=True)) == [(b"c", 3.0), (b"b", 4.0), (b"a", 5.0)]
    assert c.zrangebyscore("z", 4.5, 10) == [b"a"]
    assert pairs(c.zrevrange("z", 0, 0, withscores=True)) == [(b"a", 5.0)]
    assert c.zmscore("z", [b"a", b"x"]) == [5.0, None]
    assert c.zrandmember("z") in (b"a", b"b", b"c")
    assert pairs(c.zpopmin("z")) == [(b"c", 3.0)]
    c.zadd("z2", {b"a": 1, b"q": 2})
    union = pairs(c.zunion(["z", "z2"], withscores=True))
    assert union == [(b"q", 2.0), (b"b", 4.0), (b"a", 6.0)]
    assert c.zinterstore("zi", ["z", "z2"]) == 1 and c.zrange("zi", 0, -1) == [b"a"]
    assert c.zrangestore("zr", "z", 0, -1) == 2
    assert tuple(c.bzpopmax("z", timeout=1)) == (b"z", b"a", 5.0)
    assert sorted(pairs(c.zscan("z2")[1])) == [(b"a", 1.0), (b"q", 2.0)]
    assert all(m[:3] == MAGIC for m in d.zrange("z2", 0, -1))
    with pytest.raises(redis.ResponseError, match="not supported on encrypted key"):
        c.zrangebylex("z", "-", "+")


def test_geo_and_hyperloglog(c: Any, d: Any) -> None:
    assert c.geoadd("g", (13.361389, 38.115556, b"Palermo", 15.087269, 37.502669, b"Catania")) == 2
    assert round(c.geodist("g", b"Palermo", b"Catania", unit="km")) == 166
    assert c.geosearch("g", longitude=15, latitude=37, radius=200, unit="km", sort="ASC") == [
        b"Catania",
        b"Palermo",
    ]
    assert c.georadiusbymember("g", b"Palermo", 10, unit="km") == [b"Palermo"]
    assert c.geopos("g", b"Palermo")[0] is not None
    assert c.pfadd("hll", b"a", b"b", b"c") == 1 and c.pfadd("hll", b"a") == 0
    assert c.pfcount("hll") == 3
    c.pfadd("hll2", b"c", b"d")
    assert c.pfmerge("hll3", "hll", "hll2") and c.pfcount("hll3") == 4


# --- streams ---------------------------------------------------------------------------------


def test_streams(c: Any, d: Any) -> None:
    first = c.xadd("st", {"temp": b"21", "unit": b"C"})
    c.xadd("st", {"temp": b"22"}, maxlen=100, approximate=True)
    entries = c.xrange("st")
    assert entries[0] == (first, {b"temp": b"21", b"unit": b"C"})
    assert c.xrevrange("st", count=1)[0][1] == {b"temp": b"22"}
    assert c.xread({"st": 0}, count=1)  # shape differs per protocol; values decrypted below
    read = c.xread({"st": 0})
    values = read[b"st"][0] if isinstance(read, dict) else read[0][1]
    assert values[0][1] == {b"temp": b"21", b"unit": b"C"}
    c.xgroup_create("st", "g", id="0")
    got = c.xreadgroup("g", "alice", {"st": ">"}, count=1)
    group_entries = got[b"st"][0] if isinstance(got, dict) else got[0][1]
    assert group_entries[0][1] == {b"temp": b"21", b"unit": b"C"}
    claimed = c.xclaim("st", "g", "bob", 0, [first])
    assert claimed[0][1] == {b"temp": b"21", b"unit": b"C"}
    auto = c.xautoclaim("st", "g", "carol", 0, "0-0")
    assert auto[1][0][1] == {b"temp": b"21", b"unit": b"C"}
    info = c.xinfo_stream("st")
    assert info["first-entry"][1] == {b"temp": b"21", b"unit": b"C"}
    raw = d.xrange("st")[0][1]
    assert set(raw) == {b"temp", b"unit"}
    sealed(raw[b"temp"], b"21")


# --- keyspace --------------------------------------------------------------------------------


def test_keyspace_moves_within_and_across_policies(c: Any, d: Any) -> None:
    c.set("a", b"1")
    assert c.rename("a", "b") and c.get("b") == b"1"
    assert c.copy("b", "c") and c.get("c") == b"1"
    assert c.exists("b", "c") == 2 and c.type("b") == b"string"
    assert c.move("c", 1) and c.execute_command("SELECT", 1)
    assert c.get("c") == b"1"
    c.execute_command("SELECT", 0)
    with pytest.raises(redis.ResponseError, match="different encryption policies"):
        c.rename("b", "plain:b")
    with pytest.raises(redis.ResponseError, match="different encryption policies"):
        c.copy("b", "t1:b")
    with pytest.raises(redis.ResponseError, match="not supported on encrypted key"):
        c.dump("b")
    c.set("plain:x", b"1")
    assert c.dump("plain:x") is not None
    assert c.keys("*") and all(not k.startswith(b"__veil__") for k in c.keys("*"))


def test_reserved_keys_are_hidden_and_refused(c: Any, d: Any) -> None:
    d.set("__veil__:secret", b"keyring")
    c.set("visible", b"1")
    assert c.keys("*") == [b"visible"]
    assert c.scan(0, count=100)[1] == [b"visible"]
    with pytest.raises(redis.ResponseError, match="reserved"):
        c.delete("visible", "__veil__:secret")
    assert d.exists("__veil__:secret") == 1


def test_namespaces_bind_values(c: Any, d: Any) -> None:
    c.set("t1:a", b"tenant one")
    d.set("t2:a", d.get("t1:a"))  # ciphertext copied into another namespace
    with pytest.raises(redis.ResponseError, match="decryption failed"):
        c.get("t2:a")


# --- pipelines and transactions --------------------------------------------------------------


def test_pipeline_keeps_order_with_refusals_in_between(c: Any) -> None:
    pipe = c.pipeline(transaction=False)
    pipe.set("a", b"1").incr("a").get("a").execute_command("VEIL", "COMMAND", "get").get("x")
    results = pipe.execute(raise_on_error=False)
    assert results[0] is True and isinstance(results[1], redis.ResponseError)
    assert results[2] == b"1" and results[3][0][0] == b"get" and results[4] is None


def test_transactions(c: Any, d: Any) -> None:
    pipe = c.pipeline(transaction=True)
    pipe.set("a", b"1").get("a").hset("h", "f", b"v").hgetall("h").sadd("s", b"m").smembers("s")
    assert pipe.execute() == [True, b"1", 1, {b"f": b"v"}, 1, {b"m"}]
    sealed(d.get("a"), b"1")
    # a command veil refuses inside MULTI aborts EXEC as a queueing error does in Redis
    pipe = c.pipeline(transaction=True)
    pipe.set("b", b"2").incr("a")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    assert c.get("b") is None
    pipe = c.pipeline(transaction=True)
    pipe.append("a", b"x")
    with pytest.raises(redis.ResponseError, match="cannot be emulated inside MULTI"):
        pipe.execute()
    assert c.get("a") == b"1"


def test_watch_aborts_on_concurrent_write(c: Any, veil: VeilResp) -> None:
    c.set("w", b"1")
    other = veil.client()
    with c.pipeline() as pipe:
        pipe.watch("w")
        assert pipe.get("w") == b"1"
        other.set("w", b"2")
        pipe.multi()
        pipe.set("w", b"3")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert c.get("w") == b"2"


def raw_exchange(port: int, data: bytes, expect: int) -> bytes:
    """Sends ``data``, reads until ``expect`` CRLF-terminated lines or a quiet 1 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        s.settimeout(1)
        try:
            while out.count(b"\r\n") < expect:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except TimeoutError:
            pass
        return out


def test_client_reply_off_and_skip_never_misalign(veil: VeilResp) -> None:
    veil.upstream.cli("FLUSHALL")
    data = (
        b"CLIENT REPLY OFF\r\nSET a 1\r\nGET a\r\nCLIENT REPLY ON\r\n"
        b"GET a\r\nCLIENT REPLY SKIP\r\nGET a\r\nINCR a\r\nPING\r\n"
    )
    out = raw_exchange(veil.port, data, 5)
    assert out.startswith(b"+OK\r\n$1\r\n1\r\n-ERR veil: INCR is not supported")
    assert out.endswith(b"+PONG\r\n")


def test_veil_command_reports_the_table(c: Any) -> None:
    rows = c.execute_command("VEIL", "COMMAND")
    names = {r[0] for r in rows}
    assert {b"get", b"client|reply", b"zadd"} <= names
    assert c.execute_command("VEIL", "COMMAND", "incr")[0][2] == b"refuse on encrypted keys"
    assert c.execute_command("VEIL", "COMMAND", "nope") == [None]
