"""Shared by the command-line entry points: process set-up and one-line errors."""

import contextlib
import os
import platform
import sys

HUGE_PAGE_MALLOC = "glibc.malloc.hugetlb=1"


def use_huge_pages() -> None:
    """Restarts this process once with glibc's malloc asking for transparent huge pages.

    XLA:CPU allocates every large buffer with malloc, which maps fresh 4 KiB pages; on the
    2-core benchmark VM huge pages made the memory-bound frequency split 1.5-1.8x and the
    ResNet-18 train step 1.07x faster (docs/benchmarks.md). glibc reads the setting only
    at start-up, hence the restart, done before anything heavy is imported. Nothing happens
    off Linux/glibc, when GLIBC_TUNABLES is already set (the user's choice wins), or with
    HFCJAX_HUGE_PAGES=0.
    """
    if "GLIBC_TUNABLES" in os.environ or os.environ.get("HFCJAX_HUGE_PAGES", "1") == "0":
        return
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    os.environ["GLIBC_TUNABLES"] = HUGE_PAGE_MALLOC
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv[1:]])


@contextlib.contextmanager
def clear_errors():
    """Turns expected failures (bad config, missing data, NaN loss, ...) into one line on stderr."""
    from hfcjax.data import DataError

    try:
        yield
    except (ValueError, TypeError, DataError, FileNotFoundError, RuntimeError) as e:
        if type(e).__module__.startswith(("jax", "jaxlib")):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
