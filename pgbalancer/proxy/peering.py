"""Multi-worker plumbing of the proxy: worker process-id spaces, shared listeners, cancel peering.

With ``workers > 1`` several worker processes accept on the same port (SO_REUSEPORT), so a
client's CancelRequest, which arrives on a new TCP connection, may land on a worker that does
not own the session. The BackendKeyData process id a worker hands out carries its worker index
in its top bits; the worker that receives a cancel for another worker's session passes the raw
CancelRequest on to that worker's peer Unix socket (PgBouncer's "peering" idea), and the owner
cancels as if the request had reached it directly.

The first half of this module is pure (process ids, routing decisions, paths); the second half
is the trio shell. It must never forward a cancel that came from a peer (that could loop), never
answer anything on a peer socket (PostgreSQL sends no reply to a cancel either), and never hold
any session state: it only asks the local ProxyServer to cancel.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket as stdlib_socket
import stat
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final

import trio

from pgbalancer.pgwire.errors import ProtocolError
from pgbalancer.pgwire.messages import CancelRequest, parse_startup_packet

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- pure: process ids

WORKER_BITS: Final = 8
MAX_WORKERS: Final = 1 << WORKER_BITS  # the config's upper bound on `workers` must match
_LOCAL_BITS: Final = 31 - WORKER_BITS  # BackendKeyData's process id is a positive int32
_LOCAL_MASK: Final = (1 << _LOCAL_BITS) - 1
CANCEL_PACKET_SIZE: Final = 16


def compose_process_id(worker_index: int, local_id: int) -> int:
    """The process id a client sees: the worker index on top, the worker's own counter below."""
    if not 0 <= worker_index < MAX_WORKERS:
        raise ValueError(f"worker index {worker_index} is outside 0..{MAX_WORKERS - 1}")
    if not 1 <= local_id <= _LOCAL_MASK:
        raise ValueError(f"local id {local_id} is outside 1..{_LOCAL_MASK}")
    return worker_index << _LOCAL_BITS | local_id


def worker_of(process_id: int) -> int | None:
    """The index of the worker that handed out ``process_id``; None if no worker could have."""
    if not 0 < process_id <= 0x7FFFFFFF or not process_id & _LOCAL_MASK:
        return None
    return process_id >> _LOCAL_BITS


class ProcessIdAllocator:
    """Hands out process ids of one worker, skipping ids still in use after the counter wraps.

    Ids never collide with a live session of the same worker: the session registry is keyed by
    them, and a cancel must reach exactly one session.
    """

    def __init__(self, worker_index: int, start: int = 1) -> None:
        compose_process_id(worker_index, 1)  # validates the index
        self.worker_index = worker_index
        self._next_local = (start - 1) % _LOCAL_MASK + 1

    def next_id(self, in_use: Container[int]) -> int:
        for _ in range(_LOCAL_MASK):
            process_id = compose_process_id(self.worker_index, self._next_local)
            self._next_local = self._next_local % _LOCAL_MASK + 1
            if process_id not in in_use:
                return process_id
        raise RuntimeError(f"worker {self.worker_index} has no free process id left")


# --------------------------------------------------------------------------- pure: cancel routing


class CancelAction(Enum):
    CANCEL_HERE = "cancel here"  # this worker owns the session
    FORWARD = "forward"  # a sibling owns it: pass the request to its peer socket
    IGNORE = "ignore"  # nobody can own it; PostgreSQL also ignores unknown keys silently


@dataclass(frozen=True)
class CancelRoute:
    action: CancelAction
    worker_index: int | None  # the owner named by the process id, if any


def route_cancel(process_id: int, *, own_index: int, worker_count: int, from_peer: bool) -> CancelRoute:
    """Where a CancelRequest for ``process_id`` goes, as seen by worker ``own_index``.

    A request that came from a peer is never forwarded again: the sender already chose us as
    the owner, so anything else is a stale or forged key, and forwarding it could loop.
    """
    owner = worker_of(process_id)
    if owner == own_index:
        return CancelRoute(CancelAction.CANCEL_HERE, own_index)
    if owner is None or owner >= worker_count or from_peer:
        return CancelRoute(CancelAction.IGNORE, owner)
    return CancelRoute(CancelAction.FORWARD, owner)


def peer_socket_path(socket_dir: str, port: int, worker_index: int) -> str:
    return os.path.join(socket_dir, f"pgbalancer-{port}-worker{worker_index}.sock")


def parse_peer_packet(packet: bytes) -> CancelRequest | None:
    """The CancelRequest a peer sent, or None for anything else (which is then dropped)."""
    if len(packet) != CANCEL_PACKET_SIZE or int.from_bytes(packet[:4], "big") != CANCEL_PACKET_SIZE:
        return None
    try:
        request = parse_startup_packet(packet[4:])
    except ProtocolError:
        return None
    return request if isinstance(request, CancelRequest) else None


# --------------------------------------------------------------------------- shell: listeners

_LISTEN_BACKLOG: Final = 0xFFFF  # the kernel clamps it to net.core.somaxconn
_PEER_READ_TIMEOUT: Final = 5.0
_MAX_UNIX_PATH: Final = 107  # sun_path holds 108 bytes with the terminating NUL (Linux)


