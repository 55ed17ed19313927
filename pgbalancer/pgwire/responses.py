"""Which server replies belong to which request: the response router of transaction pooling.

PostgreSQL answers requests strictly in order. The router keeps a queue with one entry per
request the server will answer, and walks the server's byte stream header by header:

* replies to requests the client sent are forwarded untouched (zero-copy slices);
* replies to requests the proxy injected (a re-prepare on a new server) are dropped;
* a probe the proxy injected (``expect_probe``: the commit LSN after a write) is dropped whole,
  its ErrorResponse included, and the first column of its DataRows is kept in ``probe_values``;
* synthetic replies (ParseComplete for a Parse the proxy answered itself) are emitted in
  the exact position the client expects them;
* after an ErrorResponse in the extended protocol the server skips everything up to the
  next Sync, so the router discards those entries too (and reports skipped Parses).

It also reports each ReadyForQuery status and ParameterStatus, which is what the shell
needs to return a server to the pool at ``ReadyForQuery 'I'``. Pure: no I/O, no clock.
It inspects message bodies only of ReadyForQuery, ParameterStatus and a probe's DataRow.

Hot path: a chunk usually holds whole messages only, forwarded (or dropped) in one run. ``feed``
routes those with one header unpack each and returns one slice; it hands anything else (a
message split across chunks, a synthetic reply due, ...) to the general message-by-message path,
and takes over again at the next message boundary. Both must give the same bytes and state (a
differential property test holds them to it).
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pgbalancer.pgwire.errors import ProtocolError

Piece = bytes | memoryview

_HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")  # type byte, length (which counts itself, not the type byte)
_HOLD_LIMIT = 64 * 1024  # larger replies stream through even when a chunk ends inside them
_ERROR = ord("E")
_READY = ord("Z")
_PARAMETER_STATUS = ord("S")
_PARAMETER_DESCRIPTION = ord("t")
_DATA_ROW = ord("D")
# CopyInResponse, CopyBothResponse: from here the server waits for the client's data.
_COPY_FROM_CLIENT = frozenset(b"GW")
# Messages the server may send at any time; they belong to no request.
_ASYNCHRONOUS = frozenset(b"NAS")
# Whole messages the fast path looks at beyond their header (see _route_whole_messages).
_NOTED = frozenset(b"ZSEGW")
_ONE_BYTE = [bytes((value,)) for value in range(256)]
_NOTHING: frozenset[int] = frozenset()


class Request(enum.IntEnum):
    PARSE = 1
    BIND = 2
    DESCRIBE_STATEMENT = 3
    DESCRIBE_PORTAL = 4
    EXECUTE = 5
    CLOSE = 6
    SYNC = 7
    QUERY = 8
    FUNCTION_CALL = 9


# The server message types that complete the reply to each request kind.
_ENDS_AT: dict[Request, frozenset[int]] = {
    Request.PARSE: frozenset(b"1"),
    Request.BIND: frozenset(b"2"),
    Request.DESCRIBE_STATEMENT: frozenset(b"Tn"),  # after its ParameterDescription 't'
    Request.DESCRIBE_PORTAL: frozenset(b"Tn"),
    Request.EXECUTE: frozenset(b"CIs"),  # CommandComplete, EmptyQueryResponse, PortalSuspended
    Request.CLOSE: frozenset(b"3"),
    Request.SYNC: frozenset(b"Z"),
    Request.QUERY: frozenset(b"Z"),
    Request.FUNCTION_CALL: frozenset(b"Z"),
}
# Requests whose reply an ErrorResponse ends (then the server skips to the next Sync).
_EXTENDED = frozenset(
    {
        Request.PARSE,
        Request.BIND,
        Request.DESCRIBE_STATEMENT,
        Request.DESCRIBE_PORTAL,
        Request.EXECUTE,
        Request.CLOSE,
    }
)


@dataclass(slots=True)
class _Entry:  # never changed once queued: the plain ones are shared (_PLAIN_ENTRIES)
    request: Request | None  # None: a synthetic reply, nothing is awaited from the server
    forward: bool = True  # False: the proxy injected the request; drop its reply
    synthetic: bytes = b""
    token: object = None  # given back through on_request_lost if the server never performs it
    probe: bool = False  # injected by the proxy for itself: nothing of its reply reaches the client


# The entry of a forwarded request with no token, by far the most common: one per kind, not per request.
_PLAIN_ENTRIES = {request: _Entry(request) for request in Request}


@dataclass(slots=True)
class _Output:
    chunk: bytes | bytearray | memoryview
    pieces: list[Piece] = field(default_factory=list)
    run_start: int = -1
    run_end: int = -1

    def keep(self, start: int, end: int) -> None:
        if start == self.run_end:
            self.run_end = end
            return
        self._flush_run()
        self.run_start, self.run_end = start, end

    def add(self, data: bytes) -> None:
        self._flush_run()
        self.pieces.append(data)

    def _flush_run(self) -> None:
        if self.run_end > self.run_start:
            self.pieces.append(memoryview(self.chunk)[self.run_start : self.run_end])
        self.run_start = self.run_end = -1

    def finish(self) -> list[Piece]:
        self._flush_run()
        return self.pieces


class ResponseRouter:
    """Routes one server connection's replies to its current client."""

    def __init__(
        self,
        *,
        max_message_size: int = 1 << 30,
        on_request_lost: Callable[[object], None] | None = None,
    ) -> None:
        self._queue: deque[_Entry] = deque()
        self._skipping = False  # an extended-protocol error: the server ignores requests until Sync
        self._max_message_size = max_message_size
        self._on_request_lost = on_request_lost
        self._remaining = 0
        self._forward_current = True
        self._capture_current = False
        self._hold_current = False
        self._held = bytearray()
        self._current_type = 0
        self._header = bytearray()
        self._body = bytearray()
        self._saw_parameter_description = False
        self.ready_statuses: list[bytes] = []  # ReadyForQuery statuses seen in the last feed
        self.parameter_changes: list[tuple[str, str]] = []
        self.last_ready_status = b"I"
        self.awaits_client_data = False  # the last feed started a COPY from the client
        self.probe_values: list[bytes | None] = []  # first column of each probe DataRow (None: NULL)

    # ---- requests (called as the client's messages go to the server) ----

    def expect(self, request: Request, *, forward: bool = True, token: object = None) -> None:
        """A request was sent to the server; its reply is forwarded (or dropped if injected)."""
        if request is Request.SYNC:
            self._skipping = False
        elif self._skipping:  # after an extended-protocol error the server discards all until Sync
            self._request_did_not_happen(token)
            return
        if forward and token is None:
            self._queue.append(_PLAIN_ENTRIES[request])
        else:
            self._queue.append(_Entry(request, forward, token=token))

    def expect_probe(self) -> None:
        """The proxy sent a Query of its own after the client's requests: drop its whole reply (an
        error too: it is the proxy's, not the client's) and keep its values in ``probe_values``."""
        self._queue.append(_Entry(Request.QUERY, forward=False, probe=True))

    def take_probe_value(self) -> bytes | None:
        """The last probe value kept since the previous call (None if none), and forget them all."""
        values, self.probe_values = self.probe_values, []
        return values[-1] if values else None

    def reply_locally(self, message: bytes) -> None:
        """The proxy answers a request itself; the reply goes out in the request's position."""
        if not self._skipping:
            self._queue.append(_Entry(None, synthetic=message))

    def due_replies(self) -> list[Piece]:
        """Synthetic replies whose turn has come (nothing awaited from the server before them)."""
        if not self._synthetic_due():
            return []
        out = _Output(b"")
        self._emit_due_synthetic(out)
        return out.finish()

    @property
    def outstanding(self) -> int:
        """Requests still awaiting (or owing) a reply."""
        return len(self._queue)

    @property
    def outstanding_for_client(self) -> int:
        """Requests still awaiting a reply, the proxy's own probes aside (they write nothing)."""
        return sum(not entry.probe for entry in self._queue)

    @property
    def at_boundary(self) -> bool:
        """The server's stream is between messages."""
        return self._remaining == 0 and not self._header

    @property
    def client_at_boundary(self) -> bool:
        """Everything sent to the client so far ends between messages (held-back bytes aside)."""
        return self._remaining == 0 or not self._forward_current or self._hold_current

    # ---- replies (called with bytes from the server) ----

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Piece]:
        """What to send the client for this chunk of server bytes, in order."""
        self.ready_statuses.clear()
        self.parameter_changes.clear()
        self.awaits_client_data = False
        size = len(chunk)
        position = 0
        run_start = run_end = -1
        if not self._remaining and not self._header:
            position, run_start, run_end = self._route_whole_messages(chunk, 0, size, -1, -1)
            if position == size and position and not self._synthetic_due():
                # The common case: all of it routed by the fast path, its forwarded bytes one slice.
                return [memoryview(chunk)[run_start:run_end]] if run_end > run_start else []
        out = _Output(chunk, run_start=run_start, run_end=run_end)
        while position < size:
            if self._remaining:
                position = self._consume_body(chunk, position, size, out)
            elif self._header or size - position < _HEADER_SIZE:
                position = self._collect_split_header(chunk, position, size, out)
            else:
                length = int.from_bytes(chunk[position + 1 : position + 5], "big")
                self._begin(chunk, chunk[position], length, out, header=None, header_at=position)
                position += _HEADER_SIZE
                if self._remaining == 0:
                    self._finish(out)
            if position < size and not self._remaining and not self._header:
                # Between messages again (e.g. after the end of a row a previous chunk began).
                position, out.run_start, out.run_end = self._route_whole_messages(
                    chunk, position, size, out.run_start, out.run_end
                )
        self._emit_due_synthetic(out)
        return out.finish()

    def _route_whole_messages(
        self, chunk: bytes | bytearray | memoryview, position: int, size: int, run_start: int, run_end: int
    ) -> tuple[int, int, int]:
        """The fast path of ``feed``, from a message boundary at ``position``: route the messages that
        are whole and whose forwarded bytes extend the output's last run (``run_start``, ``run_end``;
        -1, -1 if none), and return where the general path takes over and that run.

        It does for each such message exactly what the general path would (queue, statuses,
        parameters, probe values, the output run). It stops before anything else: a partial or
        invalid header or message, a synthetic reply due, an extended-protocol error, a forwarded
        message after a dropped one (a second piece).
        """
        queue = self._queue
        head = self._head_reply()
        if head is None:
            return position, run_start, run_end
        ends, dropping, probe, extended = head
        unpack = _HEADER.unpack_from
        limit = self._max_message_size
        while size - position >= _HEADER_SIZE:
            kind, length = unpack(chunk, position)
            end = position + 1 + length
            if end > size or length < 4 or length > limit:
                break
            if kind == _ERROR and extended:
                break  # the server now skips to Sync: the general path undoes what is lost
            if not dropping or kind in _ASYNCHRONOUS or (kind == _ERROR and not probe):
                if position != run_end:
                    if run_end >= 0:
                        break  # a second piece
                    run_start = position
                run_end = end
            elif kind == _DATA_ROW and probe:
                self.probe_values.append(_first_column(bytes(chunk[position + _HEADER_SIZE : end])))
            if kind in _NOTED:
                if kind == _READY:
                    status = _ONE_BYTE[chunk[position + _HEADER_SIZE]] if length > 4 else b"I"
                    self.ready_statuses.append(status)
                    self.last_ready_status = status
                elif kind == _PARAMETER_STATUS:
                    self.parameter_changes.append(_parameter(bytes(chunk[position + _HEADER_SIZE : end])))
                elif kind != _ERROR:
                    self.awaits_client_data = True
            position = end
            if kind in ends:
                queue.popleft()
                head = self._head_reply()
                if head is None:
                    break
                ends, dropping, probe, extended = head
        return position, run_start, run_end

    def _synthetic_due(self) -> bool:
        """A synthetic reply is next in line (nothing awaited from the server before it)."""
        return bool(self._queue) and self._queue[0].request is None

    def _head_reply(self) -> tuple[frozenset[int], bool, bool, bool] | None:
        """For the reply awaited next: the message types completing it, whether it is dropped,
        whether it is a probe's, whether an error in it makes the server skip to Sync; None if a
        synthetic reply is due first (left to the general path)."""
        if not self._queue:
            return _NOTHING, False, False, False
        head = self._queue[0]
        if head.request is None:
            return None
        return _ENDS_AT[head.request], not head.forward, head.probe, head.request in _EXTENDED

    def _collect_split_header(
        self, chunk: bytes | bytearray | memoryview, position: int, size: int, out: _Output
    ) -> int:
        needed = _HEADER_SIZE - len(self._header)
        taken = chunk[position : position + needed]
        self._header += taken
        position += len(taken)
        if len(self._header) == _HEADER_SIZE:
            header = bytes(self._header)
            self._header.clear()
            length = int.from_bytes(header[1:5], "big")
            self._begin(chunk, header[0], length, out, header=header, header_at=position - _HEADER_SIZE)
            if self._remaining == 0:
                self._finish(out)
        return position

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
        if length < 4 or length > self._max_message_size:
            raise ProtocolError(f"server sent an invalid message length {length}")
        self._emit_due_synthetic(out)
        self._current_type = message_type
        self._remaining = length - 4
        if message_type in _COPY_FROM_CLIENT:
            self.awaits_client_data = True
        self._forward_current = self._reply_is_forwarded(message_type)
        # A probe's reply is never forwarded, so a client's DataRow (the hot case) costs no queue look.
        self._capture_current = message_type in (_READY, _PARAMETER_STATUS) or (
            message_type == _DATA_ROW and not self._forward_current and self._in_probe()
        )
        self._body.clear()
        # A small reply that does not end in this chunk is held back until it is whole, so the
        # client's stream is always between messages after a send (a FATAL can then be added).
        ends_in_chunk = header_at + _HEADER_SIZE + self._remaining <= len(chunk)
        self._hold_current = self._forward_current and not ends_in_chunk and self._remaining <= _HOLD_LIMIT
        if not self._forward_current:
            return
        if self._hold_current:
            self._held[:] = header if header is not None else chunk[header_at : header_at + _HEADER_SIZE]
        elif header is None:
            out.keep(header_at, header_at + _HEADER_SIZE)
        else:
            out.add(header)

    def _consume_body(
        self, chunk: bytes | bytearray | memoryview, position: int, size: int, out: _Output
    ) -> int:
        end = min(size, position + self._remaining)
        if self._capture_current:
            self._body += chunk[position:end]
        if self._hold_current:
            self._held += chunk[position:end]
        elif self._forward_current:
            out.keep(position, end)
        self._remaining -= end - position
        if self._remaining == 0:
            self._finish(out)
        return end

    def _reply_is_forwarded(self, message_type: int) -> bool:
        if message_type in _ASYNCHRONOUS or not self._queue or self._queue[0].request is None:
            return True
        head = self._queue[0]
        # An injected request's error explains what follows; a probe's is the proxy's own business.
        return head.forward or (message_type == _ERROR and not head.probe)

    def _in_probe(self) -> bool:
        return bool(self._queue) and self._queue[0].probe

    def _finish(self, out: _Output) -> None:
        if self._hold_current:
            out.add(bytes(self._held))
            self._hold_current = False
        message_type = self._current_type
        if message_type == _READY:
            status = bytes(self._body[:1]) or b"I"
            self.ready_statuses.append(status)
            self.last_ready_status = status
        elif message_type == _DATA_ROW and self._capture_current:
            self.probe_values.append(_first_column(bytes(self._body)))
        elif message_type == _PARAMETER_STATUS:
            self.parameter_changes.append(_parameter(bytes(self._body)))
        if message_type in _ASYNCHRONOUS or not self._queue:
            return
        self._complete_head(message_type)

    def _complete_head(self, message_type: int) -> None:
        head = self._queue[0]
        assert head.request is not None  # synthetic entries are emitted before any server message
        if message_type == _ERROR and head.request in _EXTENDED:
            self._queue.popleft()
            self._skip_to_sync(first_lost=head.token)
        elif message_type == _PARAMETER_DESCRIPTION and head.request is Request.DESCRIBE_STATEMENT:
            return
        elif message_type in _ENDS_AT[head.request]:
            self._queue.popleft()

    def _skip_to_sync(self, first_lost: object) -> None:
        lost = [first_lost]
        while self._queue and self._queue[0].request is not Request.SYNC:
            lost.append(self._queue.popleft().token)
        if not self._queue:
            self._skipping = True
        # Undo last-sent-first, so an undone eviction does not undo the Parse that followed it.
        for token in reversed(lost):
            self._request_did_not_happen(token)

    def _emit_due_synthetic(self, out: _Output) -> None:
        while self._synthetic_due():
            out.add(self._queue.popleft().synthetic)

    def _request_did_not_happen(self, token: object) -> None:
        if token is not None and self._on_request_lost is not None:
            self._on_request_lost(token)


def _parameter(body: bytes) -> tuple[str, str]:
    """The name and value of a ParameterStatus body."""
    name, _, rest = body.partition(b"\x00")
    return name.decode(errors="replace"), rest.rstrip(b"\x00").decode(errors="replace")


def _first_column(body: bytes) -> bytes | None:
    """The first column of a DataRow body; None for NULL or a row too short to hold one."""
    if len(body) < 6 or int.from_bytes(body[:2], "big") < 1:
        return None
    length = int.from_bytes(body[2:6], "big", signed=True)
    return body[6 : 6 + length] if 0 <= length <= len(body) - 6 else None
