"""HTTP semantics of a file download: validators, ranges, names and digests.

Pure functions over header values, kept apart from the routes so each rule of the
standards can be read, and tested, on its own:

- Validators (RFC 9110 section 8.8.3): the ETag is the BLAKE3 of the content in
  quotes, a *strong* validator, since the address changes with any byte.
  ``If-None-Match`` uses the weak comparison (section 13.1.2), ``If-Range`` the
  strong one (section 13.1.5).
- Ranges (RFC 9110 section 14): one ``bytes=a-b``, ``a-`` or ``-n`` is served as
  206; a range that starts past the end, or a zero suffix, is unsatisfiable
  (416). Anything else (other units, several ranges, malformed specs) is
  ignored and the whole file sent, which section 14.2 allows.
- ``Content-Disposition`` (RFC 6266 with RFC 8187 / RFC 5987 encoding): an ASCII
  ``filename`` for old clients and ``filename*=UTF-8''...`` for the exact name,
  both safe for any name (quotes, backslashes, ``%``, non-ASCII, controls).
- ``Repr-Digest`` (RFC 9530): SHA-256 of the whole representation as a
  structured-field byte sequence; valid on a 206 too, since it describes the
  representation, not the part sent. ``Digest`` (RFC 3230) carries the same for
  older clients.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

_RANGE_UNIT = re.compile(r"bytes=(?P<set>.*)", re.IGNORECASE | re.DOTALL)
_INT_RANGE = re.compile(r"(?P<first>[0-9]{1,19})-(?P<last>[0-9]{0,19})")
_SUFFIX_RANGE = re.compile(r"-(?P<length>[0-9]{1,19})")
_ENTITY_TAG = re.compile(r'\s*(?P<weak>W/)?"(?P<opaque>[^"]*)"\s*(?:,|$)')
#: RFC 8187 attr-char minus ALPHA / DIGIT, which ``quote`` always keeps.
_ATTR_CHAR_PUNCTUATION = "!#$&+-.^_`|~"


class RangeNotSatisfiable(Exception):
    """The one requested range lies wholly outside the representation (HTTP 416)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for a representation of {size} bytes")
        self.size = size

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int
    """Exclusive."""
    size: int
    """Of the whole representation."""

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


def select_range(header: str | None, size: int) -> ByteRange | None:
    """The range to send for a ``Range`` header, or None to send the whole representation.

    Raises:
        RangeNotSatisfiable: the single range asked for cannot be served (send 416).
    """
    if header is None:
        return None
    unit = _RANGE_UNIT.fullmatch(header.strip())
    if unit is None:
        return None
    specs = unit["set"].split(",")
    if len(specs) != 1:
        return None
    spec = specs[0].strip()
    if m := _INT_RANGE.fullmatch(spec):
        first = int(m["first"])
        last = int(m["last"]) if m["last"] else None
        if last is not None and last < first:
            return None
        if first >= size:
            raise RangeNotSatisfiable(size)
        stop = size if last is None else min(last + 1, size)
        return ByteRange(first, stop, size)
    if m := _SUFFIX_RANGE.fullmatch(spec):
        length = int(m["length"])
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(size - length, 0), size, size)
    return None


def entity_tag(b3: str) -> str:
    return f'"{b3}"'


def _tags(header: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque) for each entity-tag of a list; None if the list is malformed."""
    tags: list[tuple[bool, str]] = []
    rest = header.strip()
    while rest:
        m = _ENTITY_TAG.match(rest)
        if m is None:
            return None
        tags.append((m["weak"] is not None, m["opaque"]))
        rest = rest[m.end() :].strip()
    return tags


def none_match(header: str | None, etag: str) -> bool:
    """True when ``If-None-Match`` names the current representation (answer 304)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    opaque = etag.strip('"')
    return any(tag == opaque for _, tag in _tags(header) or [])


def if_range_holds(header: str | None, etag: str) -> bool:
    """False when ``If-Range`` is present and is not a strong match (send the whole)."""
    if header is None:
        return True
    tags = _tags(header)
    if not tags or len(tags) != 1:
        return False  # a date, or garbage: we have no Last-Modified to compare with
    weak, opaque = tags[0]
    return not weak and opaque == etag.strip('"')


def ascii_fallback(name: str) -> str:
    """An ASCII stand-in for ``name``, safe inside a quoted-string and in any client."""
    out = []
    for char in unicodedata.normalize("NFKD", name):
        if unicodedata.combining(char):
            continue
        printable = " " <= char <= "~"
        out.append(char if printable and char not in '"\\%/;' else "_")
    fallback = "".join(out).strip(" .")
    return fallback or "download"


def content_disposition(path: str) -> str:
    """``attachment`` with the entry's last path segment as the file name (RFC 6266)."""
    name = path.rsplit("/", 1)[-1]
    encoded = quote(name, safe=_ATTR_CHAR_PUNCTUATION, encoding="utf-8", errors="strict")
    return f"attachment; filename=\"{ascii_fallback(name)}\"; filename*=UTF-8''{encoded}"


def digest_headers(sha256_hex: str) -> dict[str, str]:
    """``Repr-Digest`` (RFC 9530) and the older ``Digest`` (RFC 3230) for a SHA-256."""
    b64 = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
    return {"Repr-Digest": f"sha-256=:{b64}:", "Digest": f"sha-256={b64}"}
