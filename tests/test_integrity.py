"""Nothing lost, nothing mixed, nothing hung (issue 16): failed saves, workdir ownership,
corrupt checkpoints, config drift, one-line errors and strict library inputs."""

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from hfcjax import attacks, checkpoints, config as config_lib, data, evaluate, formats, locks, main, smoothing, train

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)

TIMING_KEYS = {"train_seconds", "eval_seconds", "images_per_second"}


def records(workdir):
    path = checkpoints.RunDir(workdir).metrics
    if not path.exists():
        return []
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small(tiny_config):
    return tiny_config(train_subset=200, test_subset=100, eval_train_subset=100, eval_batch_size=100)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small):
    """A finished 2-epoch run: (workdir, its metric records)."""
    workdir = tmp_path_factory.mktemp("finished")
    train.train_and_evaluate(small, str(workdir))
    return workdir, records(workdir)


def copy_run(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    return workdir


def main_args(root, workdir, *args):
    return ["--config", str(root / "configs" / "fashion_mnist_cnn.py"), "--workdir", str(workdir),
            "--config.model=lenet", "--config.train_subset=200", "--config.test_subset=100",
            "--config.eval_train_subset=100", "--config.num_epochs=1", "--config.batch_size=40",
            "--config.eval_batch_size=100", "--config.draw_figures=False", *args]


def python_main(root, subprocess_env, workdir, *args):
    """`python -m hfcjax.main` in its own process (where another process is what is tested)."""
    cmd = [sys.executable, "-m", "hfcjax.main", *main_args(root, workdir, *args)]
    return subprocess.run(cmd, cwd=root, env=subprocess_env, capture_output=True, text=True, timeout=300)


def one_error_line(stderr):
    stderr = getattr(stderr, "stderr", stderr)  # a finished process, or its stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


# 1. failed saves ----------------------------------------------------------------------------


def test_a_failed_save_stops_the_run_at_once_and_writes_no_metrics_for_it(tmp_path, small, monkeypatch):
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(checkpoints.CheckpointError, match=r"saving the checkpoint of epoch 2 .* failed \(OSError: "
                                                          r".*No space left.*no metrics were written"):
        train.train_and_evaluate(small, str(tmp_path))
    assert [r["epoch"] for r in records(tmp_path)] == [1]
    assert not checkpoints.RunDir(tmp_path).lock.exists()  # the workdir is released


def test_sigint_during_a_save_finishes_the_save_then_stops(tmp_path, small, monkeypatch):
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while epoch 1 is being written
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(train.Interrupted, match="stopped by SIGINT in epoch 2 at step 1; the last checkpoint is "
                                                "of epoch 1") as stopped:
        train.train_and_evaluate(small, str(tmp_path))
    assert stopped.value.exit_code == 130
    run = checkpoints.RunDir(tmp_path)
    assert [p.name for p in run.epoch_dirs()] == ["1"] and checkpoints.verify(run.epoch_dirs()[0]) is None
    assert (run.epoch_dirs()[0] / checkpoints.CHECKSUMS).is_file()
    assert [r["epoch"] for r in records(tmp_path)] == [1] and not run.lock.exists()


def test_checkpoints_folder_that_is_a_file_is_one_line(tmp_path, root, run_cli):
    (tmp_path / "checkpoints").write_text("")
    code, _, err = run_cli(main.main, *main_args(root, tmp_path))
    assert code == 2
    assert "is a file, not a folder" in one_error_line(err)
    assert records(tmp_path) == []


# 3. ownership --------------------------------------------------------------------------------


def test_a_second_run_in_a_busy_workdir_is_refused(tmp_path, root, subprocess_env):
    with locks.WorkdirLock(checkpoints.RunDir(tmp_path).lock):  # this test process owns it
        proc = python_main(root, subprocess_env, tmp_path)
    assert proc.returncode == 2
    assert "is in use by pid" in one_error_line(proc)
    assert records(tmp_path) == [] and not checkpoints.RunDir(tmp_path).lock.exists()


def test_a_stale_lock_is_taken_over(tmp_path, small, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = checkpoints.RunDir(tmp_path).lock
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "earlier"}))
    config = small.copy_and_resolve_references()
    config.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path))
    assert f"taking over the stale lock {lock} of pid {dead.pid}" in capsys.readouterr().out
    assert [r["epoch"] for r in records(tmp_path)] == [1] and not lock.exists()


# 4. corruption -------------------------------------------------------------------------------


def largest_model_file(workdir, epoch):
    folder = checkpoints.RunDir(workdir).checkpoints / str(epoch) / checkpoints.MODEL
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_bytes(path, count=400):
    raw = bytearray(path.read_bytes())
    start = len(raw) // 2
    for i in range(start, min(start + count, len(raw))):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate"])
