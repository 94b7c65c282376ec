"""The policy table against a live redis-server, and what veil does with it (SPEC 6; STYLE 9).

* every row is walked against the server's ``COMMAND INFO`` and ``COMMAND DOCS``: arity, key
  specs, the ``movablekeys``/``pubsub``/``blocking`` flags, the version that added the command;
  a row the server does not know must say it belongs to a newer Redis (or a module it lacks);
  a command the server knows without a row is a coverage gap (veil would refuse it);
* the key specs find the same keys as the server's ``COMMAND GETKEYS``;
* a command the server knows but the table lacks is refused and never reaches Redis;
* ``VEIL COMMAND`` reports the table row for row;
* ``redis.mode = "observe"`` forwards what ``enforce`` refuses and counts ``would_refuse``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from proxy.crypto.envelope import MAGIC
from proxy.redis import dispatch, session
from proxy.redis._table import NOTES
from proxy.redis.policy import DESCRIPTIONS, Action, KeySpec, Row, Table, markdown
from tests.servers import RedisServer, VeilResp, start_veil_resp

TABLE = Table()


def raw(client: Any, *args: str) -> Any:
    """One command on a RESP3 connection, the reply as parsed (no redis-py callbacks)."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        client.connection_pool.release(conn)


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[dict[str, Any]]:
    """The live server's commands (subcommands flattened, ``container|sub``), docs, version."""
    client = redis.Redis(port=redis_server.port, protocol=3)
    info: dict[str, list[Any]] = {}

    def walk(entries: list[Any]) -> None:
        for entry in entries:
            info[entry[0].decode()] = entry
            walk(entry[9] if len(entry) > 9 else [])

    walk(raw(client, "COMMAND"))
    docs: dict[str, dict[bytes, Any]] = {}

    def walk_docs(mapping: dict[bytes, Any]) -> None:
        for name, doc in mapping.items():
            docs[name.decode()] = doc
            walk_docs(doc.get(b"subcommands") or {})

    walk_docs(raw(client, "COMMAND", "DOCS"))
    version = client.info("server")["redis_version"]
    client.close()
    yield {"info": info, "docs": docs, "version": version, "port": redis_server.port}


def major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def server_spec(spec: dict[bytes, Any]) -> KeySpec:
    """A ``COMMAND INFO`` key spec in the table's terms."""
    begin, find = spec[b"begin_search"], spec[b"find_keys"]
    if begin[b"type"] == b"unknown" or find[b"type"] == b"unknown":
        return KeySpec(unknown=True)
    b = begin[b"spec"]
    start: dict[str, Any] = (
        {"begin_index": b[b"index"]}
        if begin[b"type"] == b"index"
        else {"keyword": b[b"keyword"], "start": b[b"startfrom"]}
    )
    f = find[b"spec"]
    if find[b"type"] == b"range":
        return KeySpec(**start, last=f[b"lastkey"], step=f[b"keystep"], limit=f[b"limit"])
    return KeySpec(**start, keynum=f[b"keynumidx"], first=f[b"firstkey"], step=f[b"keystep"])


def movable(row: Row) -> bool:
    """Keys found by keyword, key count or not at all: Redis flags those ``movablekeys``."""
    return any(s.keyword or s.keynum >= 0 or s.unknown for s in row.specs)


