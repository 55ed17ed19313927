"""ResponseRouter: which server reply goes to the client, which is dropped, which is made up.

Server byte streams are golden bytes built with ``frame``; a property test checks that any
chunking of a realistic exchange gives the client the same bytes as feeding it whole, and another
that feed's fast path (whole, plainly forwarded messages) changes nothing the general path does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.pgwire.errors import ProtocolError
from pgbalancer.pgwire.responses import Piece, Request, ResponseRouter, _Output


def frame(kind: bytes, body: bytes = b"") -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


PARSE_COMPLETE = frame(b"1")
BIND_COMPLETE = frame(b"2")
CLOSE_COMPLETE = frame(b"3")
NO_DATA = frame(b"n")
EMPTY_QUERY = frame(b"I")
PORTAL_SUSPENDED = frame(b"s")
PARAMETER_DESCRIPTION = frame(b"t", b"\x00\x01\x00\x00\x00\x17")  # one int4 parameter
ROW_DESCRIPTION = frame(
    b"T",
    b"\x00\x01" + b"n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00" + b"\x00\x00\x00\x17" + b"\x00\x04"
    b"\xff\xff\xff\xff" + b"\x00\x00",
)
DATA_ROW = frame(b"D", b"\x00\x01\x00\x00\x00\x011")
SELECT_1 = frame(b"C", b"SELECT 1\x00")
COPY_OUT = frame(b"H", b"\x00\x00\x01\x00\x00")
COPY_DATA = frame(b"d", b"1\n")
COPY_DONE = frame(b"c")
COPY_1 = frame(b"C", b"COPY 1\x00")
FUNCTION_RESULT = frame(b"V", b"\x00\x00\x00\x011")
NOTICE = frame(b"N", b"SNOTICE\x00C00000\x00Mhello\x00\x00")
NOTIFICATION = frame(b"A", b"\x00\x00\x00\x2achannel\x00payload\x00")
APP_NAME_REPORT = frame(b"S", b"application_name\x00psql\x00")
ERROR = frame(b"E", b"SERROR\x00C22012\x00Mdivision by zero\x00\x00")


def ready(status: bytes = b"I") -> bytes:
    return frame(b"Z", status)


def joined(pieces: list[Piece]) -> bytes:
    return b"".join(pieces)


def router_recording_failures() -> tuple[ResponseRouter, list[object]]:
    failed: list[object] = []
    return ResponseRouter(on_request_lost=failed.append), failed


def expect_all(router: ResponseRouter, *requests: Request) -> None:
    for request in requests:
        router.expect(request)


# --------------------------------------------------------------------------- golden helpers


def test_frame_helper_builds_golden_bytes() -> None:
    assert PARSE_COMPLETE == b"1\x00\x00\x00\x04"
    assert ready(b"T") == b"Z\x00\x00\x00\x05T"


# --------------------------------------------------------------------------- plain forwarding


def test_simple_query_reply_is_forwarded_as_one_slice_of_the_chunk() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    chunk = ROW_DESCRIPTION + DATA_ROW + SELECT_1 + ready()
    pieces = router.feed(chunk)
    assert joined(pieces) == chunk
    assert len(pieces) == 1
    assert isinstance(pieces[0], memoryview) and pieces[0].obj is chunk


def test_ready_for_query_completes_the_query_and_reports_its_status() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    router.feed(SELECT_1)
    assert router.outstanding == 1
    router.feed(ready(b"T"))
    assert router.outstanding == 0
    assert router.ready_statuses == [b"T"]
    assert router.last_ready_status == b"T"
    assert router.at_boundary


def test_ready_statuses_list_only_the_last_feed() -> None:
    router = ResponseRouter()
    expect_all(router, Request.QUERY, Request.QUERY)
    router.feed(SELECT_1 + ready(b"T") + SELECT_1 + ready(b"E"))
    assert router.ready_statuses == [b"T", b"E"]
    router.feed(NOTICE)
    assert router.ready_statuses == []
    assert router.last_ready_status == b"E"


def test_memoryview_chunks_are_sliced_not_copied() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    buffer = bytearray(SELECT_1 + ready() + b"unused tail")
    pieces = router.feed(memoryview(buffer)[: len(SELECT_1) + 6])
    assert joined(pieces) == SELECT_1 + ready()
    assert all(isinstance(piece, memoryview) and piece.obj is buffer for piece in pieces)


def test_function_call_reply_ends_at_ready_for_query() -> None:
    router = ResponseRouter()
    router.expect(Request.FUNCTION_CALL)
    router.feed(FUNCTION_RESULT)
    assert router.outstanding == 1
    router.feed(ready())
    assert router.outstanding == 0


def test_server_message_with_nothing_queued_is_forwarded() -> None:
    router = ResponseRouter()
    fatal = frame(b"E", b"SFATAL\x00C57P01\x00Mterminating connection\x00\x00")
    assert joined(router.feed(fatal)) == fatal
    assert router.outstanding == 0


def test_message_split_anywhere_is_not_complete_until_its_last_byte() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    stream = ready(b"T")
    out = bytearray()
    boundaries = []
    for piece in (stream[:3], stream[3:5], stream[5:]):
        out += joined(router.feed(piece))
        boundaries.append((router.at_boundary, router.outstanding))
    assert out == stream
    assert boundaries == [(False, 1), (False, 1), (True, 0)]
    assert router.last_ready_status == b"T"


# --------------------------------------------------------------------------- ParameterStatus


def test_parameter_status_is_reported_and_forwarded() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    chunk = frame(b"C", b"SET\x00") + APP_NAME_REPORT + ready()
    assert joined(router.feed(chunk)) == chunk
    assert router.parameter_changes == [("application_name", "psql")]


def test_parameter_status_split_across_feeds_is_reported_once_complete() -> None:
    router = ResponseRouter()
    router.feed(APP_NAME_REPORT[:9])
    assert router.parameter_changes == []
    router.feed(APP_NAME_REPORT[9:])
    assert router.parameter_changes == [("application_name", "psql")]


def test_parameter_status_with_an_empty_value() -> None:
    router = ResponseRouter()
    router.feed(frame(b"S", b"application_name\x00\x00"))
    assert router.parameter_changes == [("application_name", "")]


def test_asynchronous_messages_consume_no_request() -> None:
    router = ResponseRouter()
    expect_all(router, Request.PARSE, Request.BIND)
    chunk = NOTICE + PARSE_COMPLETE + NOTIFICATION + APP_NAME_REPORT + BIND_COMPLETE
    router.feed(NOTICE + NOTIFICATION + APP_NAME_REPORT)
    assert router.outstanding == 2
    assert joined(router.feed(chunk[len(NOTICE) :])) == chunk[len(NOTICE) :]
    assert router.outstanding == 0


def test_asynchronous_messages_pass_while_an_injected_request_is_answered() -> None:
    router = ResponseRouter()
    router.expect(Request.PARSE, forward=False)
    router.expect(Request.BIND)
    out = router.feed(NOTICE + PARSE_COMPLETE + NOTIFICATION + BIND_COMPLETE)
    assert joined(out) == NOTICE + NOTIFICATION + BIND_COMPLETE


# --------------------------------------------------------------------------- injected and synthetic replies


def test_reply_to_an_injected_parse_is_dropped() -> None:
    router = ResponseRouter()
    router.expect(Request.PARSE, forward=False)
    expect_all(router, Request.BIND, Request.EXECUTE, Request.SYNC)
    chunk = PARSE_COMPLETE + BIND_COMPLETE + SELECT_1 + ready()
    pieces = router.feed(chunk)
    assert joined(pieces) == BIND_COMPLETE + SELECT_1 + ready()
    assert all(isinstance(piece, memoryview) and piece.obj is chunk for piece in pieces)
    assert router.outstanding == 0


def test_injected_close_reply_is_dropped_between_forwarded_replies() -> None:
    router = ResponseRouter()
    router.expect(Request.BIND)
    router.expect(Request.CLOSE, forward=False)
    router.expect(Request.PARSE)
    assert joined(router.feed(BIND_COMPLETE + CLOSE_COMPLETE + PARSE_COMPLETE)) == (
        BIND_COMPLETE + PARSE_COMPLETE
    )


def test_synthetic_reply_goes_out_exactly_before_the_next_reply() -> None:
    router = ResponseRouter()
    router.expect(Request.PARSE)
    router.reply_locally(PARSE_COMPLETE)
    router.expect(Request.BIND)
    assert router.due_replies() == []
    pieces = router.feed(PARSE_COMPLETE + BIND_COMPLETE)
    assert [bytes(piece) for piece in pieces] == [PARSE_COMPLETE, PARSE_COMPLETE, BIND_COMPLETE]
    assert isinstance(pieces[0], memoryview) and isinstance(pieces[2], memoryview)


def test_synthetic_reply_is_due_at_once_when_nothing_is_awaited_before_it() -> None:
    router = ResponseRouter()
    router.reply_locally(PARSE_COMPLETE)  # a Parse answered locally, then Flush
    assert router.outstanding == 1
    assert joined(router.due_replies()) == PARSE_COMPLETE
    assert router.outstanding == 0
    assert router.due_replies() == []


def test_synthetic_reply_is_due_once_the_reply_before_it_arrived() -> None:
    router = ResponseRouter()
    router.expect(Request.BIND)
    router.reply_locally(CLOSE_COMPLETE)
    assert joined(router.feed(BIND_COMPLETE)) == BIND_COMPLETE + CLOSE_COMPLETE
    assert router.outstanding == 0


def test_synthetic_reply_waits_while_the_reply_before_it_is_incomplete() -> None:
    router = ResponseRouter()
    router.expect(Request.EXECUTE)
    router.reply_locally(CLOSE_COMPLETE)
    assert joined(router.feed(DATA_ROW + SELECT_1[:7])) == DATA_ROW  # the partial reply is held back
    assert router.client_at_boundary and not router.at_boundary
    assert joined(router.feed(SELECT_1[7:])) == SELECT_1 + CLOSE_COMPLETE


def test_small_partial_replies_are_held_whole_so_the_client_stream_stays_between_messages() -> None:
    router = ResponseRouter()
    router.expect(Request.EXECUTE)
    stream = DATA_ROW + DATA_ROW + SELECT_1
    for cut in range(1, len(stream)):
        router = ResponseRouter()
        router.expect(Request.EXECUTE)
        first = joined(router.feed(stream[:cut]))
        assert router.client_at_boundary  # a FATAL could be appended here without corrupting anything
        assert first + joined(router.feed(stream[cut:])) == stream


def test_a_large_reply_streams_through_without_being_held() -> None:
    router = ResponseRouter()
    router.expect(Request.EXECUTE)
    big_row = frame(b"D", b"\x00\x01" + (200_000).to_bytes(4, "big") + b"x" * 200_000)
    first = joined(router.feed(big_row[:1000]))
    assert first == big_row[:1000]
    assert not router.client_at_boundary


def test_synthetic_reply_precedes_an_asynchronous_message_that_follows_its_turn() -> None:
    router = ResponseRouter()
    router.expect(Request.BIND)
    router.reply_locally(PARSE_COMPLETE)
    router.expect(Request.SYNC)
    out = router.feed(BIND_COMPLETE + NOTICE + ready())
    assert joined(out) == BIND_COMPLETE + PARSE_COMPLETE + NOTICE + ready()


# --------------------------------------------------------------------------- per-request endings


def test_describe_statement_ends_after_parameter_description_and_row_description() -> None:
    router = ResponseRouter()
    expect_all(router, Request.DESCRIBE_STATEMENT, Request.SYNC)
    router.feed(PARAMETER_DESCRIPTION)
    assert router.outstanding == 2
    router.feed(ROW_DESCRIPTION)
    assert router.outstanding == 1


def test_describe_statement_ends_after_parameter_description_and_no_data() -> None:
    router = ResponseRouter()
    router.expect(Request.DESCRIBE_STATEMENT, forward=False)
    router.expect(Request.SYNC)
    assert joined(router.feed(PARAMETER_DESCRIPTION + NO_DATA + ready())) == ready()
    assert router.outstanding == 0


@pytest.mark.parametrize("description", [ROW_DESCRIPTION, NO_DATA])
def test_describe_portal_ends_at_its_description(description: bytes) -> None:
    router = ResponseRouter()
    expect_all(router, Request.DESCRIBE_PORTAL, Request.SYNC)
    router.feed(description)
    assert router.outstanding == 1


@pytest.mark.parametrize(
    "reply",
    [DATA_ROW + SELECT_1, EMPTY_QUERY, DATA_ROW + PORTAL_SUSPENDED],
    ids=["CommandComplete", "EmptyQueryResponse", "PortalSuspended"],
)
def test_execute_ends_at_its_completion(reply: bytes) -> None:
    router = ResponseRouter()
    expect_all(router, Request.EXECUTE, Request.SYNC)
    assert joined(router.feed(reply)) == reply
    assert router.outstanding == 1


def test_close_and_bind_end_at_their_completions() -> None:
    router = ResponseRouter()
    expect_all(router, Request.BIND, Request.CLOSE, Request.SYNC)
    router.feed(BIND_COMPLETE + CLOSE_COMPLETE)
    assert router.outstanding == 1


def test_copy_out_inside_execute_ends_at_command_complete() -> None:
    router = ResponseRouter()
    expect_all(router, Request.EXECUTE, Request.SYNC)
    router.feed(COPY_OUT + COPY_DATA + COPY_DATA + COPY_DONE)
    assert router.outstanding == 2
    router.feed(COPY_1)
    assert router.outstanding == 1
    router.feed(ready())
    assert router.outstanding == 0


def test_copy_out_inside_a_query_ends_at_ready_for_query() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    chunk = COPY_OUT + COPY_DATA + COPY_DONE + COPY_1
    assert joined(router.feed(chunk)) == chunk
    assert router.outstanding == 1
    router.feed(ready())
    assert router.outstanding == 0


# --------------------------------------------------------------------------- errors


def test_error_in_a_simple_query_does_not_skip_later_requests() -> None:
    router = ResponseRouter()
    expect_all(router, Request.QUERY, Request.QUERY)
    router.feed(ERROR + ready())
    assert router.outstanding == 1
    router.feed(SELECT_1 + ready())
    assert router.outstanding == 0


def test_error_mid_pipeline_discards_the_entries_up_to_sync() -> None:
    router, failed = router_recording_failures()
    router.expect(Request.PARSE, token="first")
    router.expect(Request.BIND)
    router.reply_locally(PARSE_COMPLETE)  # a later Parse the proxy answered itself
    router.expect(Request.PARSE, forward=False, token="injected")
    expect_all(router, Request.BIND, Request.EXECUTE, Request.SYNC, Request.QUERY)
    out = router.feed(PARSE_COMPLETE + ERROR + ready(b"I"))
    assert joined(out) == PARSE_COMPLETE + ERROR + ready(b"I")  # no synthetic ParseComplete
    assert failed == ["injected"]
    assert router.outstanding == 1
    router.feed(SELECT_1 + ready())
    assert router.outstanding == 0


def test_failed_parse_is_reported_with_the_parses_it_made_the_server_skip() -> None:
    router, failed = router_recording_failures()
    router.expect(Request.PARSE, token="bad")
    router.expect(Request.BIND)
    router.expect(Request.PARSE, token="skipped")
    router.expect(Request.PARSE)  # unnamed: no token, nothing to report
    router.expect(Request.SYNC)
    router.feed(ERROR)
    assert failed == ["skipped", "bad"]  # undone last-sent-first
    assert router.outstanding == 1


def test_error_for_an_injected_parse_is_forwarded() -> None:
    router, failed = router_recording_failures()
    router.expect(Request.PARSE, forward=False, token="pgbs_x")
    expect_all(router, Request.BIND, Request.SYNC)
    assert joined(router.feed(ERROR + ready())) == ERROR + ready()
    assert failed == ["pgbs_x"]
    assert router.outstanding == 0


def test_error_on_sync_itself_waits_for_ready_for_query() -> None:
    router = ResponseRouter()
    expect_all(router, Request.EXECUTE, Request.SYNC)
    router.feed(SELECT_1 + ERROR)  # e.g. a deferred constraint failing at the implicit commit
    assert router.outstanding == 1
    router.feed(ready())
    assert router.outstanding == 0


def test_error_before_the_clients_sync_skips_until_sync_is_expected() -> None:
    router, failed = router_recording_failures()
    expect_all(router, Request.PARSE, Request.BIND, Request.EXECUTE)
    router.feed(ERROR)
    assert router.outstanding == 0
    router.expect(Request.PARSE, token="late")
    router.reply_locally(PARSE_COMPLETE)
    expect_all(router, Request.BIND, Request.DESCRIBE_STATEMENT, Request.DESCRIBE_PORTAL)
    expect_all(router, Request.EXECUTE, Request.CLOSE)
    assert failed == ["late"]
    assert router.outstanding == 0
    assert router.due_replies() == []
    router.expect(Request.SYNC)
    assert joined(router.feed(ready())) == ready()
    assert router.outstanding == 0
    router.expect(Request.PARSE)  # after Sync, requests count again
    assert router.outstanding == 1


def test_query_sent_while_skipping_to_sync_expects_no_reply() -> None:
    router = ResponseRouter()
    expect_all(router, Request.PARSE, Request.BIND, Request.EXECUTE)
    router.feed(PARSE_COMPLETE + ERROR)  # the Bind failed; the server now ignores all until Sync
    expect_all(router, Request.QUERY, Request.SYNC)
    router.feed(ready())  # PostgreSQL 15 answers only the Sync
    assert router.outstanding == 0


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("length", [0, 3, 0x7FFFFFFF, 0xFFFFFFFF])
def test_invalid_length_is_a_protocol_error(length: int) -> None:
    router = ResponseRouter()
    with pytest.raises(ProtocolError):
        router.feed(b"Z" + length.to_bytes(4, "big") + b"I")


def test_invalid_length_in_a_split_header_is_a_protocol_error() -> None:
    router = ResponseRouter()
    router.feed(b"Z\x00\x00")
    with pytest.raises(ProtocolError):
        router.feed(b"\x00\x03")


def test_message_over_the_size_limit_is_a_protocol_error() -> None:
    router = ResponseRouter(max_message_size=100)
    router.feed(frame(b"D", b"x" * 96))
    with pytest.raises(ProtocolError):
        router.feed(frame(b"D", b"x" * 97))


# --------------------------------------------------------------------------- properties


@dataclass
class Exchange:
    """Requests as the proxy registers them, the server's reply stream, what the client must see."""

    calls: list[Callable[[ResponseRouter], None]] = field(default_factory=list)
    server: bytearray = field(default_factory=bytearray)
    client: bytearray = field(default_factory=bytearray)
    statuses: list[bytes] = field(default_factory=list)
    failed_tokens: list[object] = field(default_factory=list)
    parameters: list[tuple[str, str]] = field(default_factory=list)

    def send(self, server_bytes: bytes, *, forwarded: bool = True) -> None:
        self.server += server_bytes
        if forwarded:
            self.client += server_bytes
        self.parameters += [("application_name", "psql")] * server_bytes.count(APP_NAME_REPORT)


