"""Errors that the command line reports as one line, without a traceback."""


class UserError(ValueError):
    """A mistake in what the user asked for (bad input, unknown name, missing file).

    The CLI prints ``error: <message>`` and exits with status 2; library callers can catch it
    like any ``ValueError``.
    """
