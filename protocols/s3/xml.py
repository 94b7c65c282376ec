"""The few S3 XML bodies veil reads or rewrites.

Theory of operation
-------------------
**Parsing** (client request bodies and upstream responses) goes through :func:`parse`, which
drives :mod:`xml.parsers.expat` directly into an :class:`xml.etree.ElementTree.TreeBuilder` and
refuses any document type declaration, entity declaration or external entity reference
(``MalformedXML``), so entity expansion ("billion laughs") and external entities (XXE) cannot
happen: the same guard defusedxml installs, without the dependency. Documents are capped in size
before parsing. Elements are matched by *local* name, so bodies with or without S3's namespace
(``http://s3.amazonaws.com/doc/2006-03-01/``) parse the same.

* :func:`parse_complete_multipart` -- ``<CompleteMultipartUpload>``: parts in ascending order
  (``InvalidPartOrder`` otherwise), at most 10000, with their ETags and checksums;
* :func:`parse_delete_objects` -- ``<Delete>``: ``Quiet`` and at most 1000 ``Object`` entries.

**Rewriting** upstream responses keeps the document's namespace as the default namespace (no
``ns0:`` prefixes), so botocore and every SDK parse the result unchanged:

* :func:`rewrite_listing` -- ListObjects(V2) ``Contents``, ListObjectVersions ``Version`` and
  ListParts ``Part`` entries: a callback maps each :class:`ListEntry` (key, size, ETag, ...) to
  the values the client should see; the store's per-entry checksum values (of ciphertext) are
  dropped unless the callback supplies plaintext ones;
* :func:`rewrite_result` -- CopyObjectResult, CopyPartResult, CompleteMultipartUploadResult
  (``ETag`` and checksums) and InitiateMultipartUploadResult (``UploadId``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus
from xml.parsers import expat

from protocols.s3.checksums import Algorithm
from protocols.s3.errors import S3Error

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_DOCUMENT = 2 * 1024 * 1024  # a 10000-part CompleteMultipartUpload is ~1 MB
MAX_PARTS = 10000
MAX_DELETE_OBJECTS = 1000
_CHECKSUM_ELEMENTS: dict[str, Algorithm] = {"Checksum" + a.value: a for a in Algorithm}


def _malformed(message: str | None = None) -> S3Error:
    return S3Error("MalformedXML", message)


def _forbid(*_: object) -> int:
    raise _malformed("DTDs and entities are not allowed")


def _qualified(name: str) -> str:
    namespace, separator, local = name.rpartition("}")
    return "{" + namespace + "}" + local if separator else name


def parse(body: bytes, *, max_size: int = MAX_DOCUMENT) -> ET.Element:
    """Parse an XML document safely.

    Args:
        body: the document.
        max_size: the largest document accepted.

    Returns:
        The root element (tags as ``{namespace}local``).

    Raises:
        S3Error: ``MaxMessageLengthExceeded`` when too big, ``MalformedXML`` when not
            well-formed or when it declares a DTD or entities.
    """
    if len(body) > max_size:
        raise S3Error("MaxMessageLengthExceeded")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _forbid
    parser.EntityDeclHandler = _forbid
    parser.UnparsedEntityDeclHandler = _forbid
    parser.ExternalEntityRefHandler = _forbid

    def start(name: str, attributes: dict[str, str]) -> None:
        builder.start(_qualified(name), {_qualified(k): v for k, v in attributes.items()})

    def end(name: str) -> None:
        builder.end(_qualified(name))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(body, True)
    except expat.ExpatError:
        raise _malformed() from None
    return builder.close()


def local_name(tag: str) -> str:
    """``{namespace}Part`` -> ``Part``."""
    return tag.rpartition("}")[2]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if local_name(child.tag) == name]


def _text(element: ET.Element, name: str) -> str | None:
    found = _children(element, name)
    if len(found) > 1:
        raise _malformed(f"repeated <{name}>")
    return (found[0].text or "") if found else None


def _root(body: bytes, name: str) -> ET.Element:
    root = parse(body)
    if local_name(root.tag) != name:
        raise _malformed(f"expected <{name}>")
    return root


# ---------------------------------------------------------------------------------------------
# request bodies


@dataclass(frozen=True, slots=True)
class CompletedPart:
    """One ``<Part>`` of a CompleteMultipartUpload request."""

    part_number: int
    etag: str
    checksums: dict[Algorithm, str] = field(default_factory=dict)


def parse_complete_multipart(body: bytes) -> list[CompletedPart]:
    """Parse a ``<CompleteMultipartUpload>`` body.

    Returns:
        The parts, in the (strictly ascending) order given.

    Raises:
        S3Error: ``MalformedXML`` (not well-formed, no parts, bad ``PartNumber``, missing
            ``ETag``, more than 10000 parts), ``InvalidPartOrder``.
    """
    root = _root(body, "CompleteMultipartUpload")
    parts: list[CompletedPart] = []
    for element in _children(root, "Part"):
        number, etag = _text(element, "PartNumber"), _text(element, "ETag")
        if number is None or not number.strip().isdigit() or etag is None:
            raise _malformed()
        checksums = {
            algorithm: text.strip()
            for name, algorithm in _CHECKSUM_ELEMENTS.items()
            if (text := _text(element, name)) is not None
        }
        part = CompletedPart(int(number), etag.strip(), checksums)
        if not 1 <= part.part_number <= MAX_PARTS or len(parts) >= MAX_PARTS:
            raise _malformed()
        if parts and part.part_number <= parts[-1].part_number:
            raise S3Error("InvalidPartOrder")
        parts.append(part)
    if not parts:
        raise _malformed()
    return parts


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """A parsed ``<Delete>`` body: ``(key, version id)`` pairs and the Quiet flag."""

    objects: list[tuple[str, str | None]]
    quiet: bool = False


def parse_delete_objects(body: bytes) -> DeleteRequest:
    """Parse a DeleteObjects ``<Delete>`` body.

    Raises:
        S3Error: ``MalformedXML`` (not well-formed, no or more than 1000 objects, an object
            without a key, a Quiet that is not a boolean).
    """
    root = _root(body, "Delete")
    quiet = (_text(root, "Quiet") or "false").strip().lower()
    if quiet not in ("true", "false"):
        raise _malformed()
    objects = []
    for element in _children(root, "Object"):
        key = _text(element, "Key")
        if not key:
            raise _malformed()
        objects.append((key, _text(element, "VersionId")))
    if not objects or len(objects) > MAX_DELETE_OBJECTS:
        raise _malformed()
    return DeleteRequest(objects, quiet == "true")


# ---------------------------------------------------------------------------------------------
# response rewriting


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One listed object version or part, as the callback of :func:`rewrite_listing` sees it.

    ``key`` is decoded even under ``encoding-type=url``; ``part_number`` is set for ListParts;
    ``checksums`` holds the base64 values to show (the store's are never passed in).
    """

    key: str
    size: int
    etag: str | None = None
    version_id: str | None = None
    part_number: int | None = None
    checksums: Mapping[Algorithm, str] = field(default_factory=dict)