_EXTENDED_REPLIES: dict[Request, list[bytes]] = {
    Request.PARSE: [PARSE_COMPLETE],
    Request.BIND: [BIND_COMPLETE],
    Request.DESCRIBE_STATEMENT: [PARAMETER_DESCRIPTION + ROW_DESCRIPTION, PARAMETER_DESCRIPTION + NO_DATA],
    Request.DESCRIBE_PORTAL: [ROW_DESCRIPTION, NO_DATA],
    Request.EXECUTE: [
        DATA_ROW * 3 + SELECT_1,
        EMPTY_QUERY,
        DATA_ROW + PORTAL_SUSPENDED,
        COPY_OUT + COPY_DATA * 2 + COPY_DONE + COPY_1,
    ],
    Request.CLOSE: [CLOSE_COMPLETE],
}
_QUERY_REPLIES = [
    ROW_DESCRIPTION + DATA_ROW * 2 + SELECT_1,
    ERROR,
    EMPTY_QUERY,
    COPY_OUT + COPY_DATA + COPY_DONE + COPY_1,
    frame(b"C", b"SET\x00") + APP_NAME_REPORT,
]
_ASYNC = [NOTICE, NOTIFICATION, APP_NAME_REPORT]
COPY_IN = frame(b"G", b"\x00\x00\x01\x00\x00")
# Replies the relay's probe after a Query or Sync may get; none of it reaches the client.
_PROBE_REPLIES = [
    ROW_DESCRIPTION + frame(b"D", b"\x00\x01\x00\x00\x00\x090/3000148") + SELECT_1,
    ERROR,
]


