"""Our HPACK decoder (RFC 7541) against the hpack package's encoder and decoder, and on malformed blocks."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_module.http2.hpack_decode import Decoder, HeaderBlockError, HeaderListTooLarge
from edge_module.http2.hpack_encode import encode_headers

Headers = list[tuple[bytes, bytes]]
names = st.sampled_from([b":path", b"content-type", b"grpc-timeout", b"authorization", b"x-custom", b"user-agent"])
header_lists = st.lists(st.tuples(names, st.binary(max_size=300)), min_size=1, max_size=8)
blocks = st.lists(
    st.tuples(header_lists, st.booleans(), st.sampled_from([None, 0, 64, 256, 4096])), min_size=1, max_size=12
)


@settings(max_examples=200, deadline=None)
@given(sequence=blocks)
def test_decodes_what_hpack_encodes_block_after_block(sequence: list[tuple[Headers, bool, int | None]]) -> None:
    """Indexed, literal (incremental, without and never indexed) fields, Huffman or not, table size updates
    (6.3) and evictions (4.4): the same headers and the same dynamic table as hpack's own decoder."""
    encoder, reference, ours = hpack.Encoder(), hpack.Decoder(), Decoder(4096, 1 << 20)
    for headers, huffman, table_size in sequence:
        if table_size is not None:
            encoder.header_table_size = table_size  # the next block starts with a size update
        fields = [hpack.NeverIndexedHeaderTuple(n, v) if n == b"authorization" else (n, v) for n, v in headers]
        block = encoder.encode(fields, huffman=huffman)
        expected = [(bytes(n), bytes(v)) for n, v in reference.decode(block, raw=True)]
        assert ours.decode(block) == expected == headers
        assert ours.size == reference.header_table._current_size  # hpack keeps it private
        assert list(ours.entries) == [(bytes(n), bytes(v)) for n, v in reference.header_table.dynamic_entries]


def test_a_remembered_block_is_not_used_once_the_table_changed() -> None:
    encoder, ours = hpack.Encoder(), Decoder()
    first = [(b":path", b"/a"), (b"x-id", b"1")]
    ours.decode(encoder.encode(first))
    repeat = encoder.encode(first)  # now indexed only: remembered
    assert ours.decode(repeat) == first and ours.decode(repeat) == first
    # Another block inserts two entries in front: the same indexes now mean other fields.
    ours.decode(encoder.encode([(b":path", b"/b"), (b"x-id", b"2")]))
    assert ours.decode(repeat) == [(b":path", b"/b"), (b"x-id", b"2")]


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"\x80", "index 0"),
        (b"\xff\x00", "beyond the dynamic table"),  # index 127+0 with an empty table
        (b"\xff\xff\xff\xff\xff\xff\x01", "longer than 5 bytes"),
        (b"\x40\x03ab", "past the end"),  # a literal name of 3 bytes with 2 present
        (b"\x40", "ends inside a field"),
        (b"\x3f\xe2\x1f", "above SETTINGS_HEADER_TABLE_SIZE"),  # a size update to 4097
        (b"\x82\x20", "after the first field"),  # :method GET, then a size update
        (b"\x00\x81\xff\x01a", "Huffman"),  # a name of one byte of Huffman code that is all padding 1s: EOS-like
        (b"\x7f", "ends inside an integer"),
    ],
)
def test_malformed_blocks_are_header_block_errors(block: bytes, reason: str) -> None:
    with pytest.raises(HeaderBlockError, match=reason):
        Decoder().decode(block)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_header_block_error_only(block: bytes) -> None:
    try:
        headers = Decoder(max_list_size=4096).decode(block)
    except HeaderBlockError:
        return
    assert all(isinstance(name, bytes) and isinstance(value, bytes) for name, value in headers)


def test_an_oversized_header_list_is_refused() -> None:
    block = hpack.Encoder().encode([(b"x-big", b"v" * 20_000)], huffman=False)
    with pytest.raises(HeaderListTooLarge):
        Decoder(max_list_size=16 * 1024).decode(block)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b":status", b"content-type", b"grpc-status", b"grpc-message"]) | names,
            st.binary(max_size=400),
        ),
        max_size=6,
    )
)
def test_our_response_encoding_decodes_with_hpack(headers: Headers) -> None:
    """Stateless encoding: any decoder in any table state reads it, and nothing enters its table."""
    decoder = hpack.Decoder()
    decoder.decode(hpack.Encoder().encode([(b"x-earlier", b"fills the table")]))
    entries = len(decoder.header_table.dynamic_entries)
    assert [(bytes(n), bytes(v)) for n, v in decoder.decode(encode_headers(headers), raw=True)] == headers
    assert len(decoder.header_table.dynamic_entries) == entries