ListCallback = Callable[[ListEntry], ListEntry]

# listing root -> the element of one entry
_ENTRY_ELEMENTS = {
    "ListBucketResult": "Contents",
    "ListVersionsResult": "Version",
    "ListPartsResult": "Part",
}


def rewrite_listing(body: bytes, callback: ListCallback) -> bytes:
    """Rewrite the sizes, ETags and checksums of a listing.

    Args:
        body: a ListObjects, ListObjectsV2, ListObjectVersions or ListParts response.
        callback: maps each entry to the entry the client should see (``key``, ``version_id``
            and ``part_number`` changes are ignored).

    Returns:
        The rewritten document, with the original namespace as the default namespace.

    Raises:
        S3Error: ``MalformedXML`` for an unexpected document (an upstream fault).
    """
    root = parse(body, max_size=64 * MAX_DOCUMENT)
    entry_name = _ENTRY_ELEMENTS.get(local_name(root.tag))
    if entry_name is None:
        raise _malformed(f"not a listing: <{local_name(root.tag)}>")
    url_encoded = (_text(root, "EncodingType") or "").strip() == "url"
    parent_key = _text(root, "Key") or ""
    for element in _children(root, entry_name):
        entry = _read_entry(element, parent_key, url_encoded)
        _write_entry(element, callback(entry))
    return _serialize(root)