def _expect_call(request: Request, forward: bool, token: object) -> Callable[[ResponseRouter], None]:
    return lambda router: router.expect(request, forward=forward, token=token)


def _local_call(message: bytes) -> Callable[[ResponseRouter], None]:
    return lambda router: router.reply_locally(message)


@st.composite
def exchanges(draw: st.DrawFn, *, more: bool = False) -> Exchange:
    """A pipeline of extended batches and simple queries, with the server answering like PostgreSQL.

    ``more`` adds commit-LSN probes after a Query or Sync, and COPY FROM STDIN replies.
    """
    exchange = Exchange()
    query_replies = [*_QUERY_REPLIES, COPY_IN + COPY_1] if more else _QUERY_REPLIES
    skipping = False  # the server hit an error and ignores everything until Sync

    def maybe_asynchronous_message() -> None:
        # Only right before a server reply: a synthetic reply due earlier goes out before it.
        if draw(st.integers(0, 4)) == 0:
            exchange.send(draw(st.sampled_from(_ASYNC)))

    for step in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["extended", "extended", "local", "sync", "query", "function"]))
        if kind == "local":
            message = draw(st.sampled_from([PARSE_COMPLETE, CLOSE_COMPLETE]))
            exchange.calls.append(_local_call(message))
            if not skipping:
                exchange.client += message
        elif kind == "extended":
            request = draw(st.sampled_from(sorted(_EXTENDED_REPLIES)))
            forward = draw(st.booleans())
            token = f"token{step}" if request is Request.PARSE else None
            exchange.calls.append(_expect_call(request, forward, token))
            if skipping:
                if token is not None:
                    exchange.failed_tokens.append(token)
            elif draw(st.integers(0, 5)) == 0:
                maybe_asynchronous_message()
                skipping = True
                exchange.send(ERROR)  # forwarded even for an injected request
                if token is not None:
                    exchange.failed_tokens.append(token)
            else:
                maybe_asynchronous_message()
                exchange.send(draw(st.sampled_from(_EXTENDED_REPLIES[request])), forwarded=forward)
        else:
            request = {"sync": Request.SYNC, "query": Request.QUERY, "function": Request.FUNCTION_CALL}[kind]
            if skipping and request is not Request.SYNC:
                exchange.calls.append(_expect_call(request, True, None))
                continue  # the server discards it until Sync: no reply at all
            exchange.calls.append(_expect_call(request, True, None))
            skipping = False
            maybe_asynchronous_message()
            status = draw(st.sampled_from([b"I", b"T", b"E"]))
            body = b"" if request is Request.SYNC else draw(st.sampled_from(query_replies))
            if request is Request.FUNCTION_CALL:
                body = FUNCTION_RESULT
            exchange.send(body + ready(status))
            exchange.statuses.append(status)
            if more and request is not Request.FUNCTION_CALL and draw(st.integers(0, 3)) == 0:
                exchange.calls.append(ResponseRouter.expect_probe)
                exchange.send(draw(st.sampled_from(_PROBE_REPLIES)) + ready(status), forwarded=False)
                exchange.statuses.append(status)
    return exchange


