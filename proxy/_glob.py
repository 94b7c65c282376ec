"""Redis globs on bytes: compilation to regexes and matching (``redis.encrypt`` and friends).

Theory of operation
-------------------
Redis key and channel globs follow Redis ``stringmatchlen`` on bytes (``*``, ``?``,
``[...]`` with ``^`` negation and ``a-z`` ranges, ``\\`` escapes, an unclosed ``[`` ending at
the pattern's end), with two deliberate differences: a pattern of only ``*`` matches the empty
key (as ``KEYS *`` does), and range ends compare as unsigned bytes (Redis compares signed
``char`` on x86, so ranges that cross 0x7f/0x80 differ there). Each pattern compiles once to a
regex whose ``*`` runs are atomic groups, so a match costs O(len(key) x len(pattern)), never
exponential; a list of globs compiles to one alternation. (Bucket globs, ``s3_buckets``, are
fnmatch-style and are not handled here.)

Part of :mod:`proxy.config`, which re-exports the public names; import them from there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["redis_glob_match", "redis_glob_regex"]


def _glob_class(pattern: bytes, i: int) -> tuple[set[int], int]:
    """Parse a ``[...]`` class from just after its ``[`` exactly as Redis does."""
    n = len(pattern)
    negate = i < n and pattern[i] == 0x5E  # ^
    i += negate
    members: set[int] = set()
    while i < n and pattern[i] != 0x5D:  # ]
        if pattern[i] == 0x5C and n - i >= 2:  # \x: literal x
            i += 1
            members.add(pattern[i])
        elif n - i >= 3 and pattern[i + 1] == 0x2D:  # a-z; ends in either order; z may be ]
            low, high = sorted((pattern[i], pattern[i + 2]))
            members.update(range(low, high + 1))
            i += 2
        else:
            members.add(pattern[i])
        i += 1
    # Redis ends an unclosed class at the end of the pattern
    return (set(range(256)) - members if negate else members), i + 1


def _byte_class(members: set[int]) -> bytes:
    if len(members) == 256:
        return b"."
    if not members:
        return rb"[^\x00-\xff]"  # one byte wide, matches nothing
    runs: list[list[int]] = []
    for byte in sorted(members):
        if runs and runs[-1][1] == byte - 1:
            runs[-1][1] = byte
        else:
            runs.append([byte, byte])
    ranges = (b"\\x%02x-\\x%02x" % (low, high) for low, high in runs)
    return b"[" + b"".join(ranges) + b"]"


def _glob_segments(pattern: bytes) -> list[list[bytes]]:
    """The pattern split at its ``*`` runs; one regex piece per one-byte atom."""
    segments: list[list[bytes]] = [[]]
    i, n = 0, len(pattern)
    while i < n:
        byte = pattern[i]
        if byte == 0x2A:  # *
            if segments[-1] or len(segments) == 1:
                segments.append([])
            i += 1
        elif byte == 0x3F:  # ?
            segments[-1].append(b".")
            i += 1
        elif byte == 0x5B:  # [
            members, i = _glob_class(pattern, i + 1)
            segments[-1].append(_byte_class(members))
        else:
            if byte == 0x5C and i + 1 < n:  # \x: literal x (a trailing \ is literal)
                i += 1
            segments[-1].append(re.escape(pattern[i : i + 1]))
            i += 1
    return segments


def redis_glob_regex(pattern: bytes) -> bytes:
    """Regex source (for ``re.DOTALL`` and ``.match``) that matches what the Redis glob does.

    ``a*b*c`` becomes ``\\Aa(?>.*?b).{1,}+(?<=c)``: the first segment is anchored at the start,
    each middle one is found leftmost and never retried (atomic group), the last must be the
    final bytes; leftmost-first is optimal because every segment has a fixed width.
    """
    segments = _glob_segments(pattern)
    head = rb"\A" + b"".join(segments[0])
    if len(segments) == 1:
        return head + rb"\Z"
    middle = b"".join(rb"(?>.*?" + b"".join(s) + b")" for s in segments[1:-1])
    last = segments[-1]
    tail = rb".{%d,}+(?<=%b)" % (len(last), b"".join(last)) if last else b""
    return head + middle + tail


def redis_glob_match(pattern: bytes, string: bytes) -> bool:
    """Whether ``string`` matches the Redis glob ``pattern`` (see the module docstring)."""
    return re.match(redis_glob_regex(pattern), string, re.DOTALL) is not None


def _compile_globs(patterns: Iterable[str], capture: bool = False) -> re.Pattern[bytes] | None:
    sources = [redis_glob_regex(p.encode("utf-8", "surrogateescape")) for p in patterns]
    if not sources:
        return None
    wrap = b"(%b)" if capture else b"(?:%b)"
    return re.compile(b"|".join(wrap % s for s in sources), re.DOTALL)
