"""The relay's header scanner: boundaries, counts and captures survive any chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.pgwire.errors import ProtocolError
from pgbalancer.pgwire.scan import HeaderScanner


def frame(message_type: bytes, body: bytes) -> bytes:
    return message_type + (len(body) + 4).to_bytes(4, "big") + body


STREAM = (
    frame(b"T", b"\x00\x01a\x00" + b"\x00" * 18)
    + frame(b"D", b"\x00\x01\x00\x00\x00\x011")
    + frame(b"S", b"TimeZone\x00UTC\x00")
    + frame(b"C", b"SELECT 1\x00")
    + frame(b"Z", b"T")
)


def scan_in_chunks(stream: bytes, cuts: list[int]) -> tuple[HeaderScanner, list[tuple[bytes, bytes, int]]]:
    scanner = HeaderScanner(capture=b"ZS", count=b"DZ")
    captured: list[tuple[bytes, bytes, int]] = []
    offset = 0
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        for message in scanner.feed(memoryview(stream)[start:end]):
            captured.append((message.type, message.body, offset + message.end))
        offset = end
    return scanner, captured


def test_whole_stream_in_one_chunk() -> None:
    scanner, captured = scan_in_chunks(STREAM, [])
    end_of_parameter_status = STREAM.index(frame(b"C", b"SELECT 1\x00"))
    assert captured == [(b"S", b"TimeZone\x00UTC\x00", end_of_parameter_status), (b"Z", b"T", len(STREAM))]
    assert scanner.at_boundary
    assert scanner.counts == {ord("D"): 1, ord("Z"): 1}
    assert scanner.last_type == ord("Z")
    assert scanner.previous_type == ord("C")


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking_gives_the_same_result(raw_cuts: list[int]) -> None:
    cuts = sorted(set(raw_cuts) - {0, len(STREAM)})
    scanner, captured = scan_in_chunks(STREAM, cuts)
    whole_scanner, whole_captured = scan_in_chunks(STREAM, [])
    assert captured == whole_captured
    assert scanner.counts == whole_scanner.counts
    assert scanner.at_boundary


@given(st.integers(min_value=1, max_value=len(STREAM) - 1))
def test_a_partial_stream_is_not_at_a_boundary_unless_cut_between_messages(cut: int) -> None:
    scanner = HeaderScanner()
    scanner.feed(STREAM[:cut])
    boundaries = {0}
    position = 0
    while position < len(STREAM):
        position += 1 + int.from_bytes(STREAM[position + 1 : position + 5], "big")
        boundaries.add(position)
    assert scanner.at_boundary == (cut in boundaries)


def test_empty_bodies_complete_immediately() -> None:
    scanner = HeaderScanner(capture=b"X", count=b"S")
    captured = scanner.feed(frame(b"S", b"") + frame(b"X", b""))
    assert [(m.type, m.end) for m in captured] == [(b"X", 10)]
    assert scanner.counts[ord("S")] == 1


@pytest.mark.parametrize("length", [0, 3, 2**31 - 1])
def test_bad_lengths_raise_protocol_error(length: int) -> None:
    scanner = HeaderScanner(max_message_size=1 << 20)
    with pytest.raises(ProtocolError):
        scanner.feed(b"Q" + length.to_bytes(4, "big"))


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=5))
def test_garbage_raises_only_protocol_error(data: bytes, raw_cuts: list[int]) -> None:
    scanner = HeaderScanner(capture=b"ZSX", count=b"QS", max_message_size=1 << 16)
    cuts = sorted({c for c in raw_cuts if 0 < c < len(data)})
    try:
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            scanner.feed(data[start:end])
    except ProtocolError:
        pass