@dataclass
class Outcome:
    client: bytes
    statuses: list[bytes]
    parameters: list[tuple[str, str]]
    failed_tokens: list[object]


def run_exchange(exchange: Exchange, cuts: list[int]) -> tuple[Outcome, ResponseRouter]:
    """Feed the server stream in pieces through one reused buffer, as the relay does."""
    router, failed = router_recording_failures()
    client = bytearray()
    for call in exchange.calls:
        call(router)
    client += joined(router.due_replies())
    statuses: list[bytes] = []
    parameters: list[tuple[str, str]] = []
    buffer = bytearray(max(len(exchange.server), 1))
    bounds = [0, *sorted(set(cuts)), len(exchange.server)]
    for start, end in itertools.pairwise(bounds):
        size = end - start
        buffer[:size] = exchange.server[start:end]
        client += joined(router.feed(memoryview(buffer)[:size]))  # copied before the buffer is reused
        statuses += router.ready_statuses
        parameters += router.parameter_changes
    return Outcome(bytes(client), statuses, parameters, sorted(failed, key=repr)), router


def expected_outcome(exchange: Exchange) -> Outcome:
    # Which requests were lost matters here; their order (last-sent-first) has its own test.
    lost = sorted(exchange.failed_tokens, key=repr)
    return Outcome(bytes(exchange.client), exchange.statuses, exchange.parameters, lost)


