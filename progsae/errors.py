"""The one exception type users see: the CLI prints it as a single line, never a traceback."""


class ProgsaeError(Exception):
    """A problem with the user's input or files, with a message that names it in one line."""
