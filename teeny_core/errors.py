"""The one error type the CLI turns into a one-line message instead of a traceback."""


class TeenyError(Exception):
    """A problem the user can fix: bad input, a missing plugin, an unusable artifact."""
