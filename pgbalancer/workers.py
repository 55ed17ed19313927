"""Multi-core workers: a supervisor process forks N workers that share the proxy port.

With ``workers > 1`` (or 0, one per CPU) ``pgbalancer -f FILE`` becomes a supervisor. It forks
the workers before any trio loop exists; each worker then runs an ordinary node (its own
``trio.run``) whose proxy binds the port with SO_REUSEPORT and passes foreign cancel requests to
its siblings (``pgbalancer.proxy.peering``). The supervisor restarts a worker that dies, with
backoff; forwards SIGHUP to every worker; on SIGTERM/SIGINT stops them all and exits 0; owns the
pid file; and exits 1 if a worker cannot start (e.g. the port is taken).

Shared memory: a caller may hand the supervisor an anonymous shared mapping (``mmap.mmap(-1,
size)``, MAP_SHARED) created before any fork; every worker, restarted ones included, inherits
the same pages and finds them in ``WorkerContext.shared_memory`` (the result cache's
invalidation generations live there). ``on_worker_lost(index)`` runs in the supervisor after a
worker died unexpectedly and before its replacement is forked, so that nothing else writes the
dead worker's part of that memory while it runs.

Why fork rather than spawning ``python -m pgbalancer --worker-index N``: the supervisor already
holds the validated config, and a forked worker starts from exactly that config. So a worker
restarted after a crash binds the same port and backends as its siblings even if the file was
edited since (a restart-only change must never split the workers); it catches up on reloads
like its siblings, by a SIGHUP once it is ready. Forking also skips a fresh interpreter's imports
on every restart. Forking is safe because the supervisor runs no event loop and no thread.

It must never: start trio or a thread in the supervisor (that would make fork unsafe); let a
forked child return into the supervisor's code (children leave through ``os._exit``); touch
client connections; or leave a worker running when it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

from pgbalancer.proxy.peering import MAX_WORKERS

log = logging.getLogger("pgbalancer.workers")

RESTART_BASE_DELAY: Final = 0.5
RESTART_MAX_DELAY: Final = 30.0
STABLE_UPTIME: Final = 30.0  # a worker that lived this long before dying starts the backoff afresh
SHUTDOWN_WAIT: Final = 15.0  # the workers' own grace (5 s) plus time to close pools
_READY: Final = b"R"
_PR_SET_PDEATHSIG: Final = 1
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_HANDLED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


# --------------------------------------------------------------------------- pure policy


def effective_worker_count(configured: int, cpus: int | None) -> int:
    """``workers`` as configured, with 0 meaning one per CPU, capped at what process ids can name."""
    wanted = configured if configured > 0 else (cpus or 1)
    return max(1, min(wanted, MAX_WORKERS))


def failures_after_exit(previous_failures: int, uptime: float) -> int:
    """Consecutive failures counting this exit; a long, healthy run resets the count."""
    return 1 if uptime >= STABLE_UPTIME else previous_failures + 1


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker after its ``failures``-th consecutive failure."""
    return min(RESTART_BASE_DELAY * 2.0 ** min(max(failures - 1, 0), 16), RESTART_MAX_DELAY)


def describe_exit(exit_code: int) -> str:
    """``os.waitstatus_to_exitcode`` result in words: negative codes are signals."""
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit code {exit_code}"


# --------------------------------------------------------------------------- the worker's side


