"""hfcjax.evaluate on a real (tiny) training run: files, structure, restore, settings from
the config, the command line (in-process), errors, resuming."""

import csv
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from hfcjax import checkpoints, config as config_lib, data, evaluate, evaluators, heatmap, smoothing, train
from hfcjax.evaluators import common, fused, variants

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_config):
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(tiny_config(num_epochs=1, batch_norm=True), str(workdir))
    return workdir


def test_table2_grid_and_reports_are_written(run_dir, tiny_eval):
    result = evaluate.evaluate(run_dir, **tiny_eval())
    out = checkpoints.RunDir(run_dir).eval
    rows = result["robustness"]
    assert [r.name for r in rows] == ["rho=0", "rho=1", "rho=0 (BN re-estimated)", "rho=1 (BN re-estimated)"]
    for row in rows:
        assert len(row.fgsm) == len(row.pgd) == 2
        assert 0 <= row.worst_case <= min(row.pgd[-1], row.pgd_strong, row.square, row.fgsm[-1])
        assert all(0 <= v <= 1 for v in [row.clean, *row.fgsm, *row.pgd])
    assert rows[1].roughness < rows[0].roughness
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["rows"] == json.loads(json.dumps([common.to_json(r) for r in rows]))
    with open(out / "robustness.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and "pgd_0.1" in table[0] and "worst_case" in table[0]
    md = (out / "robustness.md").read_text().splitlines()
    assert md[0].startswith("| model | clean | FGSM 0.05") and len(md) == 6
    for png in ("kernels.png", "robustness.png", "spectra.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    freq = json.loads((out / "frequency.json").read_text())
    assert set(freq["accuracy"]) >= {"original", "low_r4", "high_r16", "dominant_k8", "trailing_k16"}
    assert freq["accuracy"]["original"] == pytest.approx(rows[0].clean)
    assert set(freq["figure2_count"]) == {"r4", "r8", "r12", "r16"}
    assert "Figure-2 count" in (out / "frequency.md").read_text()
    about = json.loads((out / "evaluation.json").read_text())
    assert about["evaluators"] == ["checks", "robustness", "spectra", "frequency"] and about["checkpoint_epoch"] == 1
    assert about["config"]["evals"]["robustness"]["eps"] == [0.05, 0.1]
    report = (out / "report.md").read_text()
    assert report.index("## robustness") < report.index("## spectra") < report.index("## frequency")
    assert not (out / "band.json").exists() and not (out / "heatmap.npy").exists()


def test_clean_accuracy_matches_the_restored_model_directly(run_dir, tiny_eval):
    config, model, variables, _ = checkpoints.restore_model(run_dir)
    x, y = data.load("fashion_mnist", "test")
    logits = model.apply(variables, x[:40].astype(np.float32) / 255)
    direct = float((np.argmax(logits, -1) == y[:40]).mean())
    result = evaluate.evaluate(run_dir, **tiny_eval(evaluation={"rhos": (0.0,), "recalibrate_bn": "no"}))
    assert result["robustness"][0].clean == pytest.approx(direct)


def test_evaluation_needs_no_optimizer_state(run_dir, tmp_path, tiny_eval):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for epoch_dir in checkpoints.RunDir(copy).epoch_dirs():
        shutil.rmtree(epoch_dir / checkpoints.TRAIN)
    result = evaluate.evaluate(copy, **tiny_eval(evaluation={"rhos": (0.5,), "recalibrate_bn": "no"}))
    assert len(result["robustness"]) == 1


def test_rho_grid_compiles_once(run_dir, count_compiles):
    config, model, variables, _ = checkpoints.restore_model(run_dir)
    cfg = config_lib.evaluation_config(robustness=dict(eps=(0.03, 0.06), pgd_steps=2, strong_restarts=1,
                                                       square_queries=2))
    built = evaluators.build(cfg.evals, lambda v, z: model.apply(v, z), common.Shared(batch_size=8, log=lambda m: None))
    x, y = data.load("fashion_mnist", "test")
    inputs = common.Inputs(variables, variants.model_variants(variables, rhos=(0.0, 0.1, 1.0)), x[:8], y[:8],
                           (4.0,))
    with count_compiles() as compiles:
        rows = fused.run_fused([e for e in built if isinstance(e, common.BatchEvaluator)], inputs)
    assert compiles["sums"] == 1 and len(rows["robustness"]) == len(rows["spectra"]) == 3


def test_batch_norm_reestimation_is_the_mean_of_batch_statistics(run_dir):
    config, model, variables, _ = checkpoints.restore_model(run_dir)
    x, _ = data.load("fashion_mnist", "train")
    images = x[:400]
    recal = variants.recalibrate_batch_stats(model, variables, images, batch_size=200)
    kernel = variables["params"]["stem"]["kernel"]
    means, variances = [], []
    padding = "VALID" if config.model == "lenet" else "SAME"  # LeNet's convolutions are unpadded
    for half in (images[:200], images[200:]):
        conv = jax.lax.conv_general_dilated(half.astype(np.float32) / 255, kernel, (1, 1), padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        means.append(np.asarray(conv).mean((0, 1, 2)))
        variances.append(np.asarray(conv).var((0, 1, 2)))
    np.testing.assert_allclose(recal["batch_stats"]["stem_bn"]["mean"], np.mean(means, 0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(recal["batch_stats"]["stem_bn"]["var"], np.mean(variances, 0), rtol=1e-3, atol=1e-5)


def test_batch_norm_reestimation_compiles_once_across_rhos(run_dir, count_compiles):
    config, model, variables, _ = checkpoints.restore_model(run_dir)
    images = data.load("fashion_mnist", "train")[0][:200]
    stats_fn = variants.make_batch_stats_fn(model)
    with count_compiles() as compiles:
        for rho in (0.0, 0.5, 1.0):
            smoothed = {**variables, "params": smoothing.smooth_params(variables["params"], rho)}
            variants.recalibrate_batch_stats(model, smoothed, images, batch_size=100, stats_fn=stats_fn)
    assert compiles["batch_stats_of"] == 1


def test_library_errors(run_dir, tmp_path, tiny_eval):
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoints in .*train first"):
        evaluate.evaluate(tmp_path, **tiny_eval())
    with pytest.raises(ValueError, match=r"config.evals.robustness.eps: eps values must lie in \[0.0, 1.0\]"):
        evaluate.evaluate(run_dir, **tiny_eval(robustness={"eps": (0.1, 1.5)}))
    with pytest.raises(ValueError, match="no convolution kernel matches"):
        evaluate.evaluate(run_dir, **tiny_eval(evaluation={"layers": ("^nothing$",)}))
    with pytest.raises(ValueError, match="unknown evaluation section 'step'"):
        evaluate.evaluate(run_dir, step={"x": 1})
    with pytest.raises(ValueError, match="unknown key 'radius' of config.evals.robustness"):
        evaluate.evaluate(run_dir, robustness={"radius": 1.0})
    with pytest.raises(ValueError, match="config.evals.band.radius must be a finite number > 0"):
        evaluate.evaluate(run_dir, **tiny_eval(band={"enabled": True, "radius": -1.0}))
    with pytest.raises(ValueError, match="config.evals.spectra needs attacks"):
        evaluate.evaluate(run_dir, **tiny_eval(robustness={"enabled": False}))
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint of epoch 7 .* have \\[1\\]"):
        evaluate.evaluate(run_dir, epoch=7, **tiny_eval())


def test_command_line_takes_settings_from_config_overrides(run_dir, run_cli):
    code, out, err = run_cli(evaluate.main, "--workdir", run_dir, "--config.evals.robustness.eps=(0.05,)",
                             "--config.evaluation.rhos=(0.0,)", "--config.evaluation.num_examples=20",
                             "--config.evals.robustness.pgd_steps=2", "--config.evals.robustness.square_queries=0",
                             "--config.evals.frequency.enabled=False", "--config.evaluation.recalibrate_bn=no")
    assert code == 0, err
    saved = json.loads((checkpoints.RunDir(run_dir).eval / "robustness.json").read_text())
    assert saved["settings"]["eps"] == [0.05] and len(saved["rows"]) == 1 and len(saved["rows"][0]["pgd"]) == 1
    assert saved["num_examples"] == 20 and "ETA" in out


def test_the_frequency_evaluators_run_from_the_command_line_and_write_their_files(run_dir, run_cli, monkeypatch,
                                                                                   tmp_path):
    """Issue 24's contract: --config.evals.NAME.enabled=True runs NAME on a run's checkpoint and
    writes NAME.{json,csv,md} and NAME.png into the evaluation folder."""
    monkeypatch.setenv("HFCJAX_CACHE_DIR", str(tmp_path / "cache"))  # the corrupted images
    names = ("filtering", "phase", "gradients", "margins", "features", "corruptions")
    out = checkpoints.RunDir(run_dir).eval
    code, stdout, err = run_cli(
        evaluate.main, "--workdir", run_dir, "--config.evaluation.rhos=(0.0,1.0)",
        "--config.evaluation.num_examples=16", "--config.evaluation.batch_size=16",
        "--config.evaluation.recalibrate_bn=no", "--config.evals.robustness.enabled=False",
        "--config.evals.spectra.enabled=False", "--config.evals.frequency.enabled=False",
        "--config.evals.filtering.points=3", "--config.evals.filtering.ring_width=8.0",
        "--config.evals.margins.steps=2", "--config.evals.margins.block=14", "--config.evals.margins.stride=14",
        "--config.evals.corruptions.corruptions=('fog','jpeg_compression')", "--config.evals.corruptions.severities=(1,5)",
        *[f"--config.evals.{name}.enabled=True" for name in names])
    assert code == 0, err
    for name in names:
        rows = json.loads((out / f"{name}.json").read_text())["rows"]
        assert [r["name"] for r in rows] == ["rho=0", "rho=1"], name
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG" and (out / f"{name}.csv").is_file()
        assert f"## {name}" in (out / "report.md").read_text()
    assert "margins grid" in stdout and "corruptions grid" in stdout and "ETA" in stdout


def test_command_line_errors_are_one_line(run_dir, run_cli, tmp_path):
    config_file = tmp_path / "cfg.py"
    config_file.write_text("from hfcjax import config\n\ndef get_config():\n    c = config.default()\n"
                           "    c.evals.robustness.eps = (2.0,)\n    return c\n")
    for args, message in (
            (["--config.evals.robustness.eps=(0.1,2.0)"], "config.evals.robustness.eps: eps values must lie in"),
            (["--config", config_file], "config.evals.robustness.eps: eps values must lie in"),
            (["--eps=0.1"], "--eps is now a config key: use --config.evals.robustness.eps=VALUE"),
            (["--norecalibrate_bn"], "--recalibrate_bn is now a config key: use --config.evaluation.recalibrate_bn"),
            (["--config.evaluation.layers=('[',)"], "error: bad regex"),
            (["--config.evals.nothing.enabled=True"], "unknown config key"),
            (["--config.learning_rate=0.1"], "evaluation reads only config.evaluation.KEY and config.evals.NAME.KEY"),
            (["--out", tmp_path], "give either --workdir DIR")):
        code, _, err = run_cli(evaluate.main, "--workdir", run_dir, *args)
        assert code == 2 and err.startswith("error: ") and message in err, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    code, out, _ = run_cli(evaluate.main, "--help")
    assert code == 0 and out.startswith("usage: prog [flags]") and "--torch_weights" in out


def test_settings_saved_with_the_run_are_used(tmp_path, tiny_config, run_cli):
    config = tiny_config(num_epochs=1, train_subset=200, test_subset=40, eval_train_subset=40)
    config.evals.robustness.eps = (0.07,)
    config.evals.robustness.pgd_steps, config.evals.robustness.square_queries = 1, 0
    config.evaluation.rhos, config.evaluation.num_examples = (0.0,), 20
    config.evals.spectra.enabled = config.evals.frequency.enabled = False
    train.train_and_evaluate(config, str(tmp_path))
    code, out, err = run_cli(evaluate.main, "--workdir", tmp_path)
    assert code == 0, err
    saved = json.loads((checkpoints.RunDir(tmp_path).eval / "robustness.json").read_text())
    assert saved["settings"]["eps"] == [0.07] and saved["num_examples"] == 20
    assert not (checkpoints.RunDir(tmp_path).eval / "frequency.json").exists()


def test_heat_maps_band_limited_pgd_and_spectra_are_written(run_dir, tiny_eval):
    result = evaluate.evaluate(run_dir, **tiny_eval(
        evaluation={"recalibrate_bn": "no", "num_examples": 20}, robustness={"apgd_steps": 3},
        heatmap={"enabled": True, "eps": 1.0}, band={"enabled": True, "radius": 4.0, "eps": (0.05, 0.1),
                                                        "pgd_steps": 3}))
    out = checkpoints.RunDir(run_dir).eval
    assert result["checks"] == []
    maps = [np.load(out / "heatmap.npy"), np.load(out / "heatmap_rho1.npy")]
    assert all(m.shape == (28, 28) and 0 <= m.min() <= m.max() <= 1 for m in maps)
    inside, outside = result["heatmap"].band_error["rho=0"]["r4"].values()
    assert inside == pytest.approx(heatmap.band_means(maps[0], 4.0)[0])
    assert json.loads((out / "heatmap.json").read_text())["band_error"]["rho=0"]["r4"]["inside"] == inside
    for name in ("heatmap.png", "spectra.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    row, band = result["robustness"][0], result["band"][0]
    assert len(band.pgd_low) == len(band.pgd_high) == len(band.leak_high) == 2
    assert all(0 <= v <= 1 for v in band.leak_low + band.leak_high)
    assert row.worst_case_per_eps[-1] == row.worst_case
    assert row.worst_case_per_eps[0] <= min(row.fgsm[0], row.pgd[0])
    assert set(result["spectra"][0].spectra) == {"fgsm", "pgd", "pgd_low", "pgd_high", "pgd_strong", "square",
                                                 "apgd_ce", "apgd_dlr"}
    assert row.worst_case <= min(row.apgd_ce, row.apgd_dlr, row.pgd_strong, row.square)
    with open(out / "band.csv") as f:
        header = next(csv.reader(f))
    assert {"pgd_low_r4_0.05", "pgd_high_r4_0.1", "leak_high_r4_0.1"} <= set(header)
    assert "PGD-HFC r=4 0.1" in (out / "band.md").read_text()
    assert "| APGD-CE 0.1 | APGD-DLR 0.1 |" in (out / "robustness.md").read_text()


def test_a_killed_evaluation_resumes_its_grid_and_gives_the_same_report(run_dir, tmp_path, root, subprocess_env,
                                                                         run_cli):
    """kill -9 mid-grid, rerun: rows finished before the kill are read back, the rest computed,
    and the report equals an uninterrupted evaluation's (all but the seconds each row took)."""
    import os
    import signal
    import time

    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    shutil.rmtree(workdir / "eval", ignore_errors=True)
    args = [sys.executable, "-m", "hfcjax.evaluate", "--workdir", str(workdir),
            "--config.evaluation.rhos=(0,0.5,1)", "--config.evals.robustness.eps=(0.05,0.1)",
            "--config.evaluation.num_examples=40", "--config.evaluation.batch_size=20",
            "--config.evals.robustness.pgd_steps=3", "--config.evals.robustness.strong_restarts=1",
            "--config.evals.robustness.square_queries=0", "--config.evaluation.recalibrate_bn=no"]
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
    assert 1 <= len(kept) < 3 and not (partial.parent / "robustness.json").exists(), kept
    again = subprocess.run(args, cwd=root, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("read back from the interrupted run") == len(kept), again.stdout[-3000:]
    assert not partial.exists()  # removed once the report is written
    resumed = json.loads((partial.parent / "robustness.json").read_text())

    reference = tmp_path / "reference"
    shutil.copytree(run_dir, reference)
    shutil.rmtree(reference / "eval", ignore_errors=True)
    code, _, err = run_cli(evaluate.main, "--workdir", reference, *args[5:])  # in-process: nothing to kill here
    assert code == 0, err[-2000:]
    reference_eval = checkpoints.RunDir(reference).eval
    uninterrupted = json.loads((reference_eval / "robustness.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed["rows"]) == strip(uninterrupted["rows"])
    for name in ("frequency.json", "spectra.json"):
        assert (partial.parent / name).read_text() == (reference_eval / name).read_text()


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


@pytest.mark.parametrize("damage", ["{\"key\": \"ab", "", "[1, 2]"])
def test_a_damaged_partial_fingerprint_is_set_aside_named_and_the_rows_recomputed(tmp_path, damage):
    saved = evaluate.reports.PartialResults(tmp_path, {"eps": [0.1]})
    saved.put("rho=0", {"clean": 0.5})
    (saved.folder / "fingerprint.json").write_text(damage)  # a killed write, a full disk
    lines = []
    again = evaluate.reports.PartialResults(tmp_path, {"eps": [0.1]}, lines.append)
    assert not again.stale and again.get("rho=0") is None  # nothing read back from a folder it cannot trust
    (aside,) = tmp_path.glob("corrupt_partial-*")
    assert (aside / "rho=0.json").exists() and "is damaged" in lines[0] and str(aside) in lines[0]
    again.put("rho=0", {"clean": 0.25})
    assert evaluate.reports.PartialResults(tmp_path, {"eps": [0.1]}).get("rho=0") == {"clean": 0.25}


def test_a_damaged_partial_row_is_recomputed(tmp_path):
    saved = evaluate.reports.PartialResults(tmp_path, {"eps": [0.1]})
    saved.put("rho=0", {"clean": 0.5})
    saved._path("rho=0", ".json").write_text("{\"clean\": 0.")
    lines = []
    assert evaluate.reports.PartialResults(tmp_path, {"eps": [0.1]}, lines.append).get("rho=0") is None
    assert "is damaged" in lines[0]
