"""Process hardening for anything that holds key material (SPEC 4).

* ``disable_core_dumps`` -- ``RLIMIT_CORE = 0`` and, on Linux, ``PR_SET_DUMPABLE = 0`` (no core
  file, no ptrace attach by other processes of the same user, no /proc/<pid>/mem reads).
* ``lock_memory`` -- ``mlockall`` so unwrapped keys are never written to swap. Attempted only
  when ``RLIMIT_MEMLOCK`` is large enough for the whole process; otherwise (a default container
  allows 8 MiB or less) locking future allocations would make them fail, so veil reports that
  memory is *not* locked instead of crashing later.

Both return a short human description for the start-up log; neither raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

PR_SET_DUMPABLE = 4
MCL_CURRENT, MCL_FUTURE = 1, 2
_MIN_MEMLOCK = 1 << 30  # lock only when the limit covers a sidecar's worst case comfortably


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def disable_core_dumps() -> str:
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as e:
        return f"core dumps: could not disable ({e})"
    libc = _libc()
    if sys.platform.startswith("linux") and libc is not None:
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            return "core dumps: disabled (RLIMIT_CORE=0); PR_SET_DUMPABLE failed"
        return "core dumps: disabled (RLIMIT_CORE=0, not dumpable)"
    return "core dumps: disabled (RLIMIT_CORE=0)"


def lock_memory() -> tuple[bool, str]:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and soft < _MIN_MEMLOCK:
        return False, (
            f"memory: not locked (RLIMIT_MEMLOCK={soft} bytes; raise it, e.g. "
            "`ulimit -l unlimited` or the container's memlock limit, to keep keys "
            "out of swap)"
        )
    libc = _libc()
    if libc is None:
        return False, "memory: not locked (no libc)"
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        return False, f"memory: not locked (mlockall: errno {ctypes.get_errno()})"
    return True, "memory: locked (mlockall)"
