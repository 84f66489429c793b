"""The real training loop on tiny subsets of the real data: end to end, heuristics,
resume after SIGKILL, 8 simulated devices, NaN handling, config validation."""

import json
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from hfcjax import checkpoints, data, main, measure, sharding, steps, train

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)

TIMING_KEYS = {"train_seconds", "eval_seconds", "images_per_second"}


@pytest.fixture(scope="session")
def cli(root, subprocess_env):
    """cli(workdir, *overrides, env=None) -> Popen of `python -m hfcjax.main` on the tiny set-up."""

    def start(workdir, *overrides, env=None, **popen):
        args = [sys.executable, "-m", "hfcjax.main", "--config", str(root / "configs" / "fashion_mnist_cnn.py"),
                "--workdir", str(workdir), *SUBPROCESS_OVERRIDES, *overrides]
        return subprocess.Popen(args, cwd=root, env={**subprocess_env, **(env or {})}, text=True,
                                stdout=subprocess.PIPE, **{"stderr": subprocess.STDOUT, **popen})

    return start


SUBPROCESS_RADII = (4.0, 16.0)
# 20 steps per epoch: the signal tests stop epoch 2 at step 5 or 15. LeNet (the same _PlainCNN with
# BatchNorm and dropout as the MNIST CNN, a tenth of its FLOPs): a warm run takes 7 s instead of 14.
SUBPROCESS_OVERRIDES = ["--config.model=lenet", "--config.train_subset=800", "--config.test_subset=200",
                        "--config.eval_train_subset=200", "--config.batch_size=40", "--config.eval_batch_size=200",
                        "--config.num_epochs=2", "--config.learning_rate=0.003", "--config.log_every_steps=5", "--config.batch_norm=True",
                        "--config.dropout_rate=0.5", "--config.mixup_alpha=0.5", "--config.draw_figures=False",
                        f"--config.track_radii={SUBPROCESS_RADII}"]


def records(workdir):
    with open(checkpoints.RunDir(workdir).metrics) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f if line.strip()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = cli(workdir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return workdir


def test_end_to_end_writes_metrics_events_figures_checkpoints(tmp_path, tiny_config):
    history = train.train_and_evaluate(tiny_config(draw_figures=True), str(tmp_path))
    assert [r["epoch"] for r in history] == [1, 2]
    lines = records(tmp_path)
    assert len(lines) == 2
    for key in ("train_acc", "test_acc", "train_low_r4", "test_high_r16", "test_low_r12", "loss"):
        assert key in lines[-1]
    assert lines[-1]["test_acc"] > 0.5  # real Fashion-MNIST, chance is 0.1
    assert lines[-1]["test_low_r16"] > lines[-1]["test_high_r16"]
    run_dir = checkpoints.RunDir(tmp_path)
    for name in ("curves.png", "split_examples.png"):
        assert (run_dir.figures / name).read_bytes()[:4] == b"\x89PNG"
    assert any(run_dir.events.iterdir())
    assert [int(p.name) for p in run_dir.epoch_dirs()] == [1, 2]
    # Rerunning the finished command resumes, trains nothing and keeps the metrics.
    again = train.train_and_evaluate(tiny_config(), str(tmp_path))
    assert [r["epoch"] for r in again] == [1, 2] and records(tmp_path) == lines


def one_step_params(config, tmp_path):
    trainer = train.Trainer(config, str(tmp_path))
    images, labels, _ = next(data.batches(trainer.train_images, trainer.train_labels, config.batch_size,
                                          seed=0, epoch=1))
    x, y = sharding.global_batch(trainer.batch_sh, images, labels)
    state, _ = trainer.train_step(trainer.init(), steps.zero_totals(), x, y)
    return jax.device_get(state.params), trainer


@pytest.fixture(scope="module")
def base_step(tmp_path_factory, tiny_config):
    """The parameters after one step of the tiny config, without any heuristic."""
    return one_step_params(tiny_config(), tmp_path_factory.mktemp("base"))[0]


@pytest.mark.parametrize("override", [
    {"mixup_alpha": 0.5}, {"dropout_rate": 0.5}, {"adversarial.enabled": True},
    {"train_component": "low"}, {"train_component": "high"}, {"optimizer": "sgd"},
])
def test_each_heuristic_changes_the_step(tmp_path, override, tiny_config, base_step):
    changed, _ = one_step_params(tiny_config(**override), tmp_path / "b")
    repeat, _ = one_step_params(tiny_config(**override), tmp_path / "c")
    diffs = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(base_step), jax.tree.leaves(changed))]
    assert max(diffs) > 1e-6, f"{override} did not change the update"
    for a, b in zip(jax.tree.leaves(changed), jax.tree.leaves(repeat)):
        np.testing.assert_array_equal(a, b)  # and it is deterministic


