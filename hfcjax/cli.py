"""Shared by the command-line entry points: one-line errors and list-flag conversion.

(Process set-up that must happen before JAX is imported, huge-page malloc, is a platform
choice and lives in `hfcjax.backend`.)
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import List, Sequence


class UsageError(ValueError):
    """A command-line value is malformed; the message names the flag."""


def floats(values: Sequence[str], flag: str) -> List[float]:
    """Numbers from an absl list flag (``--eps 0.03,0.06``), or a UsageError naming the flag."""
    try:
        return [float(v) for v in values]
    except ValueError:
        raise UsageError(f"--{flag} must be comma-separated numbers, got {','.join(values)!r}.") from None


@contextlib.contextmanager
def clear_errors():
    """Turns expected failures (bad config or flags, missing data or checkpoints, NaN loss,
    a bad regex) into one line on stderr and exit status 2."""
    from absl import flags

    from hfcjax.data import DataError

    try:
        yield
    except (ValueError, TypeError, DataError, FileNotFoundError, RuntimeError, re.error, flags.Error) as e:
        if type(e).__module__.startswith(("jax", "jaxlib")):
            raise
        what = f"bad regex ({e})" if isinstance(e, re.error) else str(e)
        print(f"error: {what}", file=sys.stderr, flush=True)
        sys.exit(2)
