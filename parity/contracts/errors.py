"""The one error type parity reports to users: a single line, then a non-zero exit."""


class ParityError(Exception):
    """A user-facing failure. str(exc) is the whole message and fits on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