def row_mismatches(row: Row, entry: list[Any], doc: dict[bytes, Any]) -> list[str]:
    name, arity, flags = row.name, entry[1], {f.decode() for f in entry[2]}
    out = []
    if arity != row.arity:
        out.append(f"{name}: arity {row.arity}, server {arity}")
    specs = tuple(server_spec(s) for s in entry[8])
    if specs != row.specs:
        ours = ",".join(s.short() for s in row.specs) or "-"
        out.append(f"{name}: keys {ours}, server {','.join(s.short() for s in specs) or '-'}")
    if movable(row) != ("movablekeys" in flags):
        out.append(f"{name}: movablekeys is {'movablekeys' in flags} on the server")
    if "pubsub" in flags and not (
        row.action is Action.VEIL or (row.action is Action.PASS and name.startswith("pubsub|"))
    ):
        out.append(f"{name}: a pub/sub command must be handled by veil, not {row.action.value}")
    if "blocking" in flags and row.action not in (Action.REFUSE, Action.DENY) and not row.transform:
        out.append(f"{name}: a blocking command whose reply nothing opens")
    since = doc.get(b"since", b"").decode()
    if "." not in name and since:  # modules report their own version, not Redis's
        expected = "7.0" if major_minor(since) < (7, 0) else ".".join(since.split(".")[:2])
        if row.since != expected:
            out.append(f"{name}: since {row.since}, COMMAND DOCS says {since}")
    return out


def consistency(row: Row) -> list[str]:
    """What a row must satisfy whatever the server: its action can be carried out."""
    out = []
    handlers = dispatch.HANDLERS.keys() | session.HANDLERS.keys()
    if row.transform and row.transform not in handlers:
        out.append(f"{row.name}: transform {row.transform!r} has no handler")
    if row.action in (Action.RANDOMIZED, Action.DETERMINISTIC, Action.EMULATE, Action.VEIL):
        if not row.transform and not row.subcommands:
            out.append(f"{row.name}: {row.action.value} without a transform")
    if row.action is Action.REFUSE and not row.specs:
        out.append(f"{row.name}: refused on encrypted keys, but it names no key")
    if row.action in (Action.REFUSE, Action.DENY, Action.EMULATE) and not row.note:
        out.append(f"{row.name}: {row.action.value} without a note (its refusal says why)")
    for spec in row.specs:
        if KeySpec.parse(spec.short()) != spec:
            out.append(f"{row.name}: key spec {spec.short()} does not round-trip")
    return out


def test_every_row_matches_the_live_server(server: dict[str, Any]) -> None:
    info, docs = server["info"], server["docs"]
    version = major_minor(server["version"])
    modules = {name.split(".")[0] for name in info if "." in name}
    problems: list[str] = []
    checked = 0
    for row in TABLE:
        problems += consistency(row)
        entry = info.get(row.name)
        if entry is None:
            newer = major_minor(row.since) > version
            absent_module = "." in row.name and row.name.split(".")[0] not in modules
            if not (newer or absent_module):
                problems.append(
                    f"{row.name}: row says since {row.since}, Redis {server['version']} lacks it"
                )
            continue
        if major_minor(row.since) > version:
            problems.append(f"{row.name}: row says since {row.since}, {server['version']} has it")
        problems += row_mismatches(row, entry, docs.get(row.name, {}))
        checked += 1
    noted = {name for names, _ in NOTES for name in names.split()}
    problems += [
        f"NOTES names {name!r}, which has no row" for name in sorted(noted - TABLE.rows.keys())
    ]
    gaps = sorted(set(info) - set(TABLE.rows))
    problems += [f"{name}: the server knows it, the table has no row" for name in gaps]
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems)
    assert checked == len(info)  # every command and subcommand of the server has its row


# (command, ...) whose keys the table's specs must find exactly as Redis does
GETKEYS_SAMPLES = [
    ("GET", "k"),
    ("MSET", "a", "1", "b", "2"),
    ("ZUNIONSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"),
    ("XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"),
    ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s1", ">"),
    ("GEORADIUS", "g", "0", "0", "1", "km", "STORE", "dst"),
    ("MIGRATE", "h", "6379", "k", "0", "1000"),
    ("LCS", "a", "b"),
    ("EVAL", "return 1", "2", "a", "b", "x"),
    ("BLMPOP", "0", "2", "l1", "l2", "LEFT"),
    ("SINTERCARD", "2", "a", "b", "LIMIT", "1"),
    ("OBJECT", "ENCODING", "k"),
    ("XGROUP", "CREATE", "s", "g", "$"),
    ("RENAME", "a", "b"),
    ("BLPOP", "a", "b", "0"),
    ("PFMERGE", "dst", "a", "b"),
]