async def open_reuseport_listeners(port: int, *, host: str | None = None) -> list[trio.SocketListener]:
    """Like ``trio.open_tcp_listeners``, but with SO_REUSEPORT so every worker binds the same port.

    The kernel then spreads new connections over the workers' listening sockets.
    """
    infos = await trio.socket.getaddrinfo(
        host, port, type=stdlib_socket.SOCK_STREAM, flags=stdlib_socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, sock_type, proto, _, address in dict.fromkeys(infos):
            listeners.append(
                trio.SocketListener(await _bound_reuseport_socket(family, sock_type, proto, address))
            )
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def _bound_reuseport_socket(
    family: int, sock_type: int, proto: int, address: tuple[object, ...] | str
) -> trio.socket.SocketType:
    sock = trio.socket.socket(family, sock_type, proto)
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
        if family == stdlib_socket.AF_INET6:  # as trio does: '::' must not also claim IPv4
            sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
        await sock.bind(address)
        sock.listen(_LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- shell: peering

LocalCancel = Callable[[CancelRequest], Awaitable[None]]


class PeerSocketInUse(OSError):
    """Another live process already serves this worker's peer socket."""


class CancelPeering:
    """One worker's end of cancel peering: its peer socket, and forwarding to its siblings."""

    def __init__(self, worker_index: int, worker_count: int, socket_dir: str, port: int) -> None:
        if not 0 <= worker_index < worker_count <= MAX_WORKERS:
            raise ValueError(f"worker {worker_index} of {worker_count} (at most {MAX_WORKERS})")
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.socket_dir = socket_dir
        self.port = port
        self.forwarded_total = 0
        self.received_total = 0

    def socket_path(self, worker_index: int | None = None) -> str:
        index = self.worker_index if worker_index is None else worker_index
        return peer_socket_path(self.socket_dir, self.port, index)

    def route(self, request: CancelRequest, *, from_peer: bool = False) -> CancelRoute:
        return route_cancel(
            request.process_id,
            own_index=self.worker_index,
            worker_count=self.worker_count,
            from_peer=from_peer,
        )

    async def dispatch(self, request: CancelRequest, cancel_here: LocalCancel, timeout: float) -> None:
        """Act on a CancelRequest a client sent to this worker: cancel here, forward, or drop it."""
        route = self.route(request)
        if route.action is CancelAction.CANCEL_HERE:
            await cancel_here(request)
        elif route.action is CancelAction.FORWARD:
            assert route.worker_index is not None
            await self.forward(request, route.worker_index, timeout)

    async def serve(
        self, cancel_here: LocalCancel, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept cancels from sibling workers on this worker's peer socket until cancelled."""
        path = self.socket_path()
        sock = await bind_peer_socket(path)
        bound_inode = os.stat(path).st_ino
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(path)
                while True:
                    peer, _ = await sock.accept()
                    nursery.start_soon(self._serve_peer, peer, cancel_here)
        finally:
            sock.close()
            unlink_if_ours(path, bound_inode)

    async def _serve_peer(self, peer: trio.socket.SocketType, cancel_here: LocalCancel) -> None:
        with peer:
            packet = b""
            with trio.move_on_after(_PEER_READ_TIMEOUT):
                packet = await _read_exactly(peer, CANCEL_PACKET_SIZE)
            request = parse_peer_packet(packet)
            if request is None or self.route(request, from_peer=True).action is not CancelAction.CANCEL_HERE:
                return
            self.received_total += 1
            log.debug(
                "worker %d: cancel for session %d came from a peer", self.worker_index, request.process_id
            )
            await cancel_here(request)  # the sender waits for us to close: PostgreSQL's ordering

    async def forward(self, request: CancelRequest, worker_index: int, timeout: float) -> None:
        """Pass a cancel to the worker that owns it and wait until that worker has acted on it."""
        path = self.socket_path(worker_index)
        try:
            with trio.fail_after(timeout):
                peer = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
                with peer:
                    await peer.connect(path)
                    await peer.send(request.encode())
                    await peer.recv(1)  # EOF once the owner has forwarded it to its server
        except (OSError, trio.TooSlowError) as exc:
            # The owner may be restarting: then its sessions are gone and there is nothing to cancel.
            log.warning(
                "worker %d: could not pass a cancel to worker %d at %s: %s",
                self.worker_index,
                worker_index,
                path,
                exc,
            )
            return
        self.forwarded_total += 1
        log.debug(
            "worker %d: forwarded cancel for session %d to worker %d",
            self.worker_index,
            request.process_id,
            worker_index,
        )


async def _read_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def bind_peer_socket(path: str) -> trio.socket.SocketType:
    """Bind and listen on ``path`` with mode 0600, replacing a stale socket file left by a crash."""
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise OSError(
            errno.ENAMETOOLONG,
            f"the worker peer socket path {path} is longer than a Unix socket allows "
            f"({_MAX_UNIX_PATH} bytes); set worker_socket_dir to a shorter directory",
        )
    if os.path.lexists(path):
        await _remove_stale_socket(path)
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        try:
            await sock.bind(path)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot create the worker peer socket {path}: {exc.strerror}; check worker_socket_dir",
            ) from exc
        # chmod after bind leaves a tiny window; harmless, since the socket accepts only what the
        # public TCP port accepts anyway (a cancel with a 31-bit random key), and nothing else.
        os.chmod(path, 0o600)
        sock.listen(_LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def _remove_stale_socket(path: str) -> None:
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise PeerSocketInUse(
            errno.EEXIST, f"{path} exists and is not a socket; remove it or set worker_socket_dir elsewhere"
        )
    probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    with probe:
        try:
            await probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            Path(path).unlink(missing_ok=True)  # nobody listens: left behind by a killed worker
            return
    raise PeerSocketInUse(
        errno.EADDRINUSE,
        f"{path} is served by a live process: is another pgbalancer with the same port running? "
        "stop it, or give this one its own port or worker_socket_dir",
    )


def unlink_if_ours(path: str, inode: int) -> None:
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
