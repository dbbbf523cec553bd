"""The one exception type rtkrun raises for problems a user can fix.

The CLI prints such an error as a single line (problem and fix) and exits non-zero; anything
else is a bug and keeps its traceback.
"""


class RtkrunError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""


class ConfigError(RtkrunError):
    """The composed configuration is invalid (unknown key, wrong type, value out of range)."""


class Stopped(RtkrunError):
    """Training stopped on a signal (SIGTERM, or SIGUSR2 outside a submitit job) after saving a
    checkpoint; the process exits with 128 + the signal number, as if killed by it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
