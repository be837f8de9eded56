"""HPACK encoding of response headers without the dynamic table (RFC 7541), so no encoder state is kept.

Each field is a full match in the static table (indexed), or a literal "without indexing" naming a static
table entry when one has the name, else a literal with both strings. Strings are sent raw, not Huffman coded:
our headers are short and mostly pre-encoded once.
"""

from __future__ import annotations

from collections.abc import Iterable

# The static table entries (RFC 7541 appendix A) a gRPC server's responses use.
_STATIC_FULL = {(b":status", b"200"): 8, (b":status", b"204"): 9, (b":status", b"400"): 12, (b":status", b"404"): 13}
_STATIC_NAME = {
    b":status": 8,
    b"content-type": 31,
    b"content-length": 28,
    b"date": 33,
    b"server": 54,
}


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0) + value


def encode_headers(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """One header block for ``fields`` (lower-case names), decodable by any HPACK decoder in any state."""
    block = bytearray()
    for name, value in fields:
        index = _STATIC_FULL.get((name, value))
        if index is not None:
            block += _integer(index, 7, 0x80)
            continue
        name_index = _STATIC_NAME.get(name)
        if name_index is not None:
            block += _integer(name_index, 4, 0x00)
        else:
            block += b"\x00" + _string(name)
        block += _string(value)
    return bytes(block)
