"""Turns expected failures (bad config, missing data, NaN loss, ...) into one line on stderr."""

import contextlib
import sys


@contextlib.contextmanager
def clear_errors():
    from hfcjax.data import DataError

    try:
        yield
    except (ValueError, TypeError, DataError, FileNotFoundError, RuntimeError) as e:
        if type(e).__module__.startswith(("jax", "jaxlib")):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
