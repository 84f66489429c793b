"""hfcjax.evaluate on a real (tiny) training run: files, structure, restore, errors."""

import csv
import json
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfcjax import checkpoints, data, evaluate, evaluators, heatmap, smoothing, train

FAST = dict(rhos=(0.0, 1.0), eps=(0.05, 0.1), num_examples=40, batch_size=20, pgd_steps=3, strong_restarts=2,
            square_queries=10, recalibrate_examples=200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_config):
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(tiny_config(num_epochs=1, batch_norm=True), str(workdir))
    return workdir


def test_table2_grid_and_reports_are_written(run_dir):
    result = evaluate.evaluate(run_dir, **FAST)
    out = checkpoints.RunDir(run_dir).eval
    names = [r["name"] for r in result["rows"]]
    assert names == ["rho=0", "rho=1", "rho=0 (BN re-estimated)", "rho=1 (BN re-estimated)"]
    for row in result["rows"]:
        assert len(row["fgsm"]) == len(row["pgd"]) == 2
        assert 0 <= row["worst_case"] <= min(row["pgd"][-1], row["pgd_strong"], row["square"], row["fgsm"][-1])
        assert all(0 <= v <= 1 for v in [row["clean"], *row["fgsm"], *row["pgd"]])
    assert result["rows"][1]["roughness"] < result["rows"][0]["roughness"]
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    with open(out / "robustness.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and "pgd_0.1" in table[0] and "worst_case" in table[0]
    md = (out / "robustness.md").read_text().splitlines()
    assert md[0].startswith("| model | clean | FGSM 0.05") and len(md) == 6
    for png in ("kernels.png", "robustness.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    freq = saved["frequency"]
    assert set(freq["accuracy"]) >= {"original", "low_r4", "high_r16", "dominant_k8", "trailing_k16"}
    assert freq["accuracy"]["original"] == pytest.approx(result["rows"][0]["clean"])
    assert set(freq["figure2_count"]) == {"r4", "r8", "r12", "r16"}
    assert "Figure-2 count" in (out / "frequency.md").read_text()


def test_clean_accuracy_matches_the_restored_model_directly(run_dir):
    config, model, variables, _ = checkpoints.restore_model(run_dir)
    x, y = data.load("fashion_mnist", "test")
    logits = model.apply(variables, x[:40].astype(np.float32) / 255)
    direct = float((np.argmax(logits, -1) == y[:40]).mean())
    result = evaluate.evaluate(run_dir, **{**FAST, "rhos": (0.0,), "recalibrate_bn": False})
    assert result["rows"][0]["clean"] == pytest.approx(direct)


def test_evaluation_needs_no_optimizer_state(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for epoch_dir in checkpoints.RunDir(copy).epoch_dirs():
        shutil.rmtree(epoch_dir / checkpoints.TRAIN)
    result = evaluate.evaluate(copy, **{**FAST, "rhos": (0.5,), "recalibrate_bn": False})
    assert len(result["rows"]) == 1


def test_rho_grid_compiles_once(run_dir):
    config, model, variables, _ = checkpoints.restore_model(run_dir)
    counts = evaluators.make_attack_counts(lambda v, z: model.apply(v, z), pgd_steps=2, pgd_step_fraction=0.25,
                                           strong_restarts=1, square_queries=2)
    f = jax.jit(chex.assert_max_traces(counts, n=1))
    x, y = data.load("fashion_mnist", "test")
    for rho in (0.0, 0.1, 1.0):  # a second trace would raise
        current = {**variables, "params": smoothing.smooth_params(variables["params"], rho)}
        f(current, x[:8], y[:8], np.ones(8, np.float32), jnp.array([0.03, 0.06]), jax.random.PRNGKey(0))


def test_batch_norm_reestimation_is_the_mean_of_batch_statistics(run_dir):
    config, model, variables, _ = checkpoints.restore_model(run_dir)
    x, _ = data.load("fashion_mnist", "train")
    images = x[:400]
    recal = evaluators.recalibrate_batch_stats(model, variables, images, batch_size=200)
    kernel = variables["params"]["stem"]["kernel"]
    means, variances = [], []
    for half in (images[:200], images[200:]):
        conv = jax.lax.conv_general_dilated(half.astype(np.float32) / 255, kernel, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        means.append(np.asarray(conv).mean((0, 1, 2)))
        variances.append(np.asarray(conv).var((0, 1, 2)))
    np.testing.assert_allclose(recal["batch_stats"]["stem_bn"]["mean"], np.mean(means, 0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(recal["batch_stats"]["stem_bn"]["var"], np.mean(variances, 0), rtol=1e-3, atol=1e-5)


def test_clear_errors(run_dir, tmp_path, root, subprocess_env):
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoints in .*train first"):
        evaluate.evaluate(tmp_path, **FAST)
    with pytest.raises(ValueError, match="eps values must lie in"):
        evaluate.evaluate(run_dir, **{**FAST, "eps": (0.1, 1.5)})
    with pytest.raises(ValueError, match="no convolution kernel matches"):
        evaluate.evaluate(run_dir, **{**FAST, "layers": ("^nothing$",)})
    with pytest.raises(ValueError, match="unknown evaluation settings .'step'."):
        evaluate.evaluate(run_dir, step="latest")
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint of epoch 7 .* have \\[1\\]"):
        evaluate.evaluate(run_dir, **{**FAST, "epoch": 7})
    for args, message in (("--eps=0.1,2", "eps values must lie in [0.0, 1.0]"),
                          ("--rho=a", "--rho must be comma-separated numbers"),
                          ("--layers=[", "error: bad regex"),
                          ("--recalibrate_bn=maybe", "error: flag --recalibrate_bn=maybe")):
        proc = subprocess.run([sys.executable, "-m", "hfcjax.evaluate", "--workdir", str(run_dir), args],
                              cwd=root, env=subprocess_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr[-1000:])
        assert "Traceback" not in proc.stderr


def test_batch_norm_reestimation_compiles_once_across_rhos(run_dir, count_compiles):
    config, model, variables, _ = checkpoints.restore_model(run_dir)
    images = data.load("fashion_mnist", "train")[0][:200]
    stats_fn = evaluators.make_batch_stats_fn(model)
    with count_compiles() as compiles:
        for rho in (0.0, 0.5, 1.0):
            smoothed = {**variables, "params": smoothing.smooth_params(variables["params"], rho)}
            evaluators.recalibrate_batch_stats(model, smoothed, images, batch_size=100, stats_fn=stats_fn)
    assert compiles["batch_stats_of"] == 1


def test_heat_maps_band_limited_pgd_and_spectra_are_written(run_dir):
    result = evaluate.evaluate(run_dir, **{**FAST, "recalibrate_bn": False, "heatmap_eps": 1.0, "band_radius": 4.0,
                                           "num_examples": 20, "apgd_steps": 3})
    out = checkpoints.RunDir(run_dir).eval
    assert result["model_checks"] == [] and result["apgd_steps"] == 3
    maps = [np.load(out / "heatmap.npy"), np.load(out / "heatmap_rho1.npy")]
    assert all(m.shape == (28, 28) and 0 <= m.min() <= m.max() <= 1 for m in maps)
    inside, outside = result["heatmap"]["band_error"]["rho=0"]["r4"].values()
    assert inside == pytest.approx(heatmap.band_means(maps[0], 4.0)[0])
    for name in ("heatmap.png", "spectra.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    row = result["rows"][0]
    assert len(row["pgd_low"]) == len(row["pgd_high"]) == len(row["leak_high"]) == 2
    assert all(0 <= v <= 1 for v in row["leak_low"] + row["leak_high"])
    assert row["worst_case_per_eps"][-1] == row["worst_case"]
    assert row["worst_case_per_eps"][0] <= min(row["fgsm"][0], row["pgd"][0], row["pgd_low"][0], row["pgd_high"][0])
    assert set(row["spectra"]) == {"fgsm", "pgd", "pgd_low", "pgd_high", "pgd_strong", "square", "apgd_ce",
                                   "apgd_dlr"}
    assert row["worst_case"] <= min(row["apgd_ce"], row["apgd_dlr"], row["pgd_strong"], row["square"])
    with open(out / "robustness.csv") as f:
        header = next(csv.reader(f))
    assert {"pgd_low_r4_0.05", "pgd_high_r4_0.1", "leak_high_r4_0.1", "worst_case_0.05"} <= set(header)
    assert "PGD-HFC r=4 0.1" in (out / "robustness.md").read_text()
    assert "| APGD-CE 0.1 | APGD-DLR 0.1 |" in (out / "robustness.md").read_text()
    with pytest.raises(ValueError, match="config.band_radius must be a finite number >= 0"):
        evaluate.evaluate(run_dir, **{**FAST, "band_radius": -1.0})


def test_a_killed_evaluation_resumes_its_grid_and_gives_the_same_report(run_dir, tmp_path, root, subprocess_env):
    """kill -9 mid-grid, rerun: rows finished before the kill are read back, the rest computed,
    and the report equals an uninterrupted evaluation's (all but the seconds each row took)."""
    import os
    import signal
    import time

    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    shutil.rmtree(workdir / "eval", ignore_errors=True)
    args = [sys.executable, "-m", "hfcjax.evaluate", "--workdir", str(workdir), "--rho", "0,0.25,0.5,1",
            "--eps", "0.05,0.1", "--num_examples", "100", "--batch_size", "50", "--pgd_steps", "3", "--restarts", "1",
            "--square_queries", "0", "--recalibrate_bn", "no", "--heatmap_eps", "0", "--apgd_steps", "0"]
    partial = checkpoints.RunDir(workdir).eval / evaluate.reports.PartialResults.FOLDER
    proc = subprocess.Popen(args, cwd=root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while not (partial / "rho=0.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    first = proc.communicate()[0]
    kept = sorted(p.name for p in partial.glob("rho=*.json"))
    assert "compiling the attacks" in first and "ETA" in first and "for the whole grid" in first, first[-2000:]
    assert 1 <= len(kept) < 4 and not (partial.parent / "robustness.json").exists(), kept
    again = subprocess.run(args, cwd=root, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("read back from the interrupted run") == len(kept), again.stdout[-3000:]
    assert not partial.exists()  # removed once the report is written
    resumed = json.loads((partial.parent / "robustness.json").read_text())

    reference = tmp_path / "reference"
    shutil.copytree(run_dir, reference)
    shutil.rmtree(reference / "eval", ignore_errors=True)
    subprocess.run([*args[:4], str(reference), *args[5:]], cwd=root, env=subprocess_env, check=True,
                   capture_output=True, timeout=600)
    uninterrupted = json.loads((checkpoints.RunDir(reference).eval / "robustness.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed["rows"]) == strip(uninterrupted["rows"])
    assert resumed["frequency"] == uninterrupted["frequency"]


def test_partial_rows_of_other_settings_are_never_mixed_in(tmp_path):
    saved = evaluate.reports.PartialResults(tmp_path, {"eps": [0.1]})
    saved.put("rho=0", {"clean": 0.5})
    saved.put("heatmap rho=0", np.arange(6.0).reshape(2, 3))
    again = evaluate.reports.PartialResults(tmp_path, {"eps": [0.1]})
    assert not again.stale and again.get("rho=0") == {"clean": 0.5}
    np.testing.assert_array_equal(again.get("heatmap rho=0"), np.arange(6.0).reshape(2, 3))
    other = evaluate.reports.PartialResults(tmp_path, {"eps": [0.2]})
    assert other.stale and other.get("rho=0") is None and other.get("heatmap rho=0") is None
    other.finish()
    assert not (tmp_path / ".partial").exists()
