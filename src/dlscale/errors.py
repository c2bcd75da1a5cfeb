"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single line ``error: <message>`` and exit code 2, with no
traceback; the Python API lets it propagate so notebooks see it as an exception.
Messages say what is wrong and how to fix it.
"""


class UserError(Exception):
    """Bad input from the user: unknown name, bad path, corrupt file, impossible value."""
