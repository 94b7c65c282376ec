# cython: language_level=3, boundscheck=True, wraparound=False, initializedcheck=True
"""The RESP fast path's whole-chunk functions, compiled (``proxy.redis.fast`` is the reference).

``Chunks.requests`` and ``Chunks.replies`` do what ``fast.requests`` and ``fast.replies`` do --
same chunks taken, same bytes out, same connection state after -- without the interpreter's
per-command cost: at pipeline depth 16 that cost is most of veil's CPU (PERF-NOTES), and this
module is what brings veil to the floor proxy's (``bench/redis_proxy.py``).

Parsing reads the chunk's bytes in place with explicit bounds checks before every access and
accepts a strict subset of what Redis and hiredis accept identically: canonical decimal lengths
(no sign, no leading zero, at most 10 digits), ``\\r\\n`` where the framing puts it, RESP2 reply
types only, nesting at most 32 deep. Anything else -- a partial command, an inline command, an
option the planners do not know, an error reply, a value that fails to open -- returns False
and the connection hands the untouched chunk to the general path, which is exact for every
input. Nothing is recorded on the connection before a chunk is known to be taken.

Only the compiled module is fast: without a C compiler the package installs without it and
``fast.chunk_functions`` returns the Python functions (``tests/integration/test_redis_fast.py``
runs both against the general path).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdio cimport snprintf
from libc.string cimport memcmp, memcpy, memset

cdef enum:
    MAX_DEPTH = 32
    HEADER_END = 27  # small envelope: magic, format, keyring ref, class, version, salt
    NONCE_END = 31  # ... then the 4-byte counter; the ciphertext and tag follow
    SMALL_OVERHEAD = 47

cdef const char* SMALL_TAG = b"\xc1\xf5\x56\x01"
cdef const char* MAGIC = b"\xc1\xf5\x56"


cdef inline Py_ssize_t _number(const char* p, Py_ssize_t pos, Py_ssize_t end,
                               Py_ssize_t* out, Py_ssize_t digits=10) noexcept:
    """Canonical decimal digits (at most ``digits``) from ``pos`` up to ``\\r\\n``; the
    position after it, or -1."""
    cdef Py_ssize_t start = pos, n = 0
    cdef char c
    while pos < end:
        c = p[pos]
        if c == 13:  # \r
            break
        if c < 48 or c > 57 or pos - start >= digits:
            return -1
        n = n * 10 + (c - 48)
        pos += 1
    if pos == start or pos + 1 >= end or p[pos + 1] != 10:
        return -1
    if p[start] == 48 and pos - start > 1:  # a leading zero
        return -1
    out[0] = n
    return pos + 2


cdef inline Py_ssize_t _bulk(const char* p, Py_ssize_t pos, Py_ssize_t end,
                             Py_ssize_t* length) noexcept:
    """``$<n>\\r\\n<n bytes>\\r\\n`` at ``pos``: the payload's offset (its length in ``length``),
    or -1."""
    if pos >= end or p[pos] != 36:  # $
        return -1
    pos = _number(p, pos + 1, end, length)
    if pos < 0 or length[0] > end - pos - 2:
        return -1
    if p[pos + length[0]] != 13 or p[pos + length[0] + 1] != 10:
        return -1
    return pos


cdef Py_ssize_t _reply(const char* p, Py_ssize_t pos, Py_ssize_t end, int depth,
                       bint* error) noexcept:
    """The end of the one whole RESP2 reply at ``pos``, or -1 (incomplete or not RESP2).
    ``error``: the reply is a top-level error."""
    cdef char c
    cdef Py_ssize_t n, i, length
    if pos >= end or depth > MAX_DEPTH:
        return -1
    c = p[pos]
    if c == 58:  # :  an optional minus, then canonical digits (at most 18, so no overflow;
        # longer ones go to the general path), never -0
        i = pos + 1
        if i < end and p[i] == 45:
            i += 1
        n = _number(p, i, end, &length, 18)
        if n < 0 or (p[i] == 48 and i > pos + 1):
            return -1
        return n
    if c == 43 or c == 45:  # + -  a line with neither \r nor \n inside (as hiredis checks)
        n = pos + 1
        while n < end and p[n] != 13 and p[n] != 10:
            n += 1
        if n + 1 >= end or p[n] != 13 or p[n + 1] != 10:
            return -1
        if c == 45 and depth == 0:
            error[0] = True
        return n + 2
    if c == 36 or c == 42:  # $ *
        if end - pos >= 5 and memcmp(p + pos + 1, b"-1\r\n", 4) == 0:
            return pos + 5  # null bulk string or null array
        if c == 36:
            n = _bulk(p, pos, end, &length)
            return -1 if n < 0 else n + length + 2
        pos = _number(p, pos + 1, end, &n)
        if pos < 0:
            return -1
        for i in range(n):
            pos = _reply(p, pos, end, depth + 1, error)
            if pos < 0:
                return -1
        return pos
    return -1


cdef bytes _set_command(bytes key, bytes sealed):
    """``SET key sealed`` as ``hiredis.pack_command`` writes it."""
    cdef char head[32]
    cdef Py_ssize_t klen = PyBytes_GET_SIZE(key), slen = PyBytes_GET_SIZE(sealed)
    cdef int h1 = snprintf(head, 32, b"*3\r\n$3\r\nSET\r\n$%zd\r\n", klen)
    cdef char mid[24]
    cdef int h2 = snprintf(mid, 24, b"\r\n$%zd\r\n", slen)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h1 + klen + h2 + slen + 2)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, head, h1)
    memcpy(o + h1, PyBytes_AS_STRING(key), klen)
    memcpy(o + h1 + klen, mid, h2)
    memcpy(o + h1 + klen + h2, PyBytes_AS_STRING(sealed), slen)
    memcpy(o + h1 + klen + h2 + slen, b"\r\n", 2)
    return out


cdef bytes _bulk_reply(bytes plain):
    """``$<n>\\r\\n<plain>\\r\\n``."""
    cdef char head[24]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(plain)
    cdef int h = snprintf(head, 24, b"$%zd\r\n", n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n + 2)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, head, h)
    memcpy(o + h, PyBytes_AS_STRING(plain), n)
    memcpy(o + h + n, b"\r\n", 2)
    return out


cdef class Chunks:
    """One listener's compiled chunk functions (``fast.chunk_functions`` builds it).

    ``keys`` is the cipher's key classification cache (cleared in place on keyring changes),
    ``specs`` maps every command name a planner takes, other than GET and SET, to
    ``(row index, arity)`` (forwarded unchanged on plaintext keys)."""

    cdef dict keys
    cdef dict specs
    cdef object get_idx
    cdef object set_idx
    cdef object cipher
    cdef object string
    # the subkey of the last small envelope opened, valid while the cipher's opener is the same
    # object (a keyring change builds a new one, so a revoked version drops out at once)
    cdef object last_opener
    cdef bytes last_header
    cdef object last_aead
    cdef object last_version
    # the string context of the last namespace state seen (a keyring change builds new states;
    # a lookup by ``Role``, an IntEnum, hashes in Python)
    cdef object last_ns
    cdef object last_context

    def __init__(self, dict keys, dict specs, get_idx, set_idx, cipher, string):
        self.keys, self.specs = keys, specs
        self.get_idx, self.set_idx = get_idx, set_idx
        self.cipher, self.string = cipher, string
        self.last_opener = None
        self.last_header = b""
        self.last_ns = None

    cdef inline object _context(self, ns):
        if ns is not self.last_ns:
            self.last_context = ns.contexts[self.string]
            self.last_ns = ns
        return self.last_context

    def requests(self, conn, bytes data):
        """Plans and forwards a chunk of whole, simple commands; False: the general path's."""
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(data), pos = 0, start, argc, i, length, arity
        cdef Py_ssize_t name_at = 0, name_len = 0, key_at = 0, key_len = 0
        cdef Py_ssize_t value_at = 0, value_len = 0, copied = 0
        cdef int kind  # 0 plain, 1 GET, 2 SET
        cdef PyObject* found
        cdef list plans = []
        cdef list pieces = None
        cdef dict keys = self.keys
        cdef bytes key, sealed
        while pos < end:
            start = pos
            if p[pos] != 42:  # *
                return False
            pos = _number(p, pos + 1, end, &argc)
            if pos < 0 or argc < 2:
                return False
            for i in range(argc):
                pos = _bulk(p, pos, end, &length)
                if pos < 0:
                    return False
                if i == 0:
                    name_at, name_len = pos, length
                elif i == 1:
                    key_at, key_len = pos, length
                elif i == 2:
                    value_at, value_len = pos, length
                pos += length + 2
            kind = 0
            if name_len == 3:
                if memcmp(p + name_at, b"GET", 3) == 0 or memcmp(p + name_at, b"get", 3) == 0:
                    kind = 1
                elif memcmp(p + name_at, b"SET", 3) == 0 or memcmp(p + name_at, b"set", 3) == 0:
                    kind = 2
            if kind == 0:
                found = PyDict_GetItem(self.specs, PyBytes_FromStringAndSize(p + name_at, name_len))
                if found == NULL:
                    return False
                idx, arity = <object>found
                if (argc != arity) if arity >= 0 else (argc < -arity):
                    return False
            elif argc != kind + 1:
                return False
            key = PyBytes_FromStringAndSize(p + key_at, key_len)
            found = PyDict_GetItem(keys, key)
            if found == NULL:
                return False  # not classified yet: the general path checks it
            info = <object>found
            if info is None:  # a plaintext key: forwarded unchanged
                plans.append(idx if kind == 0 else (self.get_idx if kind == 1 else self.set_idx))
            elif kind == 1:
                plans.append((info, key, self.get_idx))
            elif kind == 2:
                ns = info.ns
                sealer = ns.sealer
                if sealer is None:
                    return False  # stale keyring: the general path answers the error
                sealed = sealer.seal(PyBytes_FromStringAndSize(p + value_at, value_len),
                                     self._context(ns))
                if pieces is None:
                    pieces = []
                if copied < start:
                    pieces.append(PyBytes_FromStringAndSize(p + copied, start - copied))
                pieces.append(_set_command(key, sealed))
                copied = pos
                plans.append(self.set_idx)
            else:
                return False  # a single-key command on an encrypted key: the general path's
        if not plans:
            return False
        # taken: record every plan, then one upstream write
        pending, counts = conn.pending, conn.counts
        for plan in plans:
            pending.append(plan)
            i = plan[2] if type(plan) is tuple else plan
            counts[i] += 1
        if pieces is not None:
            if copied < end:
                pieces.append(PyBytes_FromStringAndSize(p + copied, end - copied))
            data = b"".join(pieces)
        upstream = conn.upstream
        if upstream is None:
            conn.send_upstream(data)
        else:  # Upstream.write, inlined
            transport = upstream.transport
            if transport is not None and not upstream.closed:
                transport.write(data)
        if conn.sample is None:
            conn._sent(len(plans))
        else:  # ClientConnection._sent while a latency sample is out
            conn.sent += len(plans)
        return True

    def replies(self, conn, bytes data):
        """Answers a chunk of whole replies to plans; False: the general path's chunk."""
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(data), pos = 0, at, length, copied = 0
        cdef Py_ssize_t count = 0
        cdef bint error = False
        cdef list pieces = None
        cdef list versions = None
        cdef list stale = None
        pending = conn.pending
        if len(pending) == 0:
            return False
        items = iter(pending)
        opener = None
        cipher = self.cipher
        while pos < end:
            item = next(items, None)
            if item is None:
                return False  # more replies than commands in flight
            if type(item) is int:
                pos = _reply(p, pos, end, 0, &error)
                if pos < 0 or error:
                    return False  # incomplete, RESP3, or an error (the general path counts it)
            elif type(item) is tuple:
                if end - pos >= 5 and memcmp(p + pos, b"$-1\r\n", 5) == 0:
                    pos += 5  # a missing key: its bytes pass unchanged
                else:
                    at = _bulk(p, pos, end, &length)
                    if at < 0:
                        return False
                    if opener is None:
                        opener = cipher._opener  # Cipher.opener() without the call
                        if opener is None:
                            opener = cipher.opener()
                    try:
                        plain, version = self._open(opener, item, p + at, length)
                    except Exception:
                        return False  # a failure to open: the general path words it
                    if version is not None:
                        if versions is None:
                            versions, stale = [], []
                        versions.append(version)
                        if version != item[0].ns.active_master:
                            stale.append(item[1])
                    if pieces is None:
                        pieces = []
                    if copied < pos:
                        pieces.append(PyBytes_FromStringAndSize(p + copied, pos - copied))
                    pieces.append(_bulk_reply(plain))
                    pos = at + length + 2
                    copied = pos
            else:
                return False  # an entry with a transform: the general path's
            count += 1
        # taken
        if versions is not None:
            decrypts = cipher.decrypts  # Cipher.count_decrypts, inlined
            for version in versions:
                decrypts[version] += 1
            on_stale = cipher.on_stale
            if stale and on_stale is not None:
                for key in stale:
                    on_stale(cipher.db, key, self.string)  # lazy re-encryption
        if count == len(pending):
            pending.clear()
        else:
            for _ in range(count):
                pending.popleft()
        if pieces is not None:
            if copied < end:
                pieces.append(PyBytes_FromStringAndSize(p + copied, end - copied))
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        transport = conn.transport
        if conn.sample is None and conn.drain_waiter is None and not conn.out and transport is not None:
            conn.done += count  # ClientConnection.write_replies, inlined for the common case
            transport.write(data)
        else:
            conn.write_replies(data, count)
        return True

    cdef tuple _open(self, opener, tuple item, const char* value, Py_ssize_t length):
        """``(plaintext, version or None)`` of a GET reply's stored value."""
        cdef bytes nonce
        info = item[0]
        ns = info.ns
        if length >= SMALL_OVERHEAD and memcmp(value, SMALL_TAG, 4) == 0:
            if not (opener is self.last_opener
                    and memcmp(value + 4, PyBytes_AS_STRING(self.last_header), 23) == 0):
                head = PyBytes_FromStringAndSize(value, HEADER_END)
                self.last_opener = None  # never a half-updated cache if subkey raises
                self.last_aead, self.last_version = opener.subkey(head)
                self.last_header = head[4:]
                self.last_opener = opener
            nonce = PyBytes_FromStringAndSize(NULL, 12)
            memset(PyBytes_AS_STRING(nonce), 0, 8)
            memcpy(PyBytes_AS_STRING(nonce) + 8, value + HEADER_END, 4)
            plain = self.last_aead.decrypt(
                nonce, PyBytes_FromStringAndSize(value + NONCE_END, length - NONCE_END),
                self._context(ns),
            )
            return plain, self.last_version
        stored = PyBytes_FromStringAndSize(value, length)
        if length >= 3 and memcmp(value, MAGIC, 3) == 0:
            return opener.open(stored, self._context(ns))
        return self.cipher.open_string(info, stored, item[1]), None
