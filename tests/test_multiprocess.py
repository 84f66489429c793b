"""Real multi-process jobs on one machine: JAX's distributed runtime with gloo CPU collectives,
started by `python -m hfcjax.launch`. Same results as one process, checkpoints across process
counts, a killed process, a mismatched one, and SIGTERM (preemption)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hfcjax import checkpoints, launch, measure

RADII = (4.0,)  # one tracked radius keeps every run's compilation short
OVERRIDES = ["--config.model=lenet", "--config.train_subset=200", "--config.test_subset=100", "--config.eval_train_subset=100",
             "--config.batch_size=40", "--config.eval_batch_size=100", "--config.batch_norm=True",
             "--config.dropout_rate=0.5", "--config.mixup_alpha=0.5", "--config.log_every_steps=1",
             f"--config.track_radii={RADII}", "--config.draw_figures=False"]
TIMING = {"train_seconds", "eval_seconds", "images_per_second"}
FAST_COMPILE = True  # tiny runs: compilation is most of every process's time (conftest._fast_compile)


@pytest.fixture(scope="module")
def job(root, subprocess_env):
    """job(workdir, processes, devices, *overrides, epochs=2) -> Popen: `hfcjax.main` as `processes`
    processes of `devices` CPU devices each (through the launcher when processes > 1)."""

    def start(workdir, processes, devices, *overrides, epochs=2, env=None, **popen):
        train = [sys.executable, "-m", "hfcjax.main", "--config", str(root / "configs" / "fashion_mnist_cnn.py"),
                 "--workdir", str(workdir), *OVERRIDES, f"--config.num_epochs={epochs}", *overrides]
        extra = {"JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu", **(env or {})}
        if processes > 1:
            args = [sys.executable, "-m", "hfcjax.launch", "--processes", str(processes), "--cpu_devices",
                    str(devices), "--grace", "60", "--", *train, "--distributed"]
        else:
            args = train
        return subprocess.Popen(args, cwd=root, env={**subprocess_env, **extra}, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, **popen)

    return start


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def records(workdir):
    with open(checkpoints.RunDir(workdir).metrics) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f if line.strip()]


def assert_same_run(a, b, exact=False):
    """Same metrics (exactly, or within float reduction order: 1 image in 100, loss 1e-5) and parameters."""
    ra, rb = records(a), records(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] and ra[0].keys() == rb[0].keys()
    if exact:
        assert ra == rb
    for x, y in zip(ra, rb):
        np.testing.assert_allclose(x["loss"], y["loss"], rtol=1e-5)
        for split in measure.SPLITS:
            variants = measure.tracked_variants(RADII)
            assert measure.accuracies(x, split, variants) == pytest.approx(measure.accuracies(y, split, variants),
                                                                           abs=1 / 100)
    pa = checkpoints.restore_model(a)[2]
    pb = checkpoints.restore_model(b)[2]
    for u, v in zip(jax_leaves(pa), jax_leaves(pb)):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, job):
    """The same 2-epoch run as 1 process x 4 devices and 2 processes x 2 devices (one device
    against several: test_train's eight-devices tests, in one process)."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("1x4", "2x2")}
    figures = {"2x2": ["--config.draw_figures=True"]}  # drawn (and checked) once
    started = {name: job(dirs[name], int(name[0]), int(name[2]), *figures.get(name, [])) for name in dirs}
    return dirs, {name: finish(proc) for name, proc in started.items()}


def test_two_processes_of_two_devices_match_one_process_of_four(runs):
    dirs, outputs = runs
    assert "4 device(s)" in outputs["2x2"] and "[0] lenet" in outputs["2x2"]
    assert "[1] lenet" not in outputs["2x2"]  # only process 0 reports
    assert_same_run(dirs["2x2"], dirs["1x4"])
    run_dir = checkpoints.RunDir(dirs["2x2"])
    assert (run_dir.figures / "curves.png").is_file() and not run_dir.lock.exists()
    assert len(list(run_dir.events.iterdir())) == 1  # one tensorboard writer: process 0


def test_checkpoints_continue_on_another_process_count(runs, job, tmp_path):
    """Epoch 1 of the 2-process run continued by 1 process, and epoch 1 of the 1-process run (4
    devices) by 2 processes: the runs of the fixture with their epoch-2 checkpoint removed, which
    is what a run stopped after epoch 1 leaves (metrics.jsonl is rewritten from the checkpoint)."""
    dirs, _ = runs
    chains = {tmp_path / "2to1": ("2x2", 1), tmp_path / "1to2": ("1x4", 2)}
    for workdir, (source, _) in chains.items():
        shutil.copytree(dirs[source], workdir)
        last = checkpoints.RunDir(workdir).epoch_dirs()[-1]
        assert last.name == "2"
        shutil.rmtree(last)
    devices = lambda processes: 2 if processes > 1 else 4
    resumed = {w: job(w, then, devices(then)) for w, (_, then) in chains.items()}  # at once: startup overlaps
    for workdir, proc in resumed.items():
        out = finish(proc)
        assert "resuming from" in out and "after epoch 1" in out
        assert_same_run(workdir, dirs["1x4"])


def test_evaluation_reads_a_multiprocess_checkpoint_and_runs_as_two_processes(runs, root, subprocess_env, run_cli):
    from hfcjax import evaluate

    dirs, _ = runs
    options = ["--config.evaluation.rhos=(0,1)", "--config.evals.robustness.eps=(0.05,)",
               "--config.evals.robustness.pgd_steps=2", "--config.evals.robustness.strong_restarts=1",
               "--config.evals.robustness.square_queries=0", "--config.evaluation.num_examples=80",
               "--config.evaluation.batch_size=40", "--config.evaluation.recalibrate_bn=no",
               "--config.evals.spectra.enabled=False"]
    env = {**subprocess_env, "JAX_PLATFORMS": "cpu"}
    code, _, err = run_cli(evaluate.main, "--workdir", dirs["2x2"], *options)  # one process, here
    assert code == 0, err[-2000:]
    eval_dir = checkpoints.RunDir(dirs["2x2"]).eval
    alone = json.loads((eval_dir / "robustness.json").read_text())
    alone_frequency = (eval_dir / "frequency.json").read_text()
    (eval_dir / "robustness.json").unlink()
    two = subprocess.run([sys.executable, "-m", "hfcjax.launch", "--processes", "2", "--cpu_devices", "2", "--",
                          sys.executable, "-m", "hfcjax.evaluate", "--distributed", "--workdir", str(dirs["2x2"]),
                          *options], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:]
    together = json.loads((eval_dir / "robustness.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    for a, b in zip(strip(together["rows"]), strip(alone["rows"])):
        assert a["name"] == b["name"] and a["clean"] == b["clean"]
        assert a["pgd"] == pytest.approx(b["pgd"], abs=1 / 80) and a["fgsm"] == pytest.approx(b["fgsm"], abs=1 / 80)
    assert (eval_dir / "frequency.json").read_text() == alone_frequency


def read_until(proc, prefix, limit=300):
    """Lines of `proc` until one starts with `prefix` (returned), or None at its end."""
    deadline = time.time() + limit
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
        if time.time() > deadline:
            return None
    return None


def test_killing_one_process_ends_the_other_with_one_line_and_a_rerun_resumes(runs, job, tmp_path):
    dirs, _ = runs
    proc = job(tmp_path, 2, 2, env={"HFCJAX_HEARTBEAT_TIMEOUT": "10"})
    pids = {}
    for line in proc.stdout:
        if line.startswith("[launch] process"):
            pids[int(line.split()[2].rstrip(":"))] = int(line.split()[-1])
        if line.startswith("[0] epoch 2/2 step 2/"):
            break
    os.kill(pids[1], signal.SIGKILL)
    start = time.time()
    out, _ = proc.communicate(timeout=240)  # never forever: the coordinator notices within the heartbeat timeout
    assert proc.returncode != 0 and time.time() - start < 200
    said = [line for line in out.splitlines() if "another process of the job died" in line
            or "another task died" in line]
    assert said, out[-3000:]
    assert len(records(tmp_path)) == 1
    out = finish(job(tmp_path, 2, 2))
    assert "after epoch 1" in out
    assert_same_run(tmp_path, dirs["2x2"])


def test_a_process_with_another_config_is_refused_with_one_line(root, subprocess_env, tmp_path):
    envs = launch.environments(2, launch.free_port(), cpu_devices=1, base=subprocess_env)
    base = [sys.executable, "-m", "hfcjax.main", "--distributed", "--config",
            str(root / "configs" / "fashion_mnist_cnn.py"), "--workdir", str(tmp_path), *OVERRIDES]
    procs = [subprocess.Popen(base + (["--config.learning_rate=0.01"] if i else []), cwd=root, env=envs[i],
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert p.returncode == 2 and len(errors) == 1, err[-2000:]
        assert "process(es) [1] were started with another config than process 0" in errors[0]


def test_sigterm_saves_every_process_mid_epoch_and_the_rerun_continues_exactly(runs, job, tmp_path):
    dirs, _ = runs
    proc = job(tmp_path, 2, 2)
    assert read_until(proc, "[0] epoch 2/2 step 2/")
    proc.send_signal(signal.SIGTERM)  # the launcher passes it to both processes
    out = finish(proc, timeout=240)
    assert "SIGTERM: saved the state after step" in out
    position = json.loads((checkpoints.RunDir(tmp_path).preempted / "position.json").read_text())
    assert position["epoch"] == 2 and 2 <= position["step"] <= 5
    out = finish(job(tmp_path, 2, 2))
    assert f"at step {position['step']} of epoch 2 (preempted)" in out
    assert_same_run(tmp_path, dirs["2x2"], exact=True)
    assert not checkpoints.RunDir(tmp_path).preempted.exists()
