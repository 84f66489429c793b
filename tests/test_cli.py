"""hfcjax.cli: the huge-page restart of the entry points and the one-line errors."""

import os
import platform
import subprocess
import sys

import pytest

from hfcjax import cli
from test_train import SUBPROCESS_ENV

SHOW = "from hfcjax import cli; cli.use_huge_pages(); import os, sys; print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
glibc_linux = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def run(env_changes, *args):
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k not in ("GLIBC_TUNABLES", "HFCJAX_HUGE_PAGES")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", SHOW, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@glibc_linux
def test_restarts_once_with_huge_page_malloc_and_keeps_arguments():
    assert run({}, "--flag", "a b") == f"{cli.HUGE_PAGE_MALLOC} ['--flag', 'a b']"


@glibc_linux
def test_users_tunables_and_opt_out_are_respected():
    assert run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == "glibc.malloc.arena_max=2 []"
    assert run({"HFCJAX_HUGE_PAGES": "0"}) == "None []"


def test_clear_errors_exit_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info, cli.clear_errors():
        raise ValueError("radius must be a finite number >= 0, got -1.")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: radius must be a finite number >= 0, got -1.\n"
