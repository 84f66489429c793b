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


def fail(message: str, code: int = 2):
    """Prints `message` as one line after "error: " and exits with `code`."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def clear_errors():
    """Turns expected failures (bad config or flags, missing data or checkpoints, NaN loss,
    a bad regex, Ctrl-C) into one line on stderr and exit status 2 (or the exception's
    `exit_code`, e.g. 130 after SIGINT)."""
    from absl import flags

    from hfcjax.data import DataError

    try:
        yield
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C); files are only ever written whole: rerun the same command to continue.", 130)
    except (ValueError, TypeError, DataError, OSError, RuntimeError, re.error, flags.Error) as e:
        if type(e).__module__.startswith(("jax", "jaxlib")):
            raise
        fail(f"bad regex ({e})" if isinstance(e, re.error) else str(e), getattr(e, "exit_code", 2))


def parse_flags(argv: List[str]) -> List[str]:
    """absl's flag parsing for `app.run(main, flags_parser=cli.parse_flags)`, with one line for
    a bad flag, an unknown or mistyped config key, or a config file that does not load."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    except AttributeError as e:  # ml_collections: an unknown config key, with its "Did you mean"
        text = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
        fail(f"unknown config key {text}")
    except (OSError, SyntaxError, ImportError) as e:  # the config file itself
        fail(str(e))
