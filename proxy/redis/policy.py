"""The RESP command policy: an allowlist with one row per command (SPEC 6; STYLE habit 9).

Theory of operation
===================
``_table.TABLE`` holds a row for every command and subcommand of Redis 7.0 to 8.10 (container
commands such as ``CLIENT`` have a row of their own and one per subcommand, named as
``COMMAND`` names them: ``client|reply``). A row says:

* **arity** -- Redis's (negative: at least that many arguments, the name included); veil checks
  it first and answers with Redis's own wording, so a short command can never make veil look
  for a value that is not there;
* **key specs** -- Redis's own ``begin_search``/``find_keys`` specs (``KeySpec``), so veil finds
  exactly the keys Redis (and its ACLs) will touch; the test walks every row against a live
  server's ``COMMAND INFO``;
* **action** -- what happens when a key is under an ``encrypt`` pattern (``Action``); commands
  whose keys are all under ``plaintext`` patterns pass through byte for byte, except ``deny``;
* **transform** -- the name of the function in ``transform.HANDLERS`` that rewrites the request
  and the reply (``-``: none).

A command without a row is refused (``unknown()``), whatever the upstream knows: an upgrade of
Redis can add commands that compute on values, and those must not reach ciphertext unnoticed.
``VEIL COMMAND [name]`` reports the table (``veil_command_reply``); docs/REDIS.md is generated
from it (``markdown()``) and a test keeps the two in sync.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from protocols.resp import ErrorReply, Value
from proxy.redis._table import NOTES, TABLE


class Action(enum.Enum):
    """What a row does to a command that touches an encrypted key."""

    PASS = "pass"  # no value touched (or keys only): forwarded unchanged
    RANDOMIZED = "rand"  # values sealed and opened with randomized envelopes
    DETERMINISTIC = "det"  # members sealed deterministically (equality survives)
    EMULATE = "emul"  # veil computes the answer from the plaintext
    REFUSE = "refuse"  # refused on encrypted keys, passed through on plaintext keys
    DENY = "deny"  # refused whatever the keys
    VEIL = "veil"  # handled by veil itself (connection state, pub/sub, scripts, guards)


DESCRIPTIONS: Final = {
    Action.PASS: "pass through",
    Action.RANDOMIZED: "encrypt randomized",
    Action.DETERMINISTIC: "encrypt deterministic",
    Action.EMULATE: "emulate",
    Action.REFUSE: "refuse on encrypted keys",
    Action.DENY: "refuse",
    Action.VEIL: "veil",
}

_SPEC_RE: Final = re.compile(
    r"(?:i(?P<index>\d+)|k(?P<keyword>[A-Z]+)@(?P<start>-?\d+))"
    r"(?:\.\.(?P<last>-?\d+)(?:/(?P<step>\d+))?(?:%(?P<limit>\d+))?"
    r"|#(?P<keynum>\d+)\+(?P<first>\d+)(?:/(?P<kstep>\d+))?)?"
)


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One Redis key spec: where the search begins and how keys are found from there.

    Short form (the table's): ``i1`` (index 1, one key), ``i1..-1`` (index 1 to the last
    argument), ``i1..-1/2`` (every second), ``i2#0+1`` (a key count at index 2, keys after it),
    ``kSTREAMS@1..-1/1%2`` (after the keyword ``STREAMS`` searched from argument 1, the first
    half of what follows), ``?`` (Redis says "unknown": the transform finds those keys).
    """

    begin_index: int = 0
    keyword: bytes = b""
    start: int = 0
    last: int = 0
    step: int = 1
    limit: int = 0
    keynum: int = -1  # keynum index relative to the begin position; -1: a range spec
    first: int = 1
    unknown: bool = False

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        if text == "??":
            return cls(unknown=True)
        m = _SPEC_RE.fullmatch(text)
        if m is None:
            raise ValueError(f"bad key spec {text!r}")
        g = m.groupdict()
        begin = int(g["index"] or 0)
        keyword = (g["keyword"] or "").encode()
        start = int(g["start"] or 0)
        if g["keynum"] is not None:
            first, step = int(g["first"]), int(g["kstep"] or 1)
            return cls(begin, keyword, start, keynum=int(g["keynum"]), first=first, step=step)
        last, step, limit = int(g["last"] or 0), int(g["step"] or 1), int(g["limit"] or 0)
        return cls(begin, keyword, start, last=last, step=step, limit=limit)

    def short(self) -> str:
        """The table's short form (``parse(short())`` round-trips)."""
        if self.unknown:
            return "??"
        begin = f"k{self.keyword.decode()}@{self.start}" if self.keyword else f"i{self.begin_index}"
        if self.keynum >= 0:
            return (
                begin + f"#{self.keynum}+{self.first}" + (f"/{self.step}" if self.step != 1 else "")
            )
        if (self.last, self.step, self.limit) == (0, 1, 0):
            return begin
        out = f"{begin}..{self.last}"
        if self.step != 1 or self.limit:
            out += f"/{self.step}"
        return out + (f"%{self.limit}" if self.limit else "")

    def positions(self, cmd: Sequence[bytes]) -> list[int] | None:
        """Argument indices of the keys in ``cmd`` (Redis ``getKeysUsingKeySpecs``).

        Returns:
            The indices (possibly empty), or None when the arguments contradict the spec (a bad
            key count, a missing keyword): Redis refuses such a command, and so does veil.
        """
        argc = len(cmd)
        if self.unknown:
            return []
        if self.keyword:
            first = self._after_keyword(cmd)
            if first is None:
                return []  # an optional keyword (STORE, KEYS) that is absent
        else:
            first = self.begin_index
            if first >= argc:
                return []
        if self.keynum >= 0:
            if first + self.keynum >= argc:
                return None
            try:
                count = int(cmd[first + self.keynum])
            except ValueError:
                return None
            if count < 0:
                return None
            first += self.first
            last = first + (count - 1) * self.step
        elif self.last >= 0:
            last = first + self.last
        elif not self.limit:
            last = argc + self.last
        else:
            last = first + ((argc - first) // self.limit + self.last)
        if last < first:
            return [] if self.keynum >= 0 and last == first - 1 else None
        if last >= argc:
            return None
        return list(range(first, last + 1, self.step))

    def _after_keyword(self, cmd: Sequence[bytes]) -> int | None:
        argc, word = len(cmd), self.keyword
        if self.start >= 0:  # as Redis: the last argument is never searched (no key after it)
            indices: Iterator[int] = iter(range(self.start, argc - 1))
        else:
            indices = iter(range(argc + self.start, 0, -1))
        for i in indices:
            if cmd[i].upper() == word:
                return i + 1
        return None


@dataclass(slots=True)
class Row:
    """One command (or subcommand) of the policy table."""

    name: str  # lower case, ``container|sub`` for subcommands
    arity: int
    specs: tuple[KeySpec, ...]
    action: Action
    transform: str  # a name in transform.HANDLERS, or "" for none
    since: str
    note: str = ""
    index: int = 0  # position in the table (hot-path counters are indexed by it)
    subcommands: dict[bytes, Row] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The metrics label: the row name (bounded: the table is finite)."""
        return self.name

    def arity_ok(self, argc: int) -> bool:
        arity = self.arity
        return argc == arity if arity >= 0 else argc >= -arity

    def key_positions(self, cmd: Sequence[bytes]) -> list[int] | None:
        """Indices of every key ``cmd`` names, in spec order (None: malformed arguments)."""
        specs = self.specs
        if not specs:
            return []
        if len(specs) == 1:
            return specs[0].positions(cmd)
        out: list[int] = []
        for spec in specs:
            found = spec.positions(cmd)
            if found is None:
                return None
            out += found
        return out


def _parse(table: str, notes: Sequence[tuple[str, str]]) -> dict[str, Row]:
    noted = {name: text for names, text in notes for name in names.split()}
    rows: dict[str, Row] = {}
    for index, line in enumerate(table.strip().splitlines()):
        name, arity, keys, action, transform, since = line.split()
        specs = () if keys == "-" else tuple(KeySpec.parse(k) for k in keys.split(","))
        row = Row(
            name, int(arity), specs, Action(action), "" if transform == "-" else transform,
            since, noted.get(name, ""), index,
        )  # fmt: skip
        rows[name] = row
        container, _, sub = name.partition("|")
        if sub:
            rows[container].subcommands[sub.encode()] = row
    return rows


class Table:
    """The parsed table with case-insensitive lookup by the command's first two arguments."""

    def __init__(self, table: str = TABLE, notes: Sequence[tuple[str, str]] = NOTES) -> None:
        self.rows = _parse(table, notes)
        # exact bytes -> row, for the spellings clients send (``GET``, ``get``); others fold
        self._by_name: dict[bytes, Row] = {}
        for name, row in self.rows.items():
            if "|" not in name:
                self._by_name[name.encode()] = row
                self._by_name[name.upper().encode()] = row
        self.labels = [row.label for row in sorted(self.rows.values(), key=lambda r: r.index)]

    def without(self, *names: str) -> Table:
        """A copy lacking ``names`` (tests: a command the server knows but the table lacks)."""
        kept = [ln for ln in TABLE.strip().splitlines() if ln.split()[0] not in names]
        return Table("\n".join(kept), NOTES)

    def lookup(self, cmd: Sequence[bytes]) -> Row | None:
        """The row for ``cmd`` (its subcommand row for a container), or None if unknown."""
        row = self._by_name.get(cmd[0])
        if row is None:
            row = self._by_name.get(cmd[0].lower())
            if row is None:
                return None
        if row.subcommands and len(cmd) > 1:
            return row.subcommands.get(cmd[1].lower(), row)
        return row

    def __iter__(self) -> Iterator[Row]:
        return iter(sorted(self.rows.values(), key=lambda r: r.name))


# --- refusals (each carries its RESP error line) ---------------------------------------------


def printable(raw: bytes, limit: int = 128) -> str:
    """A key or name as shown in an error line: printable ASCII, the rest as ``\\xNN``."""
    text = raw[:limit].decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text + ("..." if len(raw) > limit else "")


class Refusal(Exception):
    """A command veil answers with an error instead of forwarding it (counted as refused)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line

    @property
    def reply(self) -> ErrorReply:
        return ErrorReply(self.line.encode("utf-8", "backslashreplace"))


def arity_error(row: Row) -> Refusal:
    return Refusal(f"ERR wrong number of arguments for '{row.name}' command")


def unknown(cmd: Sequence[bytes]) -> Refusal:
    return Refusal(f"ERR veil: command '{printable(cmd[0]).lower()}' is not in veil's policy table")


def unknown_subcommand(row: Row, cmd: Sequence[bytes]) -> Refusal:
    return Refusal(f"ERR unknown subcommand '{printable(cmd[1])}'. Try {row.name.upper()} HELP.")


def not_supported(cmd: Sequence[bytes], key: bytes, why: str = "") -> Refusal:
    suffix = f" ({why})" if why else ""
    return Refusal(
        f"ERR veil: {printable(cmd[0]).upper()} is not supported on encrypted key "
        f"'{printable(key)}'{suffix}"
    )


def denied(row: Row) -> Refusal:
    return Refusal(f"ERR veil: {row.name.upper().replace('|', ' ')} is refused ({row.note})")


def reserved(key: bytes) -> Refusal:
    return Refusal(f"ERR veil: key '{printable(key)}' is reserved for veil")


def across(cmd: Sequence[bytes], first: bytes, second: bytes) -> Refusal:
    return Refusal(
        f"ERR veil: {printable(cmd[0]).upper()} between '{printable(first)}' and "
        f"'{printable(second)}' is refused: the keys are under different encryption policies"
    )


# --- reporting ----------------------------------------------------------------------------


def _row_value(row: Row) -> list[Value]:
    return [
        row.name.encode(),
        row.arity,
        DESCRIPTIONS[row.action].encode(),
        b",".join(s.short().encode() for s in row.specs),
        row.transform.encode(),
        row.since.encode(),
        row.note.encode(),
    ]


def veil_command_reply(table: Table, names: Sequence[bytes]) -> Value:
    """``VEIL COMMAND [name ...]``: ``[name, arity, action, keys, transform, since, note]`` rows.

    An unknown name gets a null in its place (as ``COMMAND INFO`` does).
    """
    if not names:
        return [_row_value(row) for row in table]
    out: list[Value] = []
    for name in names:
        row = table.rows.get(name.lower().replace(b" ", b"|").decode("latin-1"))
        out.append(None if row is None else _row_value(row))
    return out


def markdown(table: Table) -> str:
    """The policy section of docs/REDIS.md, generated from the table."""
    lines = [
        "| command | action | keys | transform | since | why |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        keys = ", ".join(f"`{s.short()}`" for s in row.specs) or "-"
        transform = f"`{row.transform}`" if row.transform else "-"
        name = row.name.upper().replace("|", " ")
        lines.append(
            f"| `{name}` | {DESCRIPTIONS[row.action]} | {keys} | {transform} | {row.since} "
            f"| {row.note} |"
        )
    return "\n".join(lines) + "\n"