def test_key_specs_find_the_keys_redis_finds(server: dict[str, Any]) -> None:
    client = redis.Redis(port=server["port"], protocol=3)
    wrong = []
    for sample in GETKEYS_SAMPLES:
        cmd = [a.encode() for a in sample]
        row = TABLE.lookup(cmd)
        assert row is not None, sample
        positions = row.key_positions(cmd)
        ours = None if positions is None else [cmd[i] for i in positions]
        theirs = raw(client, "COMMAND", "GETKEYS", *sample)
        if ours != theirs:
            wrong.append(f"{' '.join(sample)}: table {ours}, server {theirs}")
    client.close()
    assert not wrong, "\n".join(wrong)


# --- a command the server knows and the table lacks ------------------------------------------


def commandstats(upstream: RedisServer) -> dict[str, str]:
    out = {}
    for line in upstream.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line.partition(":")
            out[name] = stats
    return out


def test_a_command_without_a_row_is_refused_and_never_forwarded(
    tmp_path: Path, redis_server: RedisServer, server: dict[str, Any], monkeypatch: Any
) -> None:
    # the installed server's commands that the table lacks, plus one the table is made to lack
    gaps = sorted(set(server["docs"]) - set(TABLE.rows))
    victim, sub_victim = "expire", "object|freq"
    assert victim in server["docs"] and sub_victim in server["docs"]  # real server commands
    table = TABLE.without(victim, sub_victim)
    monkeypatch.setattr("proxy.redis.server.Table", lambda: table)
    redis_server.cli("FLUSHALL")
    veil = start_veil_resp(tmp_path, redis_server, plaintext=["plain:*"])
    c = veil.client()
    try:
        c.set("k", b"v")
        c.set("plain:k", b"v")
        before = commandstats(redis_server)
        for key in ("k", "plain:k"):  # refused whatever the key's policy
            with pytest.raises(redis.ResponseError) as e:
                c.execute_command("EXPIRE", key, "100")
            assert str(e.value) == "veil: command 'expire' is not in veil's policy table"
        with pytest.raises(
            redis.ResponseError, match=re.escape("'object|freq' is not in veil's policy")
        ):
            c.execute_command("OBJECT", "FREQ", "k")
        for name in gaps:  # none today (the test above proves it); refused if a server adds one
            with pytest.raises(redis.ResponseError, match="not in veil's policy table"):
                c.execute_command(*name.upper().split("|"), "k")
        assert c.get("k") == b"v" and c.ttl("k") == -1  # in sync; TTL went through its own row
        after = commandstats(redis_server)
        assert redis_server.cli("TTL", "k") == "-1" and redis_server.cli("TTL", "plain:k") == "-1"
        assert after.get("cmdstat_expire") == before.get("cmdstat_expire")
        assert after.get("cmdstat_object|freq") == before.get("cmdstat_object|freq")
        assert after["cmdstat_ttl"] != before.get("cmdstat_ttl")  # the stats do see veil's calls
    finally:
        c.close()
        veil.stop()


def test_docs_policy_table_is_generated_from_the_table() -> None:
    text = (Path(__file__).parents[2] / "docs" / "REDIS.md").read_text()
    begin, end = (
        "<!-- BEGIN POLICY TABLE (generated; do not edit) -->\n",
        "<!-- END POLICY TABLE -->",
    )
    assert begin in text and end in text
    shown = text.split(begin, 1)[1].split(end, 1)[0]
    assert shown == markdown(TABLE), (
        "docs/REDIS.md's policy table is stale: replace it with "
        "python3 -c 'from proxy.redis.policy import Table, markdown; print(markdown(Table()))'"
    )
    counts = {action: sum(r.action is action for r in TABLE) for action in Action}
    for action, n in counts.items():  # the action summary in section 2
        assert f"| {DESCRIPTIONS[action]} | {n} |" in text, (action, n)