def _read_entry(element: ET.Element, parent_key: str, url_encoded: bool) -> ListEntry:
    key = _text(element, "Key")
    size = _text(element, "Size")
    number = _text(element, "PartNumber")
    if size is None or not size.strip().isdigit():
        raise _malformed("listing entry without a Size")
    if key is not None and url_encoded:
        key = unquote_plus(key)
    return ListEntry(
        key=parent_key if key is None else key,
        size=int(size),
        etag=_text(element, "ETag"),
        version_id=_text(element, "VersionId"),
        part_number=int(number) if number and number.strip().isdigit() else None,
    )


def _write_entry(element: ET.Element, entry: ListEntry) -> None:
    for child in list(element):
        name = local_name(child.tag)
        if name == "Size":
            child.text = str(entry.size)
        elif name == "ETag" and entry.etag is not None:
            child.text = entry.etag
        elif name in _CHECKSUM_ELEMENTS:
            element.remove(child)
    _append_checksums(element, entry.checksums)


def _append_checksums(element: ET.Element, values: Mapping[Algorithm, str]) -> None:
    namespace = _namespace(element.tag)
    for algorithm, value in values.items():
        child = ET.SubElement(element, namespace + "Checksum" + algorithm.value)
        child.text = value


def rewrite_result(
    body: bytes,
    *,
    etag: str | None = None,
    upload_id: str | None = None,
    checksums: Mapping[Algorithm, str] | None = None,
) -> bytes:
    """Rewrite a single-result document (Copy*, CompleteMultipartUpload, Initiate*).

    Args:
        body: CopyObjectResult, CopyPartResult, CompleteMultipartUploadResult or
            InitiateMultipartUploadResult.
        etag: the ETag to show (quoted, as S3 writes it), if it changes.
        upload_id: the UploadId to show, if it changes.
        checksums: plaintext checksums to show; the store's checksum values are always removed.

    Returns:
        The rewritten document.

    Raises:
        S3Error: ``MalformedXML`` for an unexpected document.
    """
    root = parse(body)
    if local_name(root.tag) not in _RESULTS:
        raise _malformed(f"unexpected result <{local_name(root.tag)}>")
    replacements = {"ETag": etag, "UploadId": upload_id}
    for child in list(root):
        name = local_name(child.tag)
        if replacements.get(name) is not None:
            child.text = replacements[name]
        elif name in _CHECKSUM_ELEMENTS:
            root.remove(child)
    _append_checksums(root, checksums or {})
    return _serialize(root)


_RESULTS = frozenset(
    {
        "CopyObjectResult",
        "CopyPartResult",
        "CompleteMultipartUploadResult",
        "InitiateMultipartUploadResult",
    }
)


def _namespace(tag: str) -> str:
    match = re.match(r"\{[^}]*\}", tag)
    return match.group(0) if match else ""


def _serialize(root: ET.Element) -> bytes:
    namespace = _namespace(root.tag)[1:-1]
    try:
        text = ET.tostring(root, encoding="unicode", default_namespace=namespace or None)
    except ValueError:  # mixed qualified and unqualified elements: keep explicit prefixes
        text = ET.tostring(root, encoding="unicode")
    return (_DECLARATION + text).encode("utf-8")


_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