def test_shuffled_labels_are_a_fixed_permutation(tmp_path, tiny_config):
    _, natural = one_step_params(tiny_config(), tmp_path / "a")
    _, shuffled = one_step_params(tiny_config(shuffle_labels=True), tmp_path / "b")
    _, again = one_step_params(tiny_config(shuffle_labels=True), tmp_path / "c")
    assert (natural.train_labels != shuffled.train_labels).mean() > 0.8
    np.testing.assert_array_equal(np.bincount(natural.train_labels), np.bincount(shuffled.train_labels))
    np.testing.assert_array_equal(shuffled.train_labels, again.train_labels)
    np.testing.assert_array_equal(natural.test_labels, shuffled.test_labels)


def test_resume_after_sigkill_mid_epoch_equals_uninterrupted(tmp_path, uninterrupted, cli):
    proc = cli(tmp_path)
    killed_at = None
    for line in proc.stdout:
        if line.startswith("epoch 2/2 step 15/"):
            proc.send_signal(signal.SIGKILL)
            killed_at = line.strip()
            break
    proc.wait(timeout=60)
    assert killed_at, "the run ended before it could be killed in epoch 2"
    assert len(records(tmp_path)) == 1
    resumed = cli(tmp_path)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resuming" in out and "after epoch 1" in out
    assert records(tmp_path) == records(uninterrupted)


