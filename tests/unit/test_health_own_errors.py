"""A health probe that fails for lack of pgbalancer's OWN resources (file descriptors, memory) gives
no verdict on the backend: it never counts as the backend being down, and it is logged as an error.

The end-to-end case runs in a subprocess whose RLIMIT_NOFILE is lowered and used up, so this test
process keeps its own descriptors; the socket the probe needs cannot be created there.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

from pgbalancer.ha.planner import Probe, ProbeOutcome
from pgbalancer.health.checker import own_resource_error, probe_all
from pgbalancer.proxy.backend import BackendAddress, BackendUnavailable


def wrapped(cause: BaseException) -> BackendUnavailable:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise BackendUnavailable(f"backend 0: {exc}") from exc
    except BackendUnavailable as outer:
        return outer


def test_own_resource_errors_are_found_through_the_cause_chain() -> None:
    for code in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
        cause = OSError(code, "no room")
        assert own_resource_error(wrapped(cause)) is cause
    memory = MemoryError()
    assert own_resource_error(wrapped(memory)) is memory


def test_backend_failures_are_not_own_resource_errors() -> None:
    for cause in (
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        OSError(errno.EHOSTUNREACH, "no route"),
        OSError("could not connect to db:5432: timed out after 3s"),
        TimeoutError(),
    ):
        assert own_resource_error(wrapped(cause)) is None


async def test_a_probe_without_a_verdict_is_left_out_of_the_round() -> None:
    addresses = [BackendAddress(0, "a", 1), BackendAddress(1, "b", 1)]

    async def probe(address: BackendAddress) -> Probe | None:
        if address.node_id == 0:
            return None
        return Probe(address.node_id, 0.0, ProbeOutcome.DOWN, None, "refused")

    results = await probe_all(addresses, probe)
    assert list(results) == [1]


CHILD = textwrap.dedent(
    """
    import logging, os, resource, socket, sys
    import trio
    from pgbalancer.health.checker import ProbeSettings, probe_backend
    from pgbalancer.health.pgclient import AdminLogin
    from pgbalancer.proxy.backend import BackendAddress

    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    listener = socket.create_server(("127.0.0.1", 0))  # a live address: only our own limit can fail
    port = listener.getsockname()[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    settings = ProbeSettings(AdminLogin("postgres", "postgres", 3.0), max_retries=2, retry_delay=0.01)

    async def main():
        hoard = []  # use up every descriptor left once trio runs: the probe's socket cannot be made
        try:
            while True:
                hoard.append(open(os.devnull))
        except OSError:
            pass
        return await probe_backend(BackendAddress(0, "127.0.0.1", port), settings)

    print("RESULT", repr(trio.run(main)))
    """
)


def test_a_probe_failing_on_emfile_in_pgbalancer_is_not_a_backend_failure() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "RESULT None" in done.stdout, (done.stdout, done.stderr)
    assert "health check of backend 0 NOT counted" in done.stderr, done.stderr
    assert "Too many open files" in done.stderr and "ulimit -n" in done.stderr, done.stderr
