"""The request head as the S3 layer sees it: method, raw path, raw query and header pairs.

Theory of operation
-------------------
Signature checks need the request *as the client sent it*: the percent-encoded path, the raw
query string and every header value in wire order (a header may repeat). Classification needs the
decoded view: the key, the query parameters. :class:`RequestHead` keeps the raw form and offers
the decoded views, so the proxy builds one head per request (from aiohttp's ``raw_path`` and
``raw_headers``) and hands the same object to :func:`protocols.s3.request.classify` and to
:func:`protocols.s3.auth.authenticate`.

Decoding follows RFC 3986, not HTML forms: ``%XX`` escapes are decoded as UTF-8 and ``+`` stays
a plus sign in the path *and* in the query (SigV4 canonicalisation does the same, and botocore
never sends ``+`` for a space). A ``%`` escape that does not decode to UTF-8 is ``InvalidURI``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from protocols.s3.errors import S3Error

QueryParams = tuple[tuple[str, str | None], ...]


def percent_decode(text: str) -> str:
    """Decode ``%XX`` escapes as UTF-8 (``+`` is left alone).

    Args:
        text: a raw path segment, query name or query value.

    Returns:
        The decoded text.

    Raises:
        S3Error: ``InvalidURI`` if the escapes do not form valid UTF-8.
    """
    if "%" not in text:
        return text
    try:
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise S3Error("InvalidURI") from None


def parse_query(raw_query: str) -> QueryParams:
    """Split a raw query string into decoded ``(name, value)`` pairs in wire order.

    ``?uploads`` gives ``("uploads", None)``; ``?prefix=`` gives ``("prefix", "")``: S3 treats
    both as present, and SigV4 signs both as ``name=``.

    Raises:
        S3Error: ``InvalidURI`` for escapes that are not UTF-8.
    """
    pairs: list[tuple[str, str | None]] = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, eq, value = item.partition("=")
        pairs.append((percent_decode(name), percent_decode(value) if eq else None))
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One HTTP request head, raw.

    Attributes:
        method: the HTTP method, upper case.
        path: the request path exactly as on the wire (percent-encoded, no query).
        query: the raw query string without ``?`` (empty when there is none).
        headers: ``(lower-case name, value)`` pairs in wire order; a repeated header appears
            several times.
    """

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    _params: QueryParams | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        method: str,
        target: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> RequestHead:
        """Build a head from a request target (``/path?query``) and headers.

        Args:
            method: HTTP method (any case).
            target: the raw request target, e.g. aiohttp's ``request.raw_path``.
            headers: a mapping or ``(name, value)`` pairs; names are lower-cased, order kept.

        Returns:
            The head.
        """
        path, _, query = target.partition("?")
        items = headers.items() if isinstance(headers, Mapping) else headers
        pairs = tuple((name.lower(), value) for name, value in items)
        return cls(method.upper(), path or "/", query, pairs)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower case); repeated values joined by ``,``."""
        values = [value for key, value in self.headers if key == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else ",".join(values)

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower case), in wire order."""
        return [value for key, value in self.headers if key == name]

    @property
    def params(self) -> QueryParams:
        """The decoded query parameters, in wire order (see :func:`parse_query`)."""
        if self._params is None:
            object.__setattr__(self, "_params", parse_query(self.query))
        assert self._params is not None
        return self._params

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name`` (exact case); ``""`` for a bare name."""
        for key, value in self.params:
            if key == name:
                return "" if value is None else value
        return None

    def has_param(self, name: str) -> bool:
        """Whether query parameter ``name`` is present (with or without a value)."""
        return any(key == name for key, _ in self.params)
