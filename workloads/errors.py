"""The one error type for bad user input.

Raised with a one-line message that names the file, field or value at fault;
the entry points print it as `error: <message>` and exit non-zero.
"""


class UserInputError(ValueError):
    """Bad input from the user: a config value, a file, a corpus."""
