"""MessageReader and StartupReader: framing, limits, EOF handling, and chunking properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.pgwire.errors import ProtocolError, SqlState
from pgbalancer.pgwire.framing import (
    CLOSED,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_STARTUP_PACKET_SIZE,
    NEED_DATA,
    Message,
    MessageReader,
    StartupReader,
    encode_message,
)
from pgbalancer.pgwire.messages import (
    PROTOCOL_VERSION_3,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    query,
)

READY_IDLE = b"Z\x00\x00\x00\x05I"
ALICE_STARTUP = StartupMessage(PROTOCOL_VERSION_3, {"user": "alice", "database": "app"})

Event = object


def drain(reader: MessageReader | StartupReader) -> list[Event]:
    """Every event up to and including the first NEED_DATA or CLOSED."""
    events: list[Event] = []
    while True:
        event = reader.next_event()
        events.append(event)
        if event is NEED_DATA or event is CLOSED:
            return events


# --------------------------------------------------------------------------- MessageReader


def test_message_encode_matches_golden_bytes() -> None:
    assert Message(b"Z", b"I").encode() == READY_IDLE
    assert encode_message(b"Z", b"I") == READY_IDLE


def test_reader_splits_concatenated_messages() -> None:
    reader = MessageReader()
    reader.receive_data(READY_IDLE + query("SELECT 1") + b"X\x00\x00\x00\x04")
    assert drain(reader) == [
        Message(b"Z", b"I"),
        Message(b"Q", b"SELECT 1\x00"),
        Message(b"X", b""),
        NEED_DATA,
    ]
    assert reader.buffered == 0


def test_reader_waits_for_partial_header_and_body() -> None:
    reader = MessageReader()
    reader.receive_data(b"Q\x00\x00")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\x00\x0dSELECT")
    assert reader.next_event() is NEED_DATA
    assert reader.buffered == 11
    reader.receive_data(bytearray(b" 1\x00Z"))
    assert reader.next_event() == Message(b"Q", b"SELECT 1\x00")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(memoryview(b"\x00\x00\x00\x05T"))
    assert reader.next_event() == Message(b"Z", b"T")


def test_reader_reports_clean_close_repeatedly() -> None:
    reader = MessageReader()
    reader.receive_data(READY_IDLE)
    reader.receive_data(b"")
    assert drain(reader) == [Message(b"Z", b"I"), CLOSED]
    assert reader.next_event() is CLOSED


@pytest.mark.parametrize("partial", [b"Z", b"Z\x00\x00\x00\x05", b"Q\x00\x00\x00\x0dSEL"])
def test_reader_eof_inside_a_message_is_a_protocol_error(partial: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(partial)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle of a message"):
        reader.next_event()


def test_reader_refuses_data_after_eof() -> None:
    reader = MessageReader()
    reader.receive_data(b"")
    with pytest.raises(RuntimeError):
        reader.receive_data(READY_IDLE)


@pytest.mark.parametrize("length", [0, 3])
def test_reader_rejects_length_below_four(length: int) -> None:
    reader = MessageReader()
    reader.receive_data(b"Q" + length.to_bytes(4, "big"))
    with pytest.raises(ProtocolError) as info:
        reader.next_event()
    assert info.value.sqlstate == SqlState.PROTOCOL_VIOLATION


def test_two_gigabyte_length_fails_as_soon_as_the_header_is_in() -> None:
    reader = MessageReader()
    header = b"D" + (2 * 1024**3).to_bytes(4, "big")
    for byte in header[:-1]:
        reader.receive_data(bytes([byte]))
        assert reader.next_event() is NEED_DATA
    reader.receive_data(header[-1:])
    with pytest.raises(ProtocolError, match="invalid message length"):
        reader.next_event()


@given(length=st.integers(DEFAULT_MAX_MESSAGE_SIZE + 1, 2**32 - 1))
def test_any_oversized_length_fails_without_its_body(length: int) -> None:
    reader = MessageReader()
    reader.receive_data(b"d" + length.to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        reader.next_event()


def test_reader_honours_a_custom_max_message_size() -> None:
    reader = MessageReader(max_message_size=16)
    reader.receive_data(encode_message(b"d", b"x" * 12) + b"d\x00\x00\x00\x11")
    assert reader.next_event() == Message(b"d", b"x" * 12)
    with pytest.raises(ProtocolError):
        reader.next_event()


def test_take_buffered_hands_over_unparsed_bytes() -> None:
    reader = MessageReader()
    reader.receive_data(READY_IDLE + b"D\x00\x00\x00\x10partial")
    assert reader.next_event() == Message(b"Z", b"I")
    assert reader.next_event() is NEED_DATA
    assert reader.take_buffered() == b"D\x00\x00\x00\x10partial"
    assert reader.buffered == 0
    assert reader.next_event() is NEED_DATA


def test_reader_drains_many_small_messages_from_one_chunk() -> None:
    count = 50_000
    reader = MessageReader()
    reader.receive_data(READY_IDLE * count + b"Z\x00")
    events = drain(reader)
    assert len(events) == count + 1
    assert events[-1] is NEED_DATA
    assert reader.buffered == 2
    reader.receive_data(b"\x00\x00\x05E")  # the consumed prefix is dropped here
    assert reader.next_event() == Message(b"Z", b"E")


# --------------------------------------------------------------------------- StartupReader


def test_startup_reader_reads_ssl_request_then_startup_message() -> None:
    reader = StartupReader()
    reader.receive_data(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    assert reader.next_event() == SSLRequest()
    assert reader.next_event() is NEED_DATA
    reader.receive_data(ALICE_STARTUP.encode())
    assert reader.next_event() == ALICE_STARTUP


def test_startup_reader_hands_pipelined_messages_to_a_message_reader() -> None:
    reader = StartupReader()
    reader.receive_data(ALICE_STARTUP.encode() + query("SELECT 1"))
    assert reader.next_event() == ALICE_STARTUP
    assert reader.buffered == len(query("SELECT 1"))
    messages = MessageReader()
    messages.receive_data(reader.take_buffered())
    assert messages.next_event() == Message(b"Q", b"SELECT 1\x00")


@pytest.mark.parametrize("length", [0, 7, MAX_STARTUP_PACKET_SIZE + 5, 2**31, 2**32 - 1])
def test_startup_reader_rejects_bad_lengths_from_the_length_word_alone(length: int) -> None:
    reader = StartupReader()
    reader.receive_data(length.to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="invalid length of startup packet"):
        reader.next_event()


def test_startup_reader_accepts_the_largest_packet_postgresql_accepts() -> None:
    padding = "x" * (MAX_STARTUP_PACKET_SIZE - 4 - len("user\0alice\0application_name\0\0\0"))
    startup = StartupMessage(PROTOCOL_VERSION_3, {"user": "alice", "application_name": padding})
    wire = startup.encode()
    assert int.from_bytes(wire[:4], "big") == MAX_STARTUP_PACKET_SIZE + 4
    reader = StartupReader()
    reader.receive_data(wire)
    assert reader.next_event() == startup


def test_startup_reader_eof() -> None:
    clean = StartupReader()
    clean.receive_data(b"")
    assert clean.next_event() is CLOSED
    truncated = StartupReader()
    truncated.receive_data(ALICE_STARTUP.encode()[:10])
    truncated.receive_data(b"")
    with pytest.raises(ProtocolError, match="incomplete startup packet"):
        truncated.next_event()


def test_startup_reader_propagates_content_errors_with_their_sqlstate() -> None:
    reader = StartupReader()
    reader.receive_data(b"\x00\x00\x00\x08\x00\x02\x00\x00")
    with pytest.raises(ProtocolError) as info:
        reader.next_event()
    assert info.value.sqlstate == SqlState.FEATURE_NOT_SUPPORTED


# --------------------------------------------------------------------------- properties

_messages = st.lists(
    st.builds(Message, type=st.binary(min_size=1, max_size=1), body=st.binary(max_size=300)), max_size=20
)
_param_text = st.text(st.characters(exclude_characters="\x00", codec="utf-8"), max_size=20)
_uint32 = st.integers(0, 2**32 - 1)
_startup_packets: st.SearchStrategy[StartupPacket] = st.one_of(
    st.just(SSLRequest()),
    st.just(GSSENCRequest()),
    st.builds(CancelRequest, _uint32, _uint32),
    st.builds(
        lambda user, extra, minor: StartupMessage((3 << 16) | minor, {"user": user, **extra}),
        _param_text.filter(bool),
        st.dictionaries(
            _param_text.filter(lambda name: bool(name) and name != "user"), _param_text, max_size=5
        ),
        st.integers(0, 3),
    ),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


def _read_all(reader: MessageReader | StartupReader, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in [*chunks, b""]:
        reader.receive_data(chunk)
        events.extend(e for e in drain(reader) if e is not NEED_DATA)
    return events


@given(messages=_messages, cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_of_a_message_stream_yields_the_same_messages(
    messages: list[Message], cuts: list[int]
) -> None:
    stream = b"".join(m.encode() for m in messages)
    assert _read_all(MessageReader(), _chunks(stream, cuts)) == [*messages, CLOSED]


@pytest.mark.slow
@given(packets=st.lists(_startup_packets, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_of_startup_packets_yields_the_same_packets(
    packets: list[StartupPacket], cuts: list[int]
) -> None:
    stream = b"".join(p.encode() for p in packets)
    assert _read_all(StartupReader(), _chunks(stream, cuts)) == [*packets, CLOSED]


@given(garbage=st.binary(max_size=400), cuts=st.lists(st.integers(0, 500), max_size=20), small=st.booleans())
def test_garbage_never_raises_anything_but_protocol_error(
    garbage: bytes, cuts: list[int], small: bool
) -> None:
    readers: list[MessageReader | StartupReader] = [
        MessageReader(max_message_size=64) if small else MessageReader(),
        StartupReader(max_packet_size=64) if small else StartupReader(),
    ]
    for reader in readers:
        try:
            events = _read_all(reader, _chunks(garbage, cuts))
        except ProtocolError:
            continue
        assert events[-1] is CLOSED


@given(prefix=st.binary(min_size=4, max_size=4))
def test_startup_reader_decides_any_length_word_without_more_data(prefix: bytes) -> None:
    reader = StartupReader()
    reader.receive_data(prefix)
    length = int.from_bytes(prefix, "big")
    if 8 <= length <= MAX_STARTUP_PACKET_SIZE + 4:
        assert reader.next_event() is NEED_DATA
    else:
        with pytest.raises(ProtocolError):
            reader.next_event()
