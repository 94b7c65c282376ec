# The compiled chunk functions (proxy/redis/_fastc.pyx); see proxy.redis.fast.chunk_functions.
from typing import Any

class Chunks:
    def __init__(
        self,
        keys: dict[bytes, Any],
        specs: dict[bytes, tuple[int, int]],
        get_idx: int,
        set_idx: int,
        cipher: Any,
        string: Any,
    ) -> None: ...
    def requests(self, conn: Any, data: bytes) -> bool: ...
    def replies(self, conn: Any, data: bytes) -> bool: ...
