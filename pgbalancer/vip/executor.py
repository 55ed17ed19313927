"""Runs the VIP commands (trio shell): add and remove the address, send gratuitous ARP.

Acquiring first starts a small guard process and then runs if_up_cmd. The guard
(``sh -c 'cat >/dev/null; exec if_down_cmd'``, in a session of its own) waits for end-of-file on a
pipe only this process writes to. Releasing closes the pipe, and the guard runs if_down_cmd. If
pgbalancer dies any other way, even by SIGKILL, the kernel closes the pipe and the guard still
removes the VIP, so a killed node cannot keep the address while a new leader takes it.

A command that fails is judged by its effect: when ``ip -o addr show dev IF`` shows the address
present after an acquire (or absent after a release), the step counts as done, so
"address already assigned" or "address not found" from a repeated command is not an error.

It must never: decide whether to hold the VIP (pgbalancer.vip.rule does), run a command through a
shell, or wait on a command without a timeout.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

import trio

from pgbalancer.vip.commands import VipCommands, listed_on

log = logging.getLogger("pgbalancer.vip")

COMMAND_TIMEOUT = 10.0
_GUARD_SCRIPT = 'cat >/dev/null; exec "$@"'


class VipExecutor:
    """Performs acquire/release/announce for one VIP; each returns whether it took effect."""

    def __init__(self, commands: VipCommands, *, timeout: float = COMMAND_TIMEOUT) -> None:
        self.commands = commands
        self.timeout = timeout
        self._guard: trio.Process | None = None

    @property
    def guarded(self) -> bool:
        """A guard is armed: the VIP may be on the interface."""
        return self._guard is not None

    async def acquire(self) -> bool:
        if self._guard is None:
            argv = ["sh", "-c", _GUARD_SCRIPT, "pgbalancer-vip-guard", *self.commands.down]
            # Own session: a Ctrl-C to the node's process group must not kill the guard unfired.
            self._guard = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True
            )
        if await self._run("if_up_cmd", self.commands.up):
            return True
        return await self.is_present()

    async def release(self) -> bool:
        guard, self._guard = self._guard, None
        if guard is None:
            done = await self._run("if_down_cmd", self.commands.down, quiet=True)
        else:
            done = await self._fire(guard)
        return done or not await self.is_present()

    async def announce(self) -> bool:
        if not self.commands.arping:
            return True
        return await self._run("arping_cmd", self.commands.arping)

    async def is_present(self) -> bool:
        """Whether the interface carries the VIP now (False when that cannot be read)."""
        argv = ["ip", "-o", "addr", "show", "dev", self.commands.interface]
        with trio.move_on_after(self.timeout):
            try:
                result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
            except OSError:
                return False
            return result.returncode == 0 and listed_on(
                result.stdout.decode(errors="replace"), self.commands.ip
            )
        return False

    async def _fire(self, guard: trio.Process) -> bool:
        """Let the guard run if_down_cmd, and wait for it."""
        assert guard.stdin is not None
        await guard.stdin.aclose()
        with trio.move_on_after(self.timeout):
            code = await guard.wait()
            if code != 0:
                log.error(
                    "if_down_cmd %s exited with %d (its message is above)",
                    self._show(self.commands.down),
                    code,
                )
            return code == 0
        guard.kill()
        log.error("if_down_cmd %s did not finish within %gs", self._show(self.commands.down), self.timeout)
        return False

    async def _run(self, name: str, argv: Sequence[str], *, quiet: bool = False) -> bool:
        with trio.move_on_after(self.timeout):
            try:
                result = await trio.run_process(
                    list(argv), capture_stdout=True, capture_stderr=True, check=False
                )
            except OSError as exc:
                log.error("%s %s could not run: %s; check the command and PATH", name, self._show(argv), exc)
                return False
            if result.returncode != 0 and not quiet:
                log.error(
                    "%s %s exited with %d: %s",
                    name,
                    self._show(argv),
                    result.returncode,
                    result.stderr.decode(errors="replace").strip(),
                )
            return result.returncode == 0
        log.error("%s %s did not finish within %gs", name, self._show(argv), self.timeout)
        return False

    @staticmethod
    def _show(argv: Sequence[str]) -> str:
        return repr(" ".join(argv))
