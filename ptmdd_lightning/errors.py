"""User-facing errors of ptmdd.

A :class:`PtmddError` is a mistake in the user's input (a config, a path, a checkpoint) rather than a bug.
Its message names the fix; ``ptmdd`` prints it alone, without a traceback.
"""


class PtmddError(ValueError):
    """A user error whose message says what is wrong and how to fix it.

    Raises:
        Nothing of its own.
    """
