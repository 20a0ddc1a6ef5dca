"""The one error base of vmpump.

Every error a user can cause or fix carries a one-line cause and a hint. The CLI prints
``error: <cause> — <hint>`` and exits with ``exit_code``; tracebacks appear only with ``--debug``.
Rooms define their own subclasses next to the code that raises them.
"""

from __future__ import annotations


class VmpumpError(Exception):
    """An error with a cause a user can read and a hint on what to do about it."""

    exit_code: int = 1

    def __init__(self, cause: str, hint: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.cause} — {self.hint}" if self.hint else self.cause

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Ray pickles errors raised in workers; keep both parts across the process boundary.
        return (type(self), (self.cause, self.hint))


class ConfigError(VmpumpError):
    """The job configuration is missing, malformed or inconsistent."""

    exit_code = 2


class UsageError(VmpumpError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2
