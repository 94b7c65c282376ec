"""Processes holding keys write no core dumps and cannot be ptrace-attached (SPEC 4)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import ctypes, ctypes.util, resource
from proxy import harden
print(harden.disable_core_dumps())
print(resource.getrlimit(resource.RLIMIT_CORE))
libc = ctypes.CDLL(ctypes.util.find_library("c"))
print(libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
locked, line = harden.lock_memory()
print(locked, line)
"""


def test_core_dumps_off_and_not_dumpable() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    assert out[0].startswith("core dumps: disabled")
    assert out[1] == "(0, 0)"
    assert out[2] == "0"  # not dumpable
    assert out[3].startswith(("True memory: locked", "False memory: not locked"))
