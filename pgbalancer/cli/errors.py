"""bctl's failures and exit codes, kept apart so ``bctl --help`` imports nothing else.

Exit codes (docs/bctl.md): 0 success; 1 the server (or the operator at a prompt) refused; 2 a usage
error; 3 the cluster cannot be reached.

It must never: import anything beyond the standard library's typing.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3


class CliError(Exception):
    """A failure bctl reports as one message and an exit code (never a traceback)."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status