def test_corrupt_latest_checkpoint_falls_back_for_evaluation_and_resume(finished, tmp_path, small, damage):
    workdir = copy_run(finished, tmp_path)
    target = largest_model_file(workdir, 2)
    if damage == "flip":
        flip_bytes(target)
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:100])
    said = []
    _, _, _, epoch = checkpoints.restore_model(workdir, "latest", log=said.append)
    assert epoch == 1 and len(said) == 1 and "epoch 2 is corrupt" in said[0]
    with pytest.raises(checkpoints.CheckpointError, match="epoch 2 .* is corrupt"):
        checkpoints.restore_model(workdir, 2)
    result = evaluate.evaluate(workdir, evaluation=dict(rhos=(0.0,), num_examples=20, batch_size=20),
                               robustness=dict(eps=(0.05,), pgd_steps=1, strong_restarts=1, square_queries=0),
                               frequency=dict(svd_ranks=()))
    assert result.about["checkpoint_epoch"] == 1 and "epoch 2 is corrupt" in result.about["checkpoint_notes"][0]
    report = (checkpoints.RunDir(workdir).eval / "report.md").read_text()
    assert report.startswith("**Note:** the checkpoint of epoch 2 is corrupt")  # in the report, not only on the console
    # Resuming moves the corrupt epoch aside and retrains it: the same numbers as before.
    history = train.train_and_evaluate(small, str(workdir))
    assert [r["epoch"] for r in history] == [1, 2]
    assert records(workdir) == finished[1]
    assert [p.name.split("-")[0] for p in checkpoints.RunDir(workdir).corrupt.iterdir()] == ["2"]


def test_a_corrupt_best_checkpoint_is_refused_naming_the_intact_ones(finished, tmp_path):
    workdir = copy_run(finished, tmp_path)
    accuracy = {r["epoch"]: r["test_acc"] for r in records(workdir)}
    best = max(sorted(accuracy), key=lambda e: (accuracy[e], e))
    flip_bytes(largest_model_file(workdir, best))
    other = [e for e in accuracy if e != best]
    message = rf"^the best checkpoint of epoch {best} .* is corrupt .*evaluate one of the intact epochs {re.escape(str(other))} with"
    with pytest.raises(checkpoints.CheckpointError, match=message):
        checkpoints.restore_model(workdir, "best", log=lambda m: pytest.fail(f"fell back: {m}"))


def test_every_checkpoint_has_checksums_that_match(finished):
    for epoch_dir in checkpoints.RunDir(finished[0]).epoch_dirs():
        assert (epoch_dir / checkpoints.CHECKSUMS).is_file() and checkpoints.verify(epoch_dir) is None


# 5. config drift -----------------------------------------------------------------------------


def test_resuming_with_a_results_changing_config_is_refused_unless_allowed(finished, tmp_path, small):
    workdir = copy_run(finished, tmp_path)
    changed = small.copy_and_resolve_references()
    changed.learning_rate, changed.track_radii, changed.num_epochs, changed.draw_figures = 1e-2, (2.0,), 3, True
    assert not (checkpoints.RunDir(workdir).figures / "curves.png").exists()  # the finished run drew none
    with pytest.raises(train.ConfigChanged, match=r"learning_rate: 0.003 -> 0.01; track_radii: \[4.0, 8.0, 12.0, "
                                                  r"16.0\] -> \[2.0\].*--allow_config_change=learning_rate,track_radii"):
        train.train_and_evaluate(changed, str(workdir))
    assert records(workdir) == finished[1]
    history = train.train_and_evaluate(changed, str(workdir), allow_config_change=["learning_rate", "track_radii"])
    assert [r["epoch"] for r in history] == [1, 2, 3] and "test_low_r2" in history[-1]
    assert (checkpoints.RunDir(workdir).figures / "curves.png").exists()  # drawn from the radii all epochs have


def test_logging_and_length_changes_resume(finished, tmp_path, small):
    workdir = copy_run(finished, tmp_path)
    changed = small.copy_and_resolve_references()
    changed.log_every_steps, changed.eval_batch_size, changed.num_epochs = 2, 50, 3
    history = train.train_and_evaluate(changed, str(workdir))
    assert [r["epoch"] for r in history] == [1, 2, 3] and records(workdir)[:2] == finished[1]


def test_result_changes_lists_nested_keys():
    old = config_lib.default()
    new = config_lib.default()
    new.adversarial.eps, new.num_epochs = 0.1, 7
    assert config_lib.result_changes(old.to_dict(), new) == [f"adversarial.eps: {8 / 255!r} -> 0.1"]
    assert config_lib.result_changes(old.to_dict(), new, allowed=["adversarial.eps"]) == []


# 7. one-line errors on every entry point -----------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--config.batchsize=5"], 'unknown config key \'batchsize\' Did you mean "batch_size"'),
    (["--config.momentum=-5"], "config.momentum must be in [0, 1)"),
    (["--config.seed=-1"], "config.seed must be an integer >= 0"),
])
def test_main_config_errors_are_one_line(tmp_path, root, run_cli, args, message):
    code, _, err = run_cli(main.main, *main_args(root, tmp_path / "run", *args))
    assert code == 2 and message in one_error_line(err)


