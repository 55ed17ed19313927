"""The supervisor: worker count, restart backoff, and its process handling with stand-in workers."""

from __future__ import annotations

import mmap
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.proxy.peering import MAX_WORKERS
from pgbalancer.workers import (
    RESTART_BASE_DELAY,
    RESTART_MAX_DELAY,
    STABLE_UPTIME,
    Supervisor,
    WorkerContext,
    describe_exit,
    effective_worker_count,
    failures_after_exit,
    restart_delay,
)


@pytest.mark.parametrize(
    "configured, cpus, expected",
    [
        (0, 8, 8),
        (0, None, 1),
        (0, 1, 1),
        (3, 8, 3),
        (1, 64, 1),
        (0, 1000, MAX_WORKERS),
        (999, 2, MAX_WORKERS),
    ],
)
def test_effective_worker_count(configured: int, cpus: int | None, expected: int) -> None:
    assert effective_worker_count(configured, cpus) == expected


def test_restart_delay_doubles_up_to_a_ceiling() -> None:
    delays = [restart_delay(failures) for failures in range(1, 12)]
    assert delays[:3] == [RESTART_BASE_DELAY, 2 * RESTART_BASE_DELAY, 4 * RESTART_BASE_DELAY]
    assert delays == sorted(delays)
    assert delays[-1] == RESTART_MAX_DELAY
    assert restart_delay(10**6) == RESTART_MAX_DELAY


def test_a_long_healthy_run_resets_the_failure_count() -> None:
    assert failures_after_exit(4, uptime=0.1) == 5
    assert failures_after_exit(4, uptime=STABLE_UPTIME) == 1


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_report_ready_writes_once_and_closes() -> None:
    read_end, write_end = os.pipe()
    context = WorkerContext(1, 2, write_end)
    context.report_ready()
    context.report_ready()  # harmless
    assert os.read(read_end, 10) == b"R"
    assert os.read(read_end, 10) == b""  # closed: the supervisor sees EOF afterwards
    os.close(read_end)


# --------------------------------------------------------------------------- with forked stand-ins
# These fork the test process: the stand-in workers only touch files and signals, then _exit.


def test_a_worker_failing_before_it_is_ready_fails_the_start(capsys: pytest.CaptureFixture[str]) -> None:
    def failing_worker(context: WorkerContext) -> int:
        if context.index == 1:
            return 3
        context.report_ready()
        signal.pause()  # until the supervisor's SIGTERM (default action) ends it
        return 0

    with signals_ignored_afterwards():
        assert Supervisor(2, failing_worker).run() == 1
    error = capsys.readouterr().err
    assert "pgbalancer: worker 1 (pid" in error
    assert "could not start (exit code 3)" in error


@contextmanager
def signals_ignored_afterwards() -> Iterator[None]:
    """The supervisor restores the handlers it found: make those 'ignore', so that a signal sent
    to the test process a little late can never kill pytest."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _marker(directory: Path, name: str) -> None:
    (directory / f"{name}-{os.getpid()}").touch()


def _markers(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}-*"))


@pytest.mark.slow
def test_a_crashed_worker_is_restarted_reloads_reach_all_and_sigterm_exits_0(tmp_path: Path) -> None:
    pid_file = tmp_path / "node.pid"
    shared = mmap.mmap(-1, 16)  # mapped before the forks: every worker, restarted too, shares it
    lost: list[tuple[int, int]] = []  # (worker, its restarts seen so far) when the supervisor reaped it

    def stand_in(context: WorkerContext) -> int:
        signal.signal(signal.SIGHUP, lambda *_: _marker(tmp_path, f"hup{context.index}"))
        assert context.shared_memory is not None
        context.shared_memory[context.index] += 1
        context.report_ready()
        _marker(tmp_path, f"ready{context.index}")
        if context.index == 1 and len(_markers(tmp_path, "ready1")) == 1:
            return 7  # the first worker 1 crashes once it is up
        while True:
            signal.pause()

    outcome: list[BaseException] = []

    def operator() -> None:
        try:
            wait_for(lambda: len(_markers(tmp_path, "ready1")) == 2, timeout=10, message="worker 1 restarted")
            wait_for(pid_file.exists, timeout=10, message="pid file written")
            assert pid_file.read_text() == f"{os.getpid()}\n"
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(
                lambda: _markers(tmp_path, "hup0") and _markers(tmp_path, "hup1"),
                timeout=10,
                message="SIGHUP passed to both workers",
            )
        except BaseException as exc:  # re-raised in the test's thread
            outcome.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    with signals_ignored_afterwards():
        thread = threading.Thread(target=operator)
        thread.start()
        try:
            supervisor = Supervisor(
                2,
                stand_in,
                pid_file=str(pid_file),
                shared_memory=shared,
                on_worker_lost=lambda index: lost.append((index, len(_markers(tmp_path, "ready1")))),
            )
            assert supervisor.run() == 0
        finally:
            thread.join()
    if outcome:
        raise outcome[0]
    assert not pid_file.exists()
    restarted = _markers(tmp_path, "ready1")[-1].name.split("-")[1]
    assert [path.name for path in _markers(tmp_path, "hup1")] == [f"hup1-{restarted}"]
    assert (shared[0], shared[1]) == (1, 2)  # the restarted worker 1 wrote where the first one had
    assert lost == [(1, 1)]  # called for the crash (not the stop), before the replacement started