# --- VEIL COMMAND ----------------------------------------------------------------------------


def expected_row(row: Row) -> list[Any]:
    return [
        row.name.encode(),
        row.arity,
        DESCRIPTIONS[row.action].encode(),
        ",".join(s.short() for s in row.specs).encode(),
        row.transform.encode(),
        row.since.encode(),
        row.note.encode(),
    ]


@pytest.fixture(scope="module")
def veil(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[VeilResp]:
    v = start_veil_resp(tmp_path_factory.mktemp("veil"), redis_server, plaintext=["plain:*"])
    yield v
    v.stop()


def test_veil_command_reports_every_row(veil: VeilResp) -> None:
    c = veil.client()
    try:
        rows = c.execute_command("VEIL", "COMMAND")
        assert rows == [expected_row(row) for row in TABLE]  # every row, sorted by name
        assert len(rows) == len(TABLE.rows)
        asked = c.execute_command("VEIL", "COMMAND", "GET", "client reply", "client|reply", "no")
        reply = TABLE.rows["client|reply"]
        assert asked == [expected_row(TABLE.rows["get"]), *[expected_row(reply)] * 2, None]
        # what a row says is what veil does
        veil.upstream.cli("FLUSHALL")
        c.set("k", b"1")
        assert TABLE.rows["incr"].action is Action.REFUSE
        with pytest.raises(redis.ResponseError, match=re.escape(TABLE.rows["incr"].note)):
            c.execute_command("INCR", "k")
        assert c.execute_command("INCR", "plain:n") == 1  # refused on encrypted keys only
        monitor = TABLE.rows["monitor"]
        assert monitor.action is Action.DENY
        with pytest.raises(
            redis.ResponseError, match=re.escape(f"MONITOR is refused ({monitor.note})")
        ):
            c.execute_command("MONITOR")
        assert c.get("k") == b"1"
    finally:
        c.close()


# --- observe mode ----------------------------------------------------------------------------


def requests_total(veil: VeilResp, command: str, outcome: str) -> float:
    async def render() -> bytes:
        return veil.app.ctx.metrics.render()  # type: ignore[attr-defined,no-any-return]

    text = veil.call(render()).decode()  # type: ignore[attr-defined]
    want = {"protocol": "resp", "command": command, "outcome": outcome}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "veil_requests_total" and sample.labels == want:
                return float(sample.value)
    return 0.0


def test_observe_mode_forwards_and_counts_would_refuse(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.cli("FLUSHALL")
    veil = start_veil_resp(tmp_path, redis_server, mode="observe", plaintext=["plain:*"])
    c, d = veil.client(), veil.direct()
    try:
        assert c.set("k", b"7") is True
        assert c.execute_command("INCR", "k") == 8  # refused under enforce: forwarded here
        assert c.setbit("bits", 0, 1) == 0
        assert c.get("k") == b"8"
        # SPEC 3: observe passes values through unencrypted (a staging rehearsal)
        assert d.get("k") == b"8" and d.get("bits") == b"\x80"
        assert c.set("s", b"secret") and d.get("s") == b"secret" and MAGIC not in d.get("s")
        assert c.execute_command("INCR", "plain:n") == 1  # allowed anyway: no would_refuse
        c.close()  # the connection's counters move into the metrics when it closes
        deadline = time.monotonic() + 5
        while requests_total(veil, "incr", "would_refuse") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert requests_total(veil, "incr", "would_refuse") == 1
        assert requests_total(veil, "incr", "ok") == 1  # plain:n
        assert requests_total(veil, "setbit", "would_refuse") == 1
        assert requests_total(veil, "incr", "refused") == 0
        assert requests_total(veil, "set", "ok") == 2
    finally:
        c.close()
        d.close()
        veil.stop()
