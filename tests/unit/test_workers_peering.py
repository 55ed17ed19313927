"""Cancel peering between workers: process-id spaces, the routing decision, and the peer sockets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.config import ConfigError, parse_config_text
from pgbalancer.pgwire.messages import CancelRequest, SSLRequest
from pgbalancer.proxy.peering import (
    MAX_WORKERS,
    CancelAction,
    CancelPeering,
    CancelRoute,
    PeerSocketInUse,
    ProcessIdAllocator,
    compose_process_id,
    open_reuseport_listeners,
    parse_peer_packet,
    peer_socket_path,
    route_cancel,
    worker_of,
)

LOCAL_MAX = (1 << 23) - 1


# --------------------------------------------------------------------------- process ids


@given(st.integers(0, MAX_WORKERS - 1), st.integers(1, LOCAL_MAX))
def test_a_process_id_names_its_worker_and_stays_a_positive_int32(worker: int, local: int) -> None:
    process_id = compose_process_id(worker, local)
    assert 0 < process_id < 2**31
    assert worker_of(process_id) == worker


def test_worker_zero_ids_look_like_plain_counters() -> None:
    assert compose_process_id(0, 42) == 42
    assert compose_process_id(1, 1) == (1 << 23) + 1


@pytest.mark.parametrize("worker, local", [(-1, 1), (MAX_WORKERS, 1), (0, 0), (0, LOCAL_MAX + 1)])
def test_out_of_range_parts_are_refused(worker: int, local: int) -> None:
    with pytest.raises(ValueError):
        compose_process_id(worker, local)


@pytest.mark.parametrize("process_id", [0, -5, 2**31, 2**32 - 1, 3 << 23])
def test_ids_no_worker_hands_out_have_no_owner(process_id: int) -> None:
    assert worker_of(process_id) is None


def test_the_allocator_stays_in_its_worker_space_and_wraps_past_ids_in_use() -> None:
    allocator = ProcessIdAllocator(3, start=LOCAL_MAX - 1)
    in_use = {compose_process_id(3, LOCAL_MAX), compose_process_id(3, 1)}
    ids = [allocator.next_id(in_use) for _ in range(3)]
    assert ids == [compose_process_id(3, LOCAL_MAX - 1), compose_process_id(3, 2), compose_process_id(3, 3)]
    assert {worker_of(process_id) for process_id in ids} == {3}


def test_the_allocator_never_repeats_an_id_in_use() -> None:
    allocator = ProcessIdAllocator(0)
    in_use: set[int] = set()
    for _ in range(1000):
        process_id = allocator.next_id(in_use)
        assert process_id not in in_use
        in_use.add(process_id)


def test_the_config_cannot_ask_for_more_workers_than_process_ids_can_name() -> None:
    base = "backend_hostname0 = db\nauth_type = trust\n"
    assert parse_config_text(base + f"workers = {MAX_WORKERS}").workers == MAX_WORKERS
    with pytest.raises(ConfigError, match="workers"):
        parse_config_text(base + f"workers = {MAX_WORKERS + 1}")


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    "owner, own, count, from_peer, expected",
    [
        (0, 0, 2, False, CancelRoute(CancelAction.CANCEL_HERE, 0)),
        (1, 1, 2, True, CancelRoute(CancelAction.CANCEL_HERE, 1)),
        (1, 0, 2, False, CancelRoute(CancelAction.FORWARD, 1)),
        (0, 1, 4, False, CancelRoute(CancelAction.FORWARD, 0)),
        (1, 0, 2, True, CancelRoute(CancelAction.IGNORE, 1)),  # a peer's request is never re-forwarded
        (5, 0, 4, False, CancelRoute(CancelAction.IGNORE, 5)),  # no such worker
    ],
)
def test_route_cancel(owner: int, own: int, count: int, from_peer: bool, expected: CancelRoute) -> None:
    process_id = compose_process_id(owner, 77)
    assert route_cancel(process_id, own_index=own, worker_count=count, from_peer=from_peer) == expected


def test_a_key_no_worker_handed_out_is_ignored() -> None:
    route = route_cancel(2**31 + 5, own_index=0, worker_count=2, from_peer=False)
    assert route == CancelRoute(CancelAction.IGNORE, None)


@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.booleans())
def test_routing_forwards_only_to_an_existing_sibling(process_id: int, count: int, from_peer: bool) -> None:
    route = route_cancel(process_id, own_index=0, worker_count=count, from_peer=from_peer)
    if route.action is CancelAction.FORWARD:
        assert not from_peer
        assert route.worker_index is not None and 0 < route.worker_index < count


def test_peer_packets_are_exactly_a_cancel_request() -> None:
    request = CancelRequest(compose_process_id(1, 9), 12345)
    assert parse_peer_packet(request.encode()) == request
    assert parse_peer_packet(request.encode()[:-1]) is None
    assert parse_peer_packet(SSLRequest().encode() + bytes(8)) is None
    assert parse_peer_packet(b"\x00\x00\x00\x10" + bytes(12)) is None


def test_peer_socket_path_names_port_and_worker() -> None:
    assert peer_socket_path("/run/pgb", 6432, 3) == "/run/pgb/pgbalancer-6432-worker3.sock"


# --------------------------------------------------------------------------- the trio shell


class Recorder:
    def __init__(self) -> None:
        self.cancelled: list[CancelRequest] = []

    async def cancel_here(self, request: CancelRequest) -> None:
        self.cancelled.append(request)


async def test_a_cancel_for_a_sibling_is_passed_to_it_over_its_peer_socket(tmp_path: Path) -> None:
    workers = [CancelPeering(index, 2, str(tmp_path), 6432) for index in range(2)]
    recorders = [Recorder(), Recorder()]
    async with trio.open_nursery() as nursery:
        for peering, recorder in zip(workers, recorders, strict=True):
            path = await nursery.start(peering.serve, recorder.cancel_here)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        for_worker_1 = CancelRequest(compose_process_id(1, 5), 99)
        await workers[0].dispatch(for_worker_1, recorders[0].cancel_here, timeout=5)
        for_worker_0 = CancelRequest(compose_process_id(0, 6), 98)
        await workers[0].dispatch(for_worker_0, recorders[0].cancel_here, timeout=5)
        nursery.cancel_scope.cancel()
    assert recorders[1].cancelled == [for_worker_1]  # done before dispatch returned
    assert recorders[0].cancelled == [for_worker_0]
    assert (workers[0].forwarded_total, workers[1].received_total) == (1, 1)
    assert not list(tmp_path.iterdir())  # the sockets are removed on the way out


async def test_a_peer_never_forwards_a_request_it_does_not_own(tmp_path: Path) -> None:
    worker_1 = CancelPeering(1, 3, str(tmp_path), 6432)
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker_1.serve, recorder.cancel_here)
        sender = CancelPeering(0, 3, str(tmp_path), 6432)
        # A request for worker 2 sent to worker 1 (a stale or forged key): dropped, not re-forwarded.
        await sender.forward(CancelRequest(compose_process_id(2, 5), 1), 1, timeout=5)
        nursery.cancel_scope.cancel()
    assert recorder.cancelled == []
    assert worker_1.received_total == 0


async def test_forwarding_to_a_worker_that_is_down_is_dropped_quietly(tmp_path: Path) -> None:
    sender = CancelPeering(0, 2, str(tmp_path), 6432)
    await sender.forward(CancelRequest(compose_process_id(1, 5), 1), 1, timeout=5)
    assert sender.forwarded_total == 0


async def test_a_stale_socket_file_is_replaced_but_a_live_one_is_refused(tmp_path: Path) -> None:
    stale = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    path = peer_socket_path(str(tmp_path), 6432, 0)
    await stale.bind(path)
    stale.close()  # the file stays behind, as after a SIGKILL
    first = CancelPeering(0, 2, str(tmp_path), 6432)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve, Recorder().cancel_here)
        with pytest.raises(PeerSocketInUse, match="another pgbalancer"):
            await CancelPeering(0, 2, str(tmp_path), 6432).serve(Recorder().cancel_here)
        nursery.cancel_scope.cancel()


async def test_reuseport_listeners_share_one_port() -> None:
    first = await open_reuseport_listeners(0, host="127.0.0.1")
    port = first[0].socket.getsockname()[1]
    second = await open_reuseport_listeners(port, host="127.0.0.1")
    try:
        assert [listener.socket.getsockname()[1] for listener in second] == [port]
    finally:
        for listener in first + second:
            await listener.aclose()


async def test_a_peer_socket_path_too_long_or_in_a_missing_directory_names_the_key(tmp_path: Path) -> None:
    too_long = CancelPeering(0, 2, str(tmp_path / ("d" * 120)), 6432)
    with pytest.raises(OSError, match="set worker_socket_dir to a shorter directory"):
        await too_long.serve(Recorder().cancel_here)
    missing = CancelPeering(0, 2, str(tmp_path / "nope"), 6432)
    with pytest.raises(OSError, match="check worker_socket_dir"):
        await missing.serve(Recorder().cancel_here)
