"""HPACK decoding of request headers (RFC 7541), fast on what gRPC clients send call after call.

The ``hpack`` package decodes correctly but costs about 16 µs for a gRPC call's nine fields, a large share of
a whole call. This decoder keeps its own dynamic table and takes the static table and the Huffman code from
``hpack``. A header block made only of indexed fields (a client re-sending the same headers) decodes to the
same list while the dynamic table is unchanged, so such blocks are remembered per table generation.
"""

from __future__ import annotations

from collections import deque

from hpack import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

Header = tuple[bytes, bytes]
STATIC: tuple[Header, ...] = HeaderTable.STATIC_TABLE
_STATIC_COUNT = len(STATIC)
ENTRY_OVERHEAD = 32  # section 4.1
_MAX_INTEGER_BYTES = 5  # beyond 2^28: no legitimate length or index is that large
_BLOCKS_KEPT = 32
_HUFFMAN_KEPT = 256


class HeaderBlockError(Exception):
    """The block breaks RFC 7541: a connection error (COMPRESSION_ERROR), the table can no longer be trusted."""


class HeaderListTooLarge(HeaderBlockError):
    """The decoded list is larger than SETTINGS_MAX_HEADER_LIST_SIZE allows."""


class Decoder:
    def __init__(self, max_table_size: int = 4096, max_list_size: int = 16 * 1024) -> None:
        self.max_allowed = max_table_size  # SETTINGS_HEADER_TABLE_SIZE as we advertised it
        self.max_size = max_table_size  # the encoder may lower it with a size update
        self.max_list_size = max_list_size
        self.size = 0
        self.entries: deque[Header] = deque()  # newest first: index 62 is entries[0]
        self.generation = 0  # bumped whenever the dynamic table changes
        self._blocks: dict[bytes, tuple[int, list[Header]]] = {}
        self._huffman: dict[bytes, bytes] = {}

    def decode(self, block: bytes) -> list[Header]:
        remembered = self._blocks.get(block)
        if remembered is not None and remembered[0] == self.generation:
            return list(remembered[1])
        headers: list[Header] = []
        position, end = 0, len(block)
        listed = 0
        indexed_only = True
        while position < end:
            first = block[position]
            if first & 0x80:  # indexed field (6.1)
                index, position = _integer(block, position, 7)
                field = self._field(index)
            elif first & 0x40:  # literal with incremental indexing (6.2.1)
                field, position = self._literal(block, position, 6)
                self._add(field)
                indexed_only = False
            elif first & 0x20:  # dynamic table size update (6.3)
                if headers:
                    raise HeaderBlockError("a dynamic table size update after the first field")
                size, position = _integer(block, position, 5)
                if size > self.max_allowed:
                    raise HeaderBlockError(f"table size {size} above SETTINGS_HEADER_TABLE_SIZE {self.max_allowed}")
                self.max_size = size
                self._evict()
                self.generation += 1
                indexed_only = False
                continue
            else:  # literal without indexing (6.2.2) or never indexed (6.2.3)
                field, position = self._literal(block, position, 4)
                indexed_only = False
            listed += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if listed > self.max_list_size:
                raise HeaderListTooLarge(f"header list larger than {self.max_list_size} bytes")
            headers.append(field)
        if indexed_only:
            if len(self._blocks) >= _BLOCKS_KEPT:
                self._blocks.clear()
            self._blocks[block] = (self.generation, headers)
            return list(headers)
        return headers

    def _field(self, index: int) -> Header:
        if index == 0:
            raise HeaderBlockError("index 0")
        if index <= _STATIC_COUNT:
            return STATIC[index - 1]
        dynamic = index - _STATIC_COUNT - 1
        if dynamic >= len(self.entries):
            raise HeaderBlockError(f"index {index} is beyond the dynamic table ({len(self.entries)} entries)")
        return self.entries[dynamic]

    def _literal(self, block: bytes, position: int, prefix: int) -> tuple[Header, int]:
        index, position = _integer(block, position, prefix)
        if index:
            name = self._field(index)[0]
        else:
            name, position = self._string(block, position)
        value, position = self._string(block, position)
        return (name, value), position

    def _string(self, block: bytes, position: int) -> tuple[bytes, int]:
        if position >= len(block):
            raise HeaderBlockError("the block ends inside a field")
        huffman = block[position] & 0x80
        length, position = _integer(block, position, 7)
        end = position + length
        if end > len(block):
            raise HeaderBlockError("a string runs past the end of the block")
        raw = block[position:end]
        if not huffman:
            return raw, end
        decoded = self._huffman.get(raw)
        if decoded is None:
            try:
                decoded = decode_huffman(raw)
            except HPACKDecodingError as exc:
                raise HeaderBlockError(f"bad Huffman code: {exc}") from None
            if len(self._huffman) >= _HUFFMAN_KEPT:
                self._huffman.clear()
            self._huffman[raw] = decoded
        return decoded, end

    def _add(self, field: Header) -> None:
        self.generation += 1
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self.max_size:  # not an error: the table is emptied (4.4)
            self.entries.clear()
            self.size = 0
            return
        self.entries.appendleft(field)
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.entries.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD


def _integer(block: bytes, position: int, prefix: int) -> tuple[int, int]:
    """An integer with a ``prefix``-bit prefix at ``position`` (5.1); returns it and the next position."""
    mask = (1 << prefix) - 1
    value = block[position] & mask
    position += 1
    if value < mask:
        return value, position
    shift = 0
    for _ in range(_MAX_INTEGER_BYTES):
        if position >= len(block):
            raise HeaderBlockError("the block ends inside an integer")
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise HeaderBlockError("an integer longer than 5 bytes")