def test_sigint_stops_at_a_step_with_one_line_and_resumes_exactly(tmp_path, uninterrupted, cli):
    proc = cli(tmp_path, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("epoch 2/2 step 15/"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)  # promptly: the next step boundary
    assert proc.returncode == 128 + signal.SIGINT, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("error: stopped by SIGINT in epoch 2 at step")
    assert "the last checkpoint is of epoch 1" in errors[0]
    assert len(records(tmp_path)) == 1 and not checkpoints.RunDir(tmp_path).lock.exists()
    resumed = cli(tmp_path)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert records(tmp_path) == records(uninterrupted)


def test_sigterm_saves_mid_epoch_exits_0_and_the_rerun_continues_from_that_step(tmp_path, uninterrupted, cli):
    """What a preempted VM gets: the state after the next step is saved with the epoch's running
    totals; the rerun trains only the rest of the epoch and ends with the uninterrupted metrics."""
    proc = cli(tmp_path, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("epoch 2/2 step 5/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = [line for line in err.splitlines() if line.startswith("SIGTERM: ")]
    assert len(lines) == 1 and "Traceback" not in err and "error" not in err, err
    step = int(lines[0].split("after step ")[1].split()[0])
    assert 5 <= step < 15 and "of epoch 2" in lines[0]
    run_dir = checkpoints.RunDir(tmp_path)
    assert (run_dir.preempted / "position.json").is_file() and len(records(tmp_path)) == 1
    resumed = cli(tmp_path)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"at step {step} of epoch 2 (preempted)" in out
    assert f"epoch 2/2 step {step}/" not in out  # the steps before the preemption are not trained again
    assert records(tmp_path) == records(uninterrupted)
    assert not run_dir.preempted.exists()


EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def test_eight_devices_match_one_device_step_by_step(tmp_path, tiny_config, root, subprocess_env):
    """Same parameters after 3 steps (BatchNorm, dropout, mixup on) and same eval counts."""
    config = tiny_config(batch_norm=True, dropout_rate=0.5, mixup_alpha=0.5).to_json()
    outputs = []
    for env in ({}, EIGHT_DEVICES):
        out = subprocess.run([sys.executable, str(root / "tests" / "multidevice_steps.py"), str(tmp_path), config],
                             cwd=root, env={**subprocess_env, **env}, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        outputs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    one, eight = outputs
    assert (one["devices"], eight["devices"]) == (1, 8)
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    np.testing.assert_allclose(one["abs"], eight["abs"], rtol=1e-5)
    np.testing.assert_allclose(one["params"], eight["params"], rtol=1e-3, atol=1e-3)
    assert one["metrics"] == pytest.approx(eight["metrics"], abs=1 / 200)


def test_eight_devices_match_one_device_end_to_end(tmp_path, uninterrupted, cli):
    """Two whole epochs: float reduction order differs, so compare within a few examples."""
    proc = cli(tmp_path, env=EIGHT_DEVICES)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "8 device(s)" in out
    one, eight = records(uninterrupted), records(tmp_path)
    assert len(one) == len(eight) == 2
    for a, b in zip(one, eight):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3)
        for split in measure.SPLITS:
            one_acc = measure.accuracies(a, split, measure.tracked_variants(SUBPROCESS_RADII))
            eight_acc = measure.accuracies(b, split, measure.tracked_variants(SUBPROCESS_RADII))
            for variant, value in one_acc.items():
                assert abs(value - eight_acc[variant]) <= 0.03, (split, variant)


def test_nan_loss_stops_with_the_step_and_no_checkpoint(tmp_path, tiny_config):
    config = tiny_config(optimizer="sgd", learning_rate=1e12, num_epochs=1)
    with pytest.raises(steps.TrainingError, match=r"NaN or inf at step \d+ \(epoch 1\).*no checkpoint"):
        train.train_and_evaluate(config, str(tmp_path))
    assert checkpoints.RunDir(tmp_path).epoch_dirs() == []
    assert records(tmp_path) == []


@pytest.mark.parametrize("override,message", [
    ({"optimizer": "lamb"}, "config.optimizer 'lamb' is unknown"),
    ({"dataset": "svhn"}, "unknown dataset 'svhn'"),
    ({"model": "resnet19"}, "config.model 'resnet19' is unknown"),
    ({"batch_size": 0}, "config.batch_size must be a positive integer"),
    ({"learning_rate": -1.0}, "config.learning_rate must be > 0"),
    ({"train_component": "mid"}, "config.train_component 'mid' is unknown; choose one of"),
    ({"track_radii": (4.0, -1.0)}, "config.track_radii: radii must be >= 0"),
    ({"track_radii": (4.0, float("inf"))}, "config.track_radii: radii must be >= 0 and finite"),
    ({"train_radius": float("inf")}, "config.train_radius: radii must be >= 0 and finite"),
    ({"train_subset": -5}, "config.train_subset must be an integer >= 0"),
    ({"seed": -1}, "config.seed must be an integer >= 0"),
    ({"momentum": -5.0}, r"config.momentum must be in \[0, 1\)"),
    ({"eval_train_subset": 700}, "config.eval_train_subset .700. must not exceed config.train_subset .600."),
    ({"batch_size": 100000}, "larger than the training set"),
])
def test_bad_config_values_are_rejected(tmp_path, override, message, tiny_config):
    with pytest.raises(ValueError, match=message):
        train.Trainer(tiny_config(**override), str(tmp_path))


def test_cli_bad_value_is_one_clear_line(tmp_path, root, run_cli):
    code, _, err = run_cli(main.main, "--config", root / "configs" / "fashion_mnist_cnn.py", "--workdir", tmp_path,
                           *SUBPROCESS_OVERRIDES, "--config.optimizer=lamb")
    assert code == 2
    assert err.startswith("error: config.optimizer 'lamb' is unknown") and err.count("\n") == 1


def test_no_recompiles_across_steps_and_epochs(tmp_path, tiny_config, count_compiles):
    config = tiny_config(num_epochs=1, train_subset=200, test_subset=120, eval_train_subset=120, eval_batch_size=80)
    with count_compiles() as first:
        train.Trainer(config, str(tmp_path)).run()  # 5 steps, evaluation with a padded last batch
    assert first["train_step"] == 1 and first["sums"] == 1
    config.num_epochs = 3
    with count_compiles() as later:
        history = train.Trainer(config, str(tmp_path)).run()  # resumes: 2 more epochs, new Trainer
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert later["train_step"] <= 1 and later["sums"] <= 1  # at most once per process, never per epoch


def test_training_tracks_the_evaluators_of_config_evals_every_n_epochs(tmp_path, tiny_config):
    """Per-epoch tracking is the evaluators (not a second code path): accuracy every epoch by
    default; robustness every 2nd epoch when asked; an epoch without test accuracy is never
    the best checkpoint; an analysis that cannot run per batch is refused in one line."""
    config = tiny_config(num_epochs=2, train_subset=200, test_subset=40, eval_train_subset=40, eval_batch_size=40,
                         **{"evals.robustness.every_epochs": 2, "evals.robustness.eps": (0.0, 0.1),
                            "evals.robustness.pgd_steps": 2, "evals.robustness.strong_restarts": 1,
                            "evals.robustness.square_queries": 0})
    history = train.Trainer(config, str(tmp_path / "a")).run()
    first, second = history
    assert "test_acc" in first and "test_low_r4" in first and "train_high_r16" in first
    assert not any("robustness" in k for k in first)
    assert second["test_robustness_clean"] == pytest.approx(second["test_acc"])  # one model, two evaluators
    assert second["test_robustness_pgd_eps0"] == pytest.approx(second["test_acc"])  # eps 0 changes nothing
    assert second["test_robustness_pgd_eps0.1"] <= second["test_acc"]
    assert "train_robustness_worst_case" in second and "test_robustness_square" not in second  # off: left out

    config = tiny_config(num_epochs=2, train_subset=200, test_subset=40, eval_train_subset=40, eval_batch_size=40,
                         **{"evals.accuracy.every_epochs": 2})
    history = train.Trainer(config, str(tmp_path / "b")).run()
    assert "test_acc" not in history[0] and "test_acc" in history[1]
    assert checkpoints.restore_model(tmp_path / "b", "best", log=lambda m: None)[3] == 2  # epoch 1 has no test_acc

    with pytest.raises(ValueError, match=r"^config.evals.heatmap.every_epochs: heatmap runs after training only"):
        train.Trainer(tiny_config(**{"evals.heatmap.every_epochs": 1}), str(tmp_path / "c"))


def test_a_stop_request_takes_effect_after_the_step_it_arrived_in(tmp_path, tiny_config):
    """SIGTERM arriving while step k is dispatched saves the state after step k, and the loop
    never runs more than one step ahead of the device (XLA dispatches asynchronously)."""
    trainer = train.Trainer(tiny_config(num_epochs=1, train_subset=400, test_subset=40, eval_train_subset=40),
                            str(tmp_path))
    real, outputs = trainer.train_step, []

    def step(state, totals, x, y):
        if len(outputs) >= 2:
            assert outputs[-2].is_ready(), "more than one step in flight"
        new_state, new_totals = real(state, totals, x, y)
        outputs.append(new_totals["count"])
        if len(outputs) == 4:
            trainer.stop.append(signal.SIGTERM)  # what the handler does when the signal arrives now
        return new_state, new_totals

    trainer.train_step = step
    with pytest.raises(train.Preempted, match="after step 4 of epoch 1"):
        trainer.run()
    assert len(outputs) == 4
    position = json.loads((checkpoints.RunDir(tmp_path).preempted / "position.json").read_text())
    assert position["step"] == 4 and position["epoch"] == 1