def available_cpus() -> int | None:
    """CPUs this process may run on (the affinity mask, so containers and taskset are honoured)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


class WorkerContext:
    """What a forked worker knows about itself; ``report_ready`` tells the supervisor it listens."""

    def __init__(self, index: int, count: int, ready_fd: int, shared_memory: mmap.mmap | None = None) -> None:
        self.index = index
        self.count = count
        self._ready_fd: int | None = ready_fd
        self.shared_memory = shared_memory  # the node's shared mapping, the same in every worker

    def report_ready(self) -> None:
        if self._ready_fd is None:
            return
        fd, self._ready_fd = self._ready_fd, None
        with contextlib.suppress(OSError):  # the supervisor is gone: our parent-death signal follows
            os.write(fd, _READY)
        os.close(fd)


RunWorker = Callable[[WorkerContext], int]


# --------------------------------------------------------------------------- the supervisor


@dataclass
class _Slot:
    """One worker position; its process comes and goes, its index (and process-id space) stays."""

    index: int
    pid: int | None = None
    ready_fd: int | None = None  # read end of the ready pipe until the worker reports
    ready: bool = False
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    reload_pending: bool = False  # SIGHUP it once it is ready


class StartupFailed(Exception):
    """A worker exited before it was ready while the node was starting."""


class Supervisor:
    """Forks and babysits the workers. ``run`` returns the node's exit code."""

    def __init__(
        self,
        worker_count: int,
        run_worker: RunWorker,
        *,
        pid_file: str = "",
        clock: Callable[[], float] = time.monotonic,
        shared_memory: mmap.mmap | None = None,
        on_worker_lost: Callable[[int], None] | None = None,
    ) -> None:
        self.worker_count = worker_count
        self.run_worker = run_worker
        self.shared_memory = shared_memory
        self.on_worker_lost = on_worker_lost
        self.pid_file = pid_file
        self.clock = clock
        self.slots = [_Slot(index) for index in range(worker_count)]
        self._signals: list[int] = []
        self._wakeup = (-1, -1)
        self._reloads = 0
        self._up = False
        self._wrote_pid_file = False

    def run(self) -> int:
        previous_handlers = self._install_signal_handlers()
        try:
            for slot in self.slots:
                self._spawn(slot)
            return self._supervise()
        except StartupFailed as exc:
            print(f"pgbalancer: {exc}", file=sys.stderr)
            self._stop_workers()
            return 1
        finally:
            self._restore_signal_handlers(previous_handlers)
            self._remove_pid_file()

    # ---- main loop

    def _supervise(self) -> int:
        while True:
            self._wait_for_events(self._next_restart_timeout())
            # Signals first: after Ctrl-C the workers exit on their own SIGINT, which is no crash.
            for signum in self._take_signals():
                if signum == signal.SIGHUP:
                    self._reload_workers()
                elif signum in _STOP_SIGNALS:
                    log.info(
                        "received %s: stopping %d workers", signal.Signals(signum).name, self.worker_count
                    )
                    self._stop_workers()
                    return 0
            self._collect_ready_reports()
            self._reap_workers()
            self._note_when_up()
            self._restart_due_workers()

    def _note_when_up(self) -> None:
        if self._up or not all(slot.ready for slot in self.slots):
            return
        self._up = True
        self._write_pid_file()
        pids = ", ".join(str(slot.pid) for slot in self.slots)
        log.info("supervisor (pid %d) ready: %d workers (pids %s)", os.getpid(), self.worker_count, pids)

    def _reload_workers(self) -> None:
        self._reloads += 1
        log.info("received SIGHUP: reloading every worker")
        for slot in self.slots:
            if slot.ready and slot.pid is not None:
                self._signal_worker(slot, signal.SIGHUP)
            else:  # not listening yet (or about to be restarted): it reloads once ready
                slot.reload_pending = True

    # ---- spawning and reaping

    def _spawn(self, slot: _Slot) -> None:
        ready_read, ready_write = os.pipe()
        os.set_blocking(ready_read, False)
        supervisor_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(ready_read)
            os.close(ready_write)
            raise
        if pid == 0:
            os.close(ready_read)
            self._become_worker(slot.index, ready_write, supervisor_pid)
        os.close(ready_write)
        slot.pid, slot.ready_fd, slot.ready = pid, ready_read, False
        slot.started_at, slot.restart_at = self.clock(), None
        slot.reload_pending = slot.reload_pending or self._reloads > 0  # it starts from the old config
        log.info("started worker %d (pid %d)", slot.index, pid)

    def _collect_ready_reports(self) -> None:
        for slot in self.slots:
            if slot.ready_fd is None:
                continue
            try:
                report = os.read(slot.ready_fd, 1)
            except BlockingIOError:
                continue
            self._close_ready_fd(slot)
            if report == _READY:
                slot.ready = True
                if slot.reload_pending and slot.pid is not None:
                    slot.reload_pending = False
                    self._signal_worker(slot, signal.SIGHUP)

    def _reap_workers(self) -> None:
        for slot in self.slots:
            exit_code = self._poll_exit(slot)
            if exit_code is not None:
                self._worker_exited(slot, exit_code)

    def _poll_exit(self, slot: _Slot) -> int | None:
        if slot.pid is None:
            return None
        try:
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
        except ChildProcessError:
            return -signal.SIGKILL  # already reaped elsewhere: treat as vanished
        return os.waitstatus_to_exitcode(status) if pid else None

    def _worker_exited(self, slot: _Slot, exit_code: int) -> None:
        pid, was_ready = slot.pid, slot.ready
        self._close_ready_fd(slot)
        slot.pid, slot.ready = None, False
        if not was_ready and not self._up:
            raise StartupFailed(
                f"worker {slot.index} (pid {pid}) could not start ({describe_exit(exit_code)}); "
                "see its error above"
            )
        if self.on_worker_lost is not None:  # before any replacement is forked
            try:
                self.on_worker_lost(slot.index)
            except Exception:
                log.exception("worker %d: cleaning up after it failed", slot.index)
        slot.failures = failures_after_exit(slot.failures, self.clock() - slot.started_at)
        delay = restart_delay(slot.failures)
        slot.restart_at = self.clock() + delay
        log.error(
            "worker %d (pid %d) exited unexpectedly (%s); restarting it in %.1fs",
            slot.index,
            pid,
            describe_exit(exit_code),
            delay,
        )

    def _restart_due_workers(self) -> None:
        now = self.clock()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                try:
                    self._spawn(slot)
                except OSError as exc:
                    slot.failures += 1
                    slot.restart_at = now + restart_delay(slot.failures)
                    log.error("could not fork worker %d: %s; retrying", slot.index, exc)

    def _next_restart_timeout(self) -> float | None:
        deadlines = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        return max(0.0, min(deadlines) - self.clock()) if deadlines else None

    # ---- stopping

    def _stop_workers(self) -> None:
        """SIGTERM every worker and wait for all of them; SIGKILL any that outstay SHUTDOWN_WAIT."""
        for slot in self.slots:
            slot.restart_at = None
            if slot.pid is not None:
                self._signal_worker(slot, signal.SIGTERM)
        deadline = self.clock() + SHUTDOWN_WAIT
        while self._live_slots() and self.clock() < deadline:
            self._wait_for_events(deadline - self.clock())
            self._take_signals()  # a second SIGTERM changes nothing: we are already stopping
            self._reap_quietly()
        for slot in self._live_slots():
            log.error(
                "worker %d (pid %s) did not stop in %gs: killing it", slot.index, slot.pid, SHUTDOWN_WAIT
            )
            self._signal_worker(slot, signal.SIGKILL)
            if slot.pid is not None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(slot.pid, 0)
            slot.pid = None
        for slot in self.slots:
            self._close_ready_fd(slot)

    def _reap_quietly(self) -> None:
        for slot in self.slots:
            exit_code = self._poll_exit(slot)
            if exit_code is not None:
                if exit_code not in (0, -signal.SIGTERM):  # -SIGTERM: stopped before its handler was up
                    log.warning(
                        "worker %d (pid %s) stopped: %s", slot.index, slot.pid, describe_exit(exit_code)
                    )
                slot.pid = None

    def _live_slots(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.pid is not None]

    def _signal_worker(self, slot: _Slot, signum: int) -> None:
        if slot.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signum)

    # ---- signals and waiting

    def _install_signal_handlers(self) -> dict[int, object]:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wakeup = (read_end, write_end)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        return {signum: signal.signal(signum, self._on_signal) for signum in _HANDLED_SIGNALS}

    def _restore_signal_handlers(self, previous: dict[int, object]) -> None:
        signal.set_wakeup_fd(-1)
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        for fd in self._wakeup:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wakeup = (-1, -1)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _take_signals(self) -> list[int]:
        taken, self._signals[:] = list(self._signals), []
        return taken

    def _wait_for_events(self, timeout: float | None) -> None:
        """Block until a signal, a ready report or ``timeout`` seconds (None = no timeout)."""
        if self._signals:
            return
        poller = select.poll()
        poller.register(self._wakeup[0], select.POLLIN)
        for slot in self.slots:
            if slot.ready_fd is not None:
                poller.register(slot.ready_fd, select.POLLIN)
        poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup[0], 512):
                pass

    def _close_ready_fd(self, slot: _Slot) -> None:
        if slot.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(slot.ready_fd)
            slot.ready_fd = None

    # ---- pid file

    def _write_pid_file(self) -> None:
        if self.pid_file:
            Path(self.pid_file).write_text(f"{os.getpid()}\n")
            self._wrote_pid_file = True

    def _remove_pid_file(self) -> None:
        if self._wrote_pid_file:
            Path(self.pid_file).unlink(missing_ok=True)

    # ---- the forked child

    def _become_worker(self, index: int, ready_fd: int, supervisor_pid: int) -> NoReturn:
        """Runs in the child right after fork; never returns into the supervisor's code."""
        exit_code = 1
        try:
            self._drop_supervisor_state()
            _die_with_supervisor(supervisor_pid)
            _tag_log_records(f"worker{index}")
            exit_code = self.run_worker(WorkerContext(index, self.worker_count, ready_fd, self.shared_memory))
        except SystemExit as exc:
            exit_code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            _flush_output()
            os._exit(exit_code)

    def _drop_supervisor_state(self) -> None:
        signal.set_wakeup_fd(-1)
        for fd in (*self._wakeup, *(slot.ready_fd for slot in self.slots if slot.ready_fd is not None)):
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Until the node's own handler is up, a reload is moot: the supervisor re-sends it once we
        # are ready, and we are still running the config it forked us with.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _die_with_supervisor(supervisor_pid: int) -> None:
    """Have the kernel SIGTERM this worker if the supervisor dies, even by SIGKILL (Linux)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != supervisor_pid:  # it died before the line above took effect
        os._exit(1)


class _WorkerTag(logging.Filter):
    """Appends the worker's name to each record's logger name, so interleaved logs stay readable."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.suffix = f"[{tag}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.suffix):
            record.name += self.suffix
        return True


def _tag_log_records(tag: str) -> None:
    for handler in _root_handlers():
        handler.addFilter(_WorkerTag(tag))


def _root_handlers() -> Iterator[logging.Handler]:
    yield from logging.getLogger().handlers


def _flush_output() -> None:
    for handler in _root_handlers():
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