@given(exchange=exchanges(), data=st.data())
def test_any_chunking_gives_the_client_what_feeding_whole_gives(
    exchange: Exchange, data: st.DataObject
) -> None:
    size = len(exchange.server)
    cuts = data.draw(st.lists(st.integers(0, size), max_size=12))
    whole, _ = run_exchange(exchange, [])
    chunked, router = run_exchange(exchange, cuts)
    assert chunked == whole
    assert whole == expected_outcome(exchange)
    assert router.at_boundary
    assert router.outstanding == 0


class GeneralPathRouter(ResponseRouter):
    """The router with feed's fast path turned off: every message goes through the general path."""

    def _route_whole_messages(
        self, chunk: bytes | bytearray | memoryview, position: int, size: int, run_start: int, run_end: int
    ) -> tuple[int, int, int]:
        return position, run_start, run_end


def router_state(router: ResponseRouter) -> tuple[object, ...]:
    """Everything the relay reads from a router after a feed."""
    return (
        list(router.ready_statuses),
        list(router.parameter_changes),
        router.last_ready_status,
        router.awaits_client_data,
        list(router.probe_values),
        router.outstanding,
        router.outstanding_for_client,
        router.at_boundary,
        router.client_at_boundary,
    )


def assert_paths_agree(
    calls: list[Callable[[ResponseRouter], None]], chunks: list[bytes], *, max_message_size: int = 1 << 16
) -> None:
    """Feed the same chunks to a router with and without the fast path: same pieces, same state
    after every feed, same requests reported lost in the same order, same protocol errors."""
    fast_failed: list[object] = []
    general_failed: list[object] = []
    fast = ResponseRouter(max_message_size=max_message_size, on_request_lost=fast_failed.append)
    general = GeneralPathRouter(max_message_size=max_message_size, on_request_lost=general_failed.append)
    for call in calls:
        call(fast)
        call(general)
    assert [bytes(piece) for piece in fast.due_replies()] == [bytes(p) for p in general.due_replies()]
    for chunk in chunks:
        outcomes: list[tuple[str, list[bytes]]] = []
        for router in (fast, general):
            try:
                pieces = router.feed(memoryview(bytearray(chunk)))
            except ProtocolError as exc:
                outcomes.append((str(exc), []))
            else:
                outcomes.append(("", [bytes(piece) for piece in pieces]))
        assert outcomes[0] == outcomes[1]
        if outcomes[0][0]:
            return  # the relay drops a server connection that broke the protocol
        assert router_state(fast) == router_state(general)
        assert fast_failed == general_failed