def test_main_file_errors_are_one_line(tmp_path, root, subprocess_env, run_cli, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("")
    for workdir, message in ((afile, "cannot write to the workdir"), (afile / "sub", "cannot write to the workdir")):
        code, _, err = run_cli(main.main, *main_args(root, workdir))
        assert code == 2 and message in one_error_line(err)
    monkeypatch.chdir(root)
    code, _, err = run_cli(main.main, "--config", "configs/nope.py", "--workdir", tmp_path)
    assert code == 2 and "configs/nope.py" in one_error_line(err)
    # The command itself, in its own process: the same one line.
    proc = subprocess.run([sys.executable, "-m", "hfcjax.main", "--config", "configs/nope.py", "--workdir",
                           str(tmp_path)], cwd=root, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "configs/nope.py" in one_error_line(proc)


def test_main_answers_help_and_rejects_stray_arguments(tmp_path, root, run_cli):
    code, out, _ = run_cli(main.main, "--help")
    assert code == 0 and out.startswith("usage: prog [flags]") and "--workdir" in out and "--[no]distributed" in out
    code, _, err = run_cli(main.main, *main_args(root, tmp_path, "stray"))
    assert code == 2 and "unexpected arguments: ['stray']" in one_error_line(err)
    code, _, err = run_cli(main.main, "--config", root / "configs" / "fashion_mnist_cnn.py")
    assert code == 2 and "--workdir" in one_error_line(err)


def test_plots_unknown_dataset_is_one_line(tmp_path, root, subprocess_env):
    proc = subprocess.run([sys.executable, "-m", "hfcjax.plots", "--dataset", "imagenet", "--out",
                           str(tmp_path / "x.png")], cwd=root, env=subprocess_env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--dataset=imagenet" in one_error_line(proc)


# 8. strict library inputs --------------------------------------------------------------------


def linear(x):
    return x.reshape(x.shape[0], -1)[:, :3]


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "square"])
def test_attacks_reject_bad_eps_and_labels(attack):
    x = jnp.full((4, 4, 4, 1), 0.5)
    run = {"fgsm": lambda e, y: attacks.fgsm(linear, x, y, e),
           "pgd": lambda e, y: attacks.pgd(linear, x, y, e, step_size=0.01, steps=1),
           "square": lambda e, y: attacks.square(linear, x, y, e, key=jax.random.key(0), queries=1)}[attack]
    y = jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        run(-0.1, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        run(0.1, jnp.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"one integer per image, shape \[4\]"):
        run(0.1, jnp.zeros((), jnp.int32))
    assert run(0.1, y).shape == x.shape
    # Traced eps and labels are not checked (documented): a jitted sweep still compiles.
    assert jax.jit(run)(0.1, y).shape == x.shape


def test_smoothing_rejects_bad_rho_and_takes_one_regex_as_a_string():
    params = {"stem": {"kernel": jnp.ones((3, 3, 1, 2))}, "conv2": {"kernel": jnp.ones((3, 3, 2, 2))}}
    for rho in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="rho must be a finite number >= 0"):
            smoothing.smooth_params(params, rho)
    assert smoothing.selected_paths(params, "conv") == [("conv2", "kernel")]


def test_evaluation_settings_are_checked():
    with pytest.raises(ValueError, match="config.evaluation.num_examples must be an integer >= 0"):
        config_lib.evaluation_config(evaluation={"num_examples": -5})
    with pytest.raises(ValueError, match="config.evals.robustness.pgd_step_fraction must be in"):
        config_lib.evaluation_config(robustness={"pgd_step_fraction": 2.0})


def test_unreadable_data_file_says_permission_not_corrupt(data_dir, monkeypatch):
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(formats, "open", denied, raising=False)
    with pytest.raises(data.DataError, match="cannot read .*test_batch: permission denied"):
        data.load("cifar10", "test", source="files")
    monkeypatch.setattr(formats.gzip, "open", denied)
    with pytest.raises(data.DataError, match="permission denied"):
        data.load("fashion_mnist", "test", source="files")


def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_temporary_folder(tmp_path, small, monkeypatch, capsys):
    """ENOSPC while orbax writes epoch 2: one CheckpointError line, no temporary folder, epoch 1 intact."""
    import errno

    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    workdir = tmp_path / "run"
    small = copy.deepcopy(small)
    small.num_epochs = 1
    train.train_and_evaluate(small, str(workdir))
    real = handler.JsonCheckpointHandler._save_fn

    async def full_disk(self, x, directory):
        if '"epoch": 2' in json.dumps(x):  # the history of epoch 2
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, x, directory)

    monkeypatch.setattr(handler.JsonCheckpointHandler, "_save_fn", full_disk)
    small.num_epochs = 2
    message = r"^saving the checkpoint of epoch 2 .* failed \(OSError: .*No space left on device\); its unfinished"
    with pytest.raises(checkpoints.CheckpointError, match=message):
        train.train_and_evaluate(small, str(workdir))
    folder = checkpoints.RunDir(workdir).checkpoints
    assert sorted(p.name for p in folder.iterdir()) == ["1"]
    assert checkpoints.verify(folder / "1") is None
    assert capsys.readouterr().err.count("\n") < 5  # not orbax's pages of log lines


def test_reading_a_checkpoint_for_evaluation_logs_no_orbax_warnings(finished, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        checkpoints.restore_model(finished[0], "latest", log=lambda m: None)
    assert "read_only" not in caplog.text
