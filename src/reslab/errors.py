"""The one exception type a user can cause.

Anything raised as ``ReslabError`` is a problem with the user's input (a path, a file,
a value) and the command line prints it as one line and exits non-zero. Any other
exception is a bug in reslab and keeps its traceback.
"""


class ReslabError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""


class Interrupted(ReslabError):
    """SIGTERM or SIGINT stopped training at a step boundary, after saving its state."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
