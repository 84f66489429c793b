"""hfcjax.evaluators on models hfcjax did not train: a linear classifier given as a plain
function (variables {}), checked against numpy; the smoothing grid on a Flax conv model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfcjax import evaluators, measure, smoothing


@pytest.fixture(scope="module")
def linear():
    """A 4-class linear model on 12x12x3 uint8 images, with labels it mostly gets right."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(12 * 12 * 3, 4)).astype(np.float32)
    images = rng.integers(0, 256, (30, 12, 12, 3), dtype=np.uint8)
    logits = (images.reshape(30, -1).astype(np.float64) / 255) @ weights
    labels = np.argmax(logits, -1).astype(np.int32)
    labels[:6] = (labels[:6] + 1) % 4  # some wrong on the clean images
    apply_fn = lambda variables, x: x.reshape(x.shape[0], -1) @ weights
    return apply_fn, weights, images, labels


def test_frequency_evaluator_matches_numpy(linear, reference_split):
    apply_fn, weights, images, labels = linear
    report = evaluators.FrequencyEvaluator(apply_fn, radii=(2.0, 4.0), ranks=(3, 20), batch_size=8).run(
        {}, images, labels)
    assert report.ranks == [3]  # rank 20 > 12 is left out
    x = images.astype(np.float64) / 255
    expected = {measure.ORIGINAL: x}
    for r in (2.0, 4.0):
        low, high, _ = reference_split(x, r)
        expected[measure.low(r)], expected[measure.high(r)] = low, high
    for variant, v in expected.items():
        want = np.argmax(v.reshape(30, -1) @ weights, -1) == labels
        np.testing.assert_array_equal(report.correct[variant], want, err_msg=variant.name)
    assert report.accuracy[measure.ORIGINAL] == pytest.approx(24 / 30)
    summary = report.summary()
    assert set(summary["accuracy"]) == {"original", "low_r2", "low_r4", "high_r2", "high_r4", "dominant_k3",
                                        "trailing_k3"}
    counts = report.figure2_counts()
    assert counts[2.0] == int(measure.story_mask(report.correct, measure.high(2.0), measure.low(2.0)).sum())
    assert "| LFC accuracy |" in report.markdown() and "| dominant accuracy |" in report.markdown()


def test_robustness_evaluator_on_a_plain_function(linear):
    apply_fn, weights, images, labels = linear
    lines = []
    evaluator = evaluators.RobustnessEvaluator(apply_fn, eps=[0.0, 0.05], pgd_steps=3, strong_restarts=2,
                                               square_queries=5, batch_size=16, log=lines.append)
    row = evaluator.run({}, images, labels, name="linear")
    assert row["clean"] == pytest.approx(24 / 30)
    assert row["fgsm"][0] == row["pgd"][0] == pytest.approx(row["clean"])  # eps = 0 changes nothing
    assert row["pgd"][1] < row["clean"] and row["fgsm"][1] < row["clean"]  # eps = 0.05 hurts a linear model
    assert row["worst_case"] <= min(row["fgsm"][1], row["pgd"][1], row["pgd_strong"], row["square"])
    assert lines[0].startswith("  compiling the attacks")
    assert any(line.startswith("  linear: batch 2 | row 30/30 images") and "ETA" in line for line in lines)


def test_grid_progress_eta_is_of_the_whole_grid_and_leaves_compilation_out(monkeypatch):
    clock = iter([0.0, 100.0, 101.0, 102.0])  # start; a first batch with 99 s of compilation; then 1 s a batch
    monkeypatch.setattr(evaluators.time, "time", lambda: next(clock))
    lines = []
    progress = evaluators.GridProgress(4, 10, lines.append)  # 4 rows of 10 images
    progress.skip(10)  # one row read back from an interrupted run
    progress.advance(10, "rho=0")
    progress.advance(10, "rho=1")
    assert "grid 10/30 images" in lines[0] and "compilation included" in lines[0]
    assert "grid 20/30 images | 10.0 img/s |" in lines[1] and lines[1].endswith("ETA 0m01s for the whole grid")


class TinyConv(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), name="stem")(x))
        return nn.Dense(3)(x.mean((1, 2)))


def test_smoothing_grid_rows_and_kernels():
    model = TinyConv()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 12).astype(np.int32)
    variables = model.init(jax.random.key(0), images[:1].astype(np.float32))
    evaluator = evaluators.RobustnessEvaluator(lambda v, x: model.apply(v, x), eps=[0.03], pgd_steps=2,
                                               strong_restarts=1, square_queries=0, batch_size=12, log=lambda m: None)
    calls = []
    rows, kernels = evaluators.smoothing_grid(evaluator, variables, images, labels, rhos=[0.0, 1.0],
                                              recalibrate=lambda v: calls.append(v) or v)
    assert [r["name"] for r in rows] == ["rho=0", "rho=1", "rho=0 (BN re-estimated)", "rho=1 (BN re-estimated)"]
    assert len(calls) == 2 and list(kernels) == ["rho=0", "rho=1"]
    stem = np.asarray(variables["params"]["stem"]["kernel"])
    np.testing.assert_allclose(kernels["rho=0"], stem)
    np.testing.assert_allclose(kernels["rho=1"], smoothing.smooth_kernel(stem, 1.0), rtol=1e-6)
    assert rows[0]["roughness"] == pytest.approx(float(smoothing.roughness(stem)))
    assert rows[0]["square"] is None and rows[1]["roughness"] < rows[0]["roughness"]
    with pytest.raises(ValueError, match="no convolution kernel matches"):
        evaluators.smoothing_grid(evaluator, variables, images, labels, rhos=[0.0], layers=["^nothing$"])


def test_model_checks_flag_randomness_softmax_outputs_and_zero_gradients(linear):
    apply_fn, weights, images, labels = linear
    assert evaluators.model_checks(apply_fn, {}, images, labels) == []
    softmax = lambda v, x: jax.nn.softmax(apply_fn(v, x))
    assert any("look like probabilities" in w for w in evaluators.model_checks(softmax, {}, images, labels))
    calls = []

    def noisy(v, x):
        calls.append(1)
        return apply_fn(v, x) + 0.1 * len(calls)

    assert any("randomness" in w for w in evaluators.model_checks(noisy, {}, images, labels))
    flat = lambda v, x: jnp.round(apply_fn(v, x))  # piecewise constant: zero gradient everywhere
    warnings = evaluators.model_checks(flat, {}, images, labels)
    assert any(w.startswith("30 of 30 images have an input gradient of exactly zero") for w in warnings)
