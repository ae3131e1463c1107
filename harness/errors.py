"""Errors the harness reports to a user as one line and a non-zero exit."""


class HarnessError(Exception):
    """Bad input or an unusable environment: printed as one line, exit 2."""

    exit_code = 2


class GuestError(HarnessError):
    """A guest that died, hung, panicked unexpectedly or missed a deadline.

    Carries the tail of the console so a verdict can say why.
    """

    exit_code = 1

    def __init__(self, message: str, console_tail: str = ""):
        super().__init__(message)
        self.console_tail = console_tail