class CountingRouter(ResponseRouter):
    """The router counting the messages that go through the general path."""

    general_messages = 0

    def _begin(
        self,
        chunk: bytes | bytearray | memoryview,
        message_type: int,
        length: int,
        out: _Output,
        *,
        header: bytes | None,
        header_at: int,
    ) -> None:
        self.general_messages += 1
        super()._begin(chunk, message_type, length, out, header=header, header_at=header_at)


UPDATE_1 = frame(b"C", b"UPDATE 1\x00") + ready()
BEGIN = frame(b"C", b"BEGIN\x00") + ready(b"T")


def _held_begin(router: ResponseRouter) -> None:
    router.expect(Request.QUERY, forward=False)  # a BEGIN the proxy answered the client itself


@pytest.mark.parametrize(
    ("calls", "server", "client"),
    [
        ([Request.QUERY], ROW_DESCRIPTION + DATA_ROW + SELECT_1 + ready(), None),
        ([Request.QUERY], UPDATE_1, None),
        ([Request.QUERY], NOTICE + ERROR + ready(b"E"), None),
        ([Request.QUERY], frame(b"C", b"SET\x00") + APP_NAME_REPORT + ready(), None),
        ([Request.QUERY], COPY_IN, None),
        (
            [Request.PARSE, Request.BIND, Request.EXECUTE, Request.SYNC],
            BIND_COMPLETE + SELECT_1 + ready(),
            None,
        ),
        ([Request.QUERY, ResponseRouter.expect_probe], UPDATE_1 + _PROBE_REPLIES[0] + ready(), UPDATE_1),
        ([Request.QUERY, ResponseRouter.expect_probe], UPDATE_1 + ERROR + ready(), UPDATE_1),
        ([_held_begin, Request.QUERY], BEGIN + UPDATE_1, UPDATE_1),
    ],
    ids=["select", "update", "error", "set", "copy-in", "extended", "probe", "failed-probe", "held-begin"],
)
def test_whole_replies_forwarded_in_one_run_take_the_fast_path(
    calls: list[Request | Callable[[ResponseRouter], None]], server: bytes, client: bytes | None
) -> None:
    router, general = CountingRouter(), GeneralPathRouter()
    for each in (router, general):
        for call in calls:
            if isinstance(call, Request):
                each.expect(call)
            else:
                call(each)
    pieces = router.feed(server)
    assert [bytes(piece) for piece in pieces] == [bytes(piece) for piece in general.feed(server)]
    assert [bytes(piece) for piece in pieces] == [server if client is None else client]
    assert router_state(router) == router_state(general)
    assert router.general_messages == 0


