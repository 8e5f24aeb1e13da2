"""The one exception type that the CLI turns into a one-line message (no traceback)."""


class RulebertError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The message names the file, and the row and column where they apply, on one line.
    """
