"""The one error type for what a user did wrong.

`UserError` (a ValueError) carries one line that says what to do; the entry points print
it after "error: " and exit with its `exit_code` (2). Every expected failure of hfcjax is
one: a bad config value, flag, file, image array or model, missing data or checkpoints, a
busy workdir, a NaN loss, a stop by a signal. Anything else raised from hfcjax (a builtin
ValueError, TypeError, OSError, RuntimeError) is a bug and shows its traceback.
"""


class UserError(ValueError):
    """Bad input or an expected stop; the message is one line that says what to do."""

    exit_code = 2