def test_the_fast_path_takes_over_again_after_a_message_split_across_chunks() -> None:
    router = CountingRouter()
    router.expect(Request.QUERY)
    stream = ROW_DESCRIPTION + DATA_ROW * 4 + SELECT_1 + ready()
    split_row = len(ROW_DESCRIPTION) + len(DATA_ROW)
    first = router.feed(stream[: split_row + 8])  # cut inside the second DataRow's body
    second = router.feed(stream[split_row + 8 :])
    after = split_row + len(DATA_ROW)
    assert [bytes(piece) for piece in first + second] == [stream[:split_row], DATA_ROW, stream[after:]]
    assert router.general_messages == 1  # only the DataRow split in two (held back, then sent whole)
    assert router.outstanding == 0 and router.ready_statuses == [b"I"]


@given(exchange=exchanges(more=True), data=st.data())
def test_fast_path_and_general_path_agree_on_any_chunking(exchange: Exchange, data: st.DataObject) -> None:
    size = len(exchange.server)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, size), max_size=12))))
    bounds = [0, *cuts, size]
    chunks = [bytes(exchange.server[start:end]) for start, end in itertools.pairwise(bounds)]
    assert_paths_agree(exchange.calls, chunks)
    whole, _ = run_exchange(exchange, [])
    assert whole == expected_outcome(exchange)


