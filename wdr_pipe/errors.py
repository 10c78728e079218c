"""The errors a user can cause and fix, by kind (each kind has its exit code in ``cli/common.py``).

Library code raises them with a one-line message that names the input and the fix;
the CLI's ``user_errors`` prints that line and exits with the kind's code.
"""


class UserError(Exception):
    """A problem with the user's input, flags or environment (not a bug)."""


class BadSetting(UserError):
    """A setting's value that its own check refuses, whatever else there is: out of its range,
    not one of its choices, malformed. ``field``: the setting's name, where known."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


class DiskFull(UserError):
    """No space left on the device (or the quota) while writing a file; what was written before stays."""


class TooManyFailed(UserError):
    """More of the fetched rows failed than ``--max-failed`` allows (the store is written and valid)."""


def first_line(text: str, limit: int = 300) -> str:
    """The first line of an error message, at most ``limit`` characters: what a one-line report shows."""
    return (str(text).strip().splitlines() or [""])[0][:limit]
