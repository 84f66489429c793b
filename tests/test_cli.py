"""hfcjax.backend's huge-page restart of the entry points and hfcjax.cli's one-line errors."""

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hfcjax import backend, cli
from hfcjax.errors import UserError

SHOW = "from hfcjax import backend; backend.use_huge_pages(); import os, sys; print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
glibc_linux = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


@pytest.fixture
def run(subprocess_env):
    def run_show(env_changes, *args):
        env = {k: v for k, v in subprocess_env.items() if k not in ("GLIBC_TUNABLES", "HFCJAX_HUGE_PAGES")}
        env.update(env_changes)
        out = subprocess.run([sys.executable, "-c", SHOW, *args], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    return run_show


@glibc_linux
def test_restarts_once_with_huge_page_malloc_and_keeps_arguments(run):
    assert run({}, "--flag", "a b") == f"{backend.HUGE_PAGE_MALLOC} ['--flag', 'a b']"


@glibc_linux
def test_users_tunables_and_opt_out_are_respected(run):
    assert run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == "glibc.malloc.arena_max=2 []"
    assert run({"HFCJAX_HUGE_PAGES": "0"}) == "None []"


def test_clear_errors_exit_with_one_line_for_user_errors_only(capsys):
    with pytest.raises(SystemExit) as exit_info, cli.clear_errors():
        raise UserError("radius must be a finite number >= 0, got -1.")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: radius must be a finite number >= 0, got -1.\n"
    for bug in (ValueError("a bug"), TypeError("a bug"), OSError("a bug"), RuntimeError("a bug"), KeyError("a bug")):
        with pytest.raises(type(bug)), cli.clear_errors():  # a bug in hfcjax keeps its traceback
            raise bug
    assert capsys.readouterr().err == ""


def test_every_expected_failure_type_is_a_user_error():
    from hfcjax import checkpoints, data, download, locks, steps, train

    for error in (cli.UsageError, checkpoints.CheckpointError, data.DataError, download.DownloadError,
                  locks.WorkdirBusy, steps.TrainingError, train.ConfigChanged, train.Interrupted, train.Preempted):
        assert issubclass(error, UserError), error


def test_list_flags_and_regex_errors_are_one_line(capsys):
    from hfcjax import smoothing

    assert cli.floats(["0.5", "1"], "rho") == [0.5, 1.0]
    with pytest.raises(cli.UsageError, match=r"--eps must be comma-separated numbers, got 'a,1'"):
        cli.floats(["a", "1"], "eps")
    with pytest.raises(SystemExit), cli.clear_errors():
        smoothing.selected_paths({"stem": {"kernel": np.zeros((3, 3, 1, 2))}}, ["["])
    assert capsys.readouterr().err.startswith("error: bad regex in config.evaluation.layers (")


@pytest.mark.parametrize("script,args,message", [
    ("hfcjax-evaluate", ["--workdir", "/nonexistent/run"], "no checkpoints in /nonexistent/run/checkpoints"),
    ("hfcjax-train", ["--config", "configs/nope.py", "--workdir", "/tmp/x"], "configs/nope.py"),
    ("hfcjax-reproduce", ["--experiment", "table9"], "table9"),
])
def test_console_scripts_run_the_entry_points(script, args, message, root, subprocess_env):
    path = Path(sys.executable).parent / script
    assert path.exists(), f"{script} is not installed: pip install -e . (./run.sh does)"
    out = subprocess.run([str(path), *args], cwd=root, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-1500:]


def distributed_flags(*args):
    from absl import flags

    fv = flags.FlagValues()
    cli.define_distributed_flags(fv)
    fv(["prog", *args])
    return fv


@pytest.mark.parametrize("name, value", [("JAX_NUM_PROCESSES", "abc"), ("JAX_PROCESS_ID", "-1"),
                                         ("HFCJAX_HEARTBEAT_TIMEOUT", "1.5")])
def test_a_bad_process_environment_variable_is_one_line(monkeypatch, capsys, name, value):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    monkeypatch.setenv(name, value)
    fv = distributed_flags("--distributed")  # defining and parsing the flags never reads them
    with pytest.raises(SystemExit) as stop:
        cli.start_distributed(fv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: ${name}={value!r} is not an integer") and "\n" not in err


def test_a_coordinator_port_in_use_is_one_line_before_jax_starts(monkeypatch, capsys):
    import socket

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli.backend, "start_distributed", lambda *a, **k: pytest.fail("JAX was started"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        fv = distributed_flags("--distributed", f"--coordinator_address={address}", "--num_processes=2",
                               "--process_id=0")
        with pytest.raises(SystemExit) as stop:
            cli.start_distributed(fv)
    assert stop.value.code == 2
    assert f"the coordinator address {address} cannot be served here" in capsys.readouterr().err


def test_the_launcher_refuses_a_command_without_distributed_and_passes_signal_statuses(capsys, tmp_path):
    from hfcjax import launch

    marker = tmp_path / "started"
    code = launch.main(["--processes", "2", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert code == 2 and not marker.exists()  # refused before starting anything
    assert "has no --distributed" in capsys.readouterr().err
    assert launch.exit_status(-9) == 137 and launch.exit_status(3) == 3 and launch.exit_status(0) == 0
    killed = launch.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], 1,
                        grace=1)
    assert killed == 137


def test_run_sh_names_its_commands_and_refuses_others():
    """`./run.sh` knows train, evaluate and test; anything else gets its usage line and exit 2
    (before any set-up)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["bash", str(root / "run.sh"), "nonsense"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "./run.sh evaluate" in out.stderr and "./run.sh test" in out.stderr and "nonsense" not in out.stdout