_ANY_REQUEST_CALL = st.one_of(
    st.builds(_expect_call, st.sampled_from(list(Request)), st.booleans(), st.sampled_from([None, "t"])),
    st.builds(_local_call, st.sampled_from([PARSE_COMPLETE, CLOSE_COMPLETE])),
    st.just(ResponseRouter.expect_probe),
)
_ANY_MESSAGE = st.one_of(
    st.sampled_from(
        [
            *{m for replies in _EXTENDED_REPLIES.values() for m in replies},
            *_QUERY_REPLIES,
            *_ASYNC,
            *_PROBE_REPLIES,
            COPY_IN,
            FUNCTION_RESULT,
            ready(b"I"),
            ready(b"T"),
            ready(b"E"),
            frame(b"Z"),
        ]
    ),
    st.binary(max_size=12),
)


@given(
    calls=st.lists(_ANY_REQUEST_CALL, max_size=10),
    messages=st.lists(_ANY_MESSAGE, max_size=12),
    max_message_size=st.sampled_from([20, 1 << 16]),  # 20: a RowDescription is over the limit
    data=st.data(),
)
def test_fast_path_and_general_path_agree_on_any_stream(
    calls: list[Callable[[ResponseRouter], None]],
    messages: list[bytes],
    max_message_size: int,
    data: st.DataObject,
) -> None:
    stream = b"".join(messages)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=8))))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[start:end] for start, end in itertools.pairwise(bounds)]
    assert_paths_agree(calls, chunks, max_message_size=max_message_size)


@given(exchange=exchanges())
def test_byte_by_byte_feeding_gives_the_expected_client_stream(exchange: Exchange) -> None:
    outcome, _ = run_exchange(exchange, list(range(len(exchange.server))))
    assert outcome == expected_outcome(exchange)


@given(
    requests=st.lists(st.sampled_from(list(Request)), max_size=6),
    chunks=st.lists(st.binary(max_size=64), max_size=8),
)
def test_garbage_from_the_server_only_raises_protocol_error(
    requests: list[Request], chunks: list[bytes]
) -> None:
    router = ResponseRouter(max_message_size=1 << 16)
    expect_all(router, *requests)
    try:
        for chunk in chunks:
            router.feed(chunk)
    except ProtocolError:
        pass


# --------------------------------------------------------------------------- injected probes (commit LSN)

LSN_ROW = frame(b"D", b"\x00\x01\x00\x00\x00\x090/3000148")
NULL_ROW = frame(b"D", b"\x00\x01\xff\xff\xff\xff")
PROBE_REPLY = ROW_DESCRIPTION + LSN_ROW + SELECT_1 + ready()


def test_probe_after_a_commit_is_dropped_whole_and_its_value_kept() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    router.expect_probe()
    client_reply = frame(b"C", b"COMMIT\x00") + ready()
    assert joined(router.feed(client_reply + PROBE_REPLY)) == client_reply
    assert router.probe_values == [b"0/3000148"]
    assert router.outstanding == 0 and router.ready_statuses == [b"I", b"I"]


def test_once_the_clients_reply_is_in_only_the_probe_is_outstanding_and_not_for_the_client() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    router.expect_probe()
    assert router.outstanding_for_client == 1
    router.feed(frame(b"C", b"UPDATE 1\x00") + ready())  # the write's reply, the probe's still to come
    assert router.ready_statuses == [b"I"]
    assert router.outstanding == 1 and router.outstanding_for_client == 0
    router.feed(PROBE_REPLY)
    assert router.outstanding == 0 and router.outstanding_for_client == 0


@given(st.integers(min_value=1, max_value=60))
def test_probe_value_is_kept_however_the_stream_is_split(step: int) -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    router.expect_probe()
    client_reply = SELECT_1 + ready()
    stream = client_reply + PROBE_REPLY
    sent = b"".join(joined(router.feed(stream[at : at + step])) for at in range(0, len(stream), step))
    assert sent == client_reply
    assert router.probe_values == [b"0/3000148"]


def test_a_failing_probe_sends_nothing_to_the_client() -> None:
    # e.g. pg_current_wal_insert_lsn() on a server that has just become a standby (55000)
    router = ResponseRouter()
    router.expect(Request.QUERY)
    router.expect_probe()
    client_reply = SELECT_1 + ready()
    assert joined(router.feed(client_reply + ERROR + ready())) == client_reply
    assert router.probe_values == [] and router.outstanding == 0


def test_a_null_probe_value_is_none_and_client_rows_are_not_captured() -> None:
    router = ResponseRouter()
    router.expect(Request.QUERY)
    router.expect_probe()
    client_reply = ROW_DESCRIPTION + DATA_ROW + SELECT_1 + ready()
    assert joined(router.feed(client_reply + ROW_DESCRIPTION + NULL_ROW + SELECT_1 + ready())) == client_reply
    assert router.probe_values == [None]
