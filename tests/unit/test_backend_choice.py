"""The test-cluster backend is chosen by a fast, leak-free probe of the Docker engine socket.

Fake engines are tiny stdlib socket servers in a thread; nothing here needs Docker.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from pgbalancer.devtools.containers import BACKEND_ENV, choose_cluster_backend, docker_engine_answers

# An unclosed socket in the probe shows up as a ResourceWarning; make it fail the test.
pytestmark = pytest.mark.filterwarnings("error")

PING_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"
PING_FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"


class FakeEngine:
    """Accepts one connection at a time, reads the request, answers ``reply`` (or nothing) and closes."""

    def __init__(self, listener: socket.socket, reply: bytes | None) -> None:
        self.listener = listener
        self.reply = reply
        self.requests: list[bytes] = []
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.listener.settimeout(5)
        while not self.release.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:  # timeout or listener closed at teardown
                return
            with conn:
                self.requests.append(conn.recv(1024))
                if self.reply is None:
                    self.release.wait(5)  # a hung engine: never answers
                else:
                    conn.sendall(self.reply)

    def __enter__(self) -> FakeEngine:
        self.listener.listen()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        # close() alone does not wake a thread blocked in accept(); shutdown() does on Linux.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


def _unix_engine(path: Path, reply: bytes | None) -> FakeEngine:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    return FakeEngine(listener, reply)


def _tcp_engine(reply: bytes | None) -> FakeEngine:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    return FakeEngine(listener, reply)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "d.sock"


# What "quickly" allows on top of the probe's own timeout: a loaded 2-core CI machine may leave this
# process unscheduled for a while. The failure guarded against is a hang (a client library's 60 s).
SLACK = 2.0


def _timed_probe(env: dict[str, str], timeout: float = 0.3) -> tuple[bool, float]:
    """The probe's answer and how long it took."""
    started = time.monotonic()
    answer = docker_engine_answers(timeout=timeout, env=env)
    return answer, time.monotonic() - started


def test_nothing_at_the_socket_path_means_local(sock_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{sock_path}"}
    answer, elapsed = _timed_probe(env)
    assert answer is False
    assert elapsed < 0.3 + SLACK
    assert choose_cluster_backend(env) == "local"


def test_a_bound_socket_nobody_listens_on_means_local(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(sock_path))  # the file exists, but connect() is refused
        env = {"DOCKER_HOST": f"unix://{sock_path}"}
        answer, elapsed = _timed_probe(env)
    assert answer is False
    assert elapsed < 0.3 + SLACK
    assert choose_cluster_backend(env) == "local"


def test_an_engine_answering_ping_means_testcontainers(sock_path: Path) -> None:
    with _unix_engine(sock_path, PING_OK) as engine:
        env = {"DOCKER_HOST": f"unix://{sock_path}"}
        answer, elapsed = _timed_probe(env)
        assert choose_cluster_backend(env) == "testcontainers"
    assert answer is True
    assert elapsed < 0.3 + SLACK
    assert engine.requests[0].startswith(b"GET /_ping HTTP/1.0\r\n")


def test_an_engine_answering_an_error_is_not_an_engine(sock_path: Path) -> None:
    with _unix_engine(sock_path, PING_FAIL):
        assert docker_engine_answers(env={"DOCKER_HOST": f"unix://{sock_path}"}) is False


def test_a_hung_engine_times_out_quickly(sock_path: Path) -> None:
    with _unix_engine(sock_path, None):
        answer, elapsed = _timed_probe({"DOCKER_HOST": f"unix://{sock_path}"}, timeout=0.2)
    assert answer is False
    assert elapsed < 0.2 + SLACK


def test_tcp_docker_host_is_probed_too() -> None:
    with _tcp_engine(PING_OK) as engine:
        port = engine.listener.getsockname()[1]
        assert docker_engine_answers(env={"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}) is True


@pytest.mark.parametrize("docker_host", ["npipe:////./pipe/docker_engine", "ssh://me@host", "tcp://"])
def test_unsupported_docker_hosts_are_not_engines(docker_host: str) -> None:
    assert docker_engine_answers(env={"DOCKER_HOST": docker_host}) is False


@pytest.mark.parametrize("wanted", ["local", "testcontainers", " Local "])
def test_an_explicit_choice_is_obeyed_without_probing(sock_path: Path, wanted: str) -> None:
    # DOCKER_HOST points at nothing, so "testcontainers" can only come from the explicit choice.
    env = {BACKEND_ENV: wanted, "DOCKER_HOST": f"unix://{sock_path}"}
    assert choose_cluster_backend(env) == wanted.strip().lower()


def test_auto_is_the_default_and_explicit_auto_behaves_the_same(sock_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{sock_path}"}
    assert choose_cluster_backend(env) == choose_cluster_backend({**env, BACKEND_ENV: "auto"}) == "local"


def test_an_unknown_choice_names_the_variable_and_the_options() -> None:
    with pytest.raises(ValueError, match=f"{BACKEND_ENV}.*local, testcontainers or auto"):
        choose_cluster_backend({BACKEND_ENV: "kubernetes"})
