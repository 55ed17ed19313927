"""Serve the REST API and /metrics with hypercorn inside the node's trio loop.

``ApiService`` owns the API's state (users, token key, login limiter, cluster-event listener), the
quart-trio app and its listening sockets. ``serve`` binds ``api_listen_addresses``:``api_port``
(HTTPS when a cert and key are configured) and runs ``hypercorn.trio.serve`` until
``request_shutdown``; a port that cannot be bound fails the node's start, naming api_port.

It must never: run its own event loop or thread; bind anything but the configured API addresses;
log a password, token or key (hypercorn's access log stays off: it would record Authorization).
"""

from __future__ import annotations

import logging
import socket
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from pgbalancer.api.app import ApiState, create_app
from pgbalancer.api.control import NodeControl
from pgbalancer.api.settings import ApiSettings, is_local_address
from pgbalancer.api.snapshots import NodeInfo
from pgbalancer.config import Config
from pgbalancer.proxy.figures import FiguresPeering

if TYPE_CHECKING:
    from pgbalancer.proxy.server import ProxyServer

log = logging.getLogger(__name__)

_GRACEFUL_SECONDS = 2.0  # requests in flight at shutdown get this long


class ApiService:
    """The REST API of one node (worker 0 of a multi-worker node)."""

    def __init__(
        self,
        config: Config,
        settings: ApiSettings,
        proxy: ProxyServer,
        node: NodeInfo,
        control: NodeControl | None = None,
        figures: FiguresPeering | None = None,
    ) -> None:
        self.config = config
        self.state = ApiState(
            proxy=proxy, settings=settings, node=node, control=control, figures_source=figures
        )
        self.app = create_app(self.state)
        self.urls: list[str] = []
        self._shutdown = trio.Event()
        _warn_about(config, settings)

    def apply_settings(self, config: Config, settings: ApiSettings) -> None:
        """A reload: new users, key, limits and metrics auth (addresses and TLS need a restart)."""
        self.config = config
        self.state.apply_settings(settings)
        _warn_about(config, settings)

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def serve(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the URLs served (``nursery.start`` returns them), serve until shut down."""
        sockets = bind_api_sockets(self.config.api_listen_addresses, self.config.api_port)
        hyper = HypercornConfig()
        # hypercorn adopts these file descriptors; our socket objects must not close them too.
        hyper.bind = [f"fd://{sock.detach()}" for sock in sockets]
        if self.state.settings.tls:
            hyper.certfile = self.state.settings.tls_cert_file
            hyper.keyfile = self.state.settings.tls_key_file
        hyper.accesslog = None
        hyper.errorlog = logging.getLogger("pgbalancer.api.http")
        hyper.graceful_timeout = _GRACEFUL_SECONDS
        hyper.include_server_header = False
        async with trio.open_nursery() as nursery:
            self.urls = await nursery.start(
                partial(serve, self.app, hyper, shutdown_trigger=self._shutdown.wait)
            )
            log.info("REST API listening on %s", ", ".join(self.urls))
            task_status.started(self.urls)


def bind_api_sockets(listen_addresses: tuple[str, ...], port: int) -> list[socket.socket]:
    """Bound (not yet listening) sockets for every API address; OSError names api_port on failure."""
    hosts: list[str | None] = [None] if "*" in listen_addresses else list(dict.fromkeys(listen_addresses))
    sockets: list[socket.socket] = []
    try:
        for host in hosts:
            for family, kind, proto, _, address in _addresses(host, port):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # '*' binds IPv4 and IPv6 separately
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"REST API cannot listen on {address[0]}:{port} (api_port): {exc.strerror}"
                    ) from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def _addresses(host: str | None, port: int) -> list[_AddrInfo]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list({info[4]: info for info in infos}.values())  # getaddrinfo may repeat an address


def _warn_about(config: Config, settings: ApiSettings) -> None:
    plaintext = settings.users.plaintext_users()
    if plaintext:
        log.warning(
            "api_user_file stores plaintext passwords for %s; store SCRAM verifiers or md5 hashes instead "
            "(plaintext is for development only)",
            ", ".join(repr(name) for name in plaintext),
        )
    if not settings.users:
        log.warning(
            "api_user_file is empty or unset: only /healthz, /readyz, /metrics and openapi.json answer"
        )
    exposed = [a for a in config.api_listen_addresses if not is_local_address(a)]
    if exposed and not settings.tls:
        log.warning(
            "the REST API listens on %s over plain HTTP, so passwords and tokens cross the network in clear; "
            "set api_tls_cert_file and api_tls_key_file",
            ", ".join(exposed),
        )
