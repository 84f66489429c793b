"""hfcjax.evaluators on models hfcjax did not train: a linear classifier given as a plain
function (variables {}), checked against numpy; the rho grid on a Flax conv model; the
registry (a new analysis is one module)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hfcjax import config as config_lib, evaluators, external, measure, smoothing, writers
from hfcjax.evaluators import checks, common, frequency, fused, variants

FAST_COMPILE = True  # compilation is most of this module's time (conftest._fast_compile)

QUIET = common.Shared(batch_size=16, log=lambda m: None)


def section(name, **values):
    c = evaluators.section_defaults(name)
    c.update(values)
    return c


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


def inputs_of(images, labels, variables=None, radii=(2.0, 4.0), rhos=(0.0,)):
    variables = {} if variables is None else variables
    return common.Inputs(variables, variants.model_variants(variables, rhos=rhos), images, labels, radii)


def test_frequency_evaluator_matches_numpy(linear, reference_split):
    apply_fn, weights, images, labels = linear
    evaluator = frequency.Evaluator(apply_fn, section("frequency", svd_ranks=(3, 20)),
                                    common.Shared(batch_size=8))
    report = evaluator.run(inputs_of(images, labels))
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
    cfg = section("robustness", eps=(0.0, 0.05), pgd_steps=3, strong_restarts=2, square_queries=5)
    (row,) = evaluators.module("robustness").Evaluator(apply_fn, cfg, common.Shared(batch_size=16, log=lines.append)
                                                       ).run(inputs_of(images, labels))
    assert row.name == "rho=0" and row.roughness is None  # a plain function has nothing to smooth
    assert row.clean == pytest.approx(24 / 30)
    assert row.fgsm[0] == row.pgd[0] == pytest.approx(row.clean)  # eps = 0 changes nothing
    assert row.pgd[1] < row.clean and row.fgsm[1] < row.clean  # eps = 0.05 hurts a linear model
    assert row.worst_case <= min(row.fgsm[1], row.pgd[1], row.pgd_strong, row.square)
    assert row.apgd_ce is None and row.apgd_dlr is None
    assert lines[0].startswith("  compiling the attacks")
    assert any(line.startswith("  rho=0: batch 2 | grid 30/30 images") and "ETA" in line for line in lines)


def test_fused_evaluators_equal_each_alone(linear):
    """Robustness and band run fused in one pass give the rows each gives alone."""
    apply_fn, weights, images, labels = linear
    rob = evaluators.module("robustness").Evaluator(apply_fn, section("robustness", eps=(0.05,), pgd_steps=2,
                                                                      square_queries=0), QUIET)
    band = evaluators.module("band").Evaluator(apply_fn, section("band", enabled=True, radius=3.0, eps=(0.05,),
                                                                 pgd_steps=2), QUIET)
    inputs = inputs_of(images, labels)
    together = fused.run_fused([band, rob], inputs)
    strip = lambda row: {k: v for k, v in common.to_json(row).items() if k != "seconds"}
    assert strip(together["robustness"][0]) == strip(rob.run(inputs)[0])
    assert together["band"] == band.run(inputs)
    assert 0 <= together["band"][0].leak_low[0] <= 1


def test_grid_progress_eta_is_of_the_whole_grid_and_leaves_compilation_out(monkeypatch):
    clock = iter([0.0, 100.0, 101.0, 102.0])  # start; a first batch with 99 s of compilation; then 1 s a batch
    monkeypatch.setattr(writers.time, "time", lambda: next(clock))  # the same module object as common.time
    lines = []
    progress = common.GridProgress(4, 10, lines.append)  # 4 rows of 10 images
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


def test_model_variants_and_their_rows():
    model = TinyConv()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 12).astype(np.int32)
    variables = model.init(jax.random.key(0), images[:1].astype(np.float32))
    calls = []
    grid = variants.model_variants(variables, rhos=[0.0, 1.0], recalibrate=lambda v: calls.append(v) or v)
    assert [v.name for v in grid] == ["rho=0", "rho=1", "rho=0 (BN re-estimated)", "rho=1 (BN re-estimated)"]
    assert len(calls) == 2
    stem = np.asarray(variables["params"]["stem"]["kernel"])
    np.testing.assert_allclose(grid[0].kernel, stem)
    np.testing.assert_allclose(grid[1].kernel, smoothing.smooth_kernel(stem, 1.0), rtol=1e-6)
    assert grid[0].roughness == pytest.approx(float(smoothing.roughness(stem)))
    cfg = section("robustness", eps=(0.03,), pgd_steps=2, strong_restarts=1, square_queries=0)
    rows = evaluators.module("robustness").Evaluator(lambda v, x: model.apply(v, x), cfg, QUIET).run(
        common.Inputs(variables, grid, images, labels, (2.0,)))
    assert rows[0].square is None and rows[1].roughness < rows[0].roughness
    with pytest.raises(ValueError, match="no convolution kernel matches"):
        variants.model_variants(variables, rhos=[0.0, 0.5], layers=["^nothing$"])


def test_model_checks_flag_randomness_softmax_outputs_and_zero_gradients(linear):
    apply_fn, weights, images, labels = linear
    assert checks.model_checks(apply_fn, {}, images, labels) == []
    softmax = lambda v, x: jax.nn.softmax(apply_fn(v, x))
    assert any("look like probabilities" in w for w in checks.model_checks(softmax, {}, images, labels))
    calls = []

    def noisy(v, x):
        calls.append(1)
        return apply_fn(v, x) + 0.1 * len(calls)

    assert any("randomness" in w for w in checks.model_checks(noisy, {}, images, labels))
    flat = lambda v, x: jnp.round(apply_fn(v, x))  # piecewise constant: zero gradient everywhere
    warnings = checks.model_checks(flat, {}, images, labels)
    assert any(w.startswith("30 of 30 images have an input gradient of exactly zero") for w in warnings)


def test_every_evaluator_has_a_section_with_enabled_and_the_config_holds_them():
    names = evaluators.names()
    assert set(names) == {"accuracy", "autoattack", "checks", "robustness", "band", "spectra", "heatmap",
                          "frequency", "filtering", "phase", "gradients", "margins", "features", "corruptions"}
    config = config_lib.default()
    assert list(config.evals.keys()) == sorted(names) or set(config.evals.keys()) == set(names)
    for name in names:
        assert "enabled" in config.evals[name] and "every_epochs" in config.evals[name]
    assert config.evals.accuracy.every_epochs == 1 and config.evals.robustness.every_epochs == 0
    config.evals.heatmap.eps = -1.0
    with pytest.raises(ValueError, match="config.evals.heatmap.eps must be a finite number > 0"):
        config_lib.validate(config)


def test_a_new_analysis_is_one_module(tmp_path, monkeypatch, linear):
    """A module with get_config / validate / Evaluator in the package is found by name, gets
    its config section and runs: nothing else changes."""
    (tmp_path / "mean_logit.py").write_text('''
import dataclasses
import ml_collections
import numpy as np
from hfcjax.evaluators import common

def get_config():
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.scale = 1.0
    return c

def validate(c):
    common.check_number(c, "scale", 0.0, strict=True)

class Evaluator(common.Evaluator):
    name = "mean_logit"
    stage = 3

    def run(self, inputs):
        return self.cfg.scale * float(np.mean(self.apply_fn(inputs.variables, inputs.images / 255.0)))

    def markdown(self, result):
        return f"mean logit {result:.3f}"

    def write(self, result, out_dir, inputs):
        pass
''')
    monkeypatch.setattr(evaluators, "__path__", [*evaluators.__path__, str(tmp_path)])
    evaluators.names.cache_clear()
    try:
        evals = evaluators.default_config()
        assert "mean_logit" in evals and evals.mean_logit.enabled is False
        evals.mean_logit.enabled, evals.mean_logit.scale = True, 2.0
        evals.robustness.enabled = evals.spectra.enabled = False  # only what this test is about
        apply_fn, weights, images, labels = linear
        built = evaluators.build(evals, apply_fn, QUIET)
        results = evaluators.run_all(built, inputs_of(images, labels))
        expected = 2.0 * float(np.mean((images.reshape(30, -1) / 255.0) @ weights))
        assert list(results) == ["checks", "frequency", "mean_logit"]  # stage 3, after frequency by name
        assert results["mean_logit"] == pytest.approx(expected, rel=1e-5)
        evals.mean_logit.scale = 0.0
        with pytest.raises(ValueError, match="config.evals.mean_logit.scale must be a finite number > 0"):
            evaluators.validate(evals)
    finally:
        evaluators.names.cache_clear()
        import sys
        sys.modules.pop("hfcjax.evaluators.mean_logit", None)
    assert isinstance(evals, ml_collections.ConfigDict)


def test_accuracy_evaluator_matches_numpy_and_names_the_training_metrics(linear, reference_split):
    apply_fn, weights, images, labels = linear
    evaluator = evaluators.module("accuracy").Evaluator(apply_fn, section("accuracy", radii=(3.0,)), QUIET)
    (row,) = evaluator.run(inputs_of(images, labels))
    x = images.astype(np.float64) / 255
    low, high, _ = reference_split(x, 3.0)
    acc = lambda v: float(np.mean(np.argmax(v.reshape(30, -1) @ weights, -1) == labels))
    assert row.radii == [3.0]
    assert row.clean == pytest.approx(acc(x)) and row.low == pytest.approx([acc(low)])
    assert row.high == pytest.approx([acc(high)])
    assert evaluator.scalars(row, "test") == {"test_acc": row.clean, "test_low_r3": row.low[0],
                                              "test_high_r3": row.high[0]}
    assert "| LFC r=3 | HFC r=3 |" in evaluator.markdown([row])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_autoattack_cascade_gives_the_closed_form_robust_accuracy_of_a_linear_model(norm, tmp_path):
    """On a linear model the smallest perturbation that breaks each image is known: AutoAttack
    at eps must leave exactly the images whose minimum exceeds eps."""
    from test_attacks import linear_problem

    fn, x, y, linf, l2 = linear_problem(seed=3, n=48)
    minimal = linf if norm == "linf" else l2
    eps = float(np.median(minimal))
    attacks_ = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version, in either norm
    cfg = section("autoattack", enabled=True, norm=norm, eps=eps, apgd_steps=10, fab_steps=10, targets=3,
                  square_queries=20)
    evaluators.validate(ml_collections.ConfigDict({"autoattack": cfg}))
    lines = []
    evaluator = evaluators.module("autoattack").Evaluator(lambda v, z: fn(z), cfg,
                                                          common.Shared(batch_size=16, log=lines.append))
    inputs = common.Inputs({}, variants.model_variants({}, rhos=(0.0,)), np.asarray(x), np.asarray(y), (1.0,))
    (row,) = evaluator.run(inputs)
    # Never below the closed form (nothing breaks an image beyond its minimum); a sound attack
    # breaks every image whose minimum is below 0.97 eps.
    assert row.clean == 1.0 and np.mean(minimal > eps * 1.001) <= row.robust <= np.mean(minimal > 0.97 * eps)
    assert [s["attack"] for s in row.per_attack] == list(attacks_)
    after = [s["robust_accuracy"] for s in row.per_attack]
    assert after == sorted(after, reverse=True) and after[-1] == row.robust
    assert any("ETA" in line and "AutoAttack cascade" in line for line in lines)
    evaluator.write([row], tmp_path, inputs)
    saved = json.loads((tmp_path / "autoattack.json").read_text())
    assert saved["robust_accuracy"] == row.robust and saved["per_attack"][0]["attack"] == "apgd-ce"
    assert "| after apgd-t |" in (tmp_path / "autoattack.md").read_text()


def test_autoattack_rand_version_averages_a_randomized_models_gradients():
    """AutoAttack's rand version (APGD-CE, APGD-DLR, 20 passes per gradient) on a model made
    `external.Randomized`: robust accuracy down to the closed form, where one pass per
    gradient leaves most images standing; every other analysis sees one fixed draw (the
    model checks find no randomness); on a deterministic model it warns."""
    from test_attacks import randomized_linear_problem

    randomized, x, y, linf = randomized_linear_problem()
    apply_fn, variables = external.apply_fn_of(external.Randomized(randomized))
    eps = float(np.quantile(linf, 0.75))
    inputs = common.Inputs(variables, variants.model_variants(variables, rhos=(0.0,)), np.asarray(x), np.asarray(y),
                           (1.0,))
    rows, lines = {}, []
    for draws in (1, 20):
        cfg = section("autoattack", enabled=True, eps=eps, version="rand", apgd_steps=50, eot_draws=draws)
        evaluators.validate(ml_collections.ConfigDict({"autoattack": cfg}))
        (rows[draws],) = evaluators.module("autoattack").Evaluator(
            apply_fn, cfg, common.Shared(batch_size=64, log=lines.append)).run(inputs)
    assert [s["attack"] for s in rows[20].per_attack] == ["apgd-ce", "apgd-dlr"]
    assert rows[20].clean == 1.0 and np.mean(linf > eps * 1.001) <= rows[20].robust <= np.mean(linf >= 0.95 * eps)
    assert rows[1].robust > rows[20].robust + 0.3
    assert not [line for line in lines if "warning" in line]
    assert checks.model_checks(apply_fn, variables, np.asarray(x), np.asarray(y)) == []
    deterministic = lambda v, z: randomized(z, jax.random.key(0))
    cfg = section("autoattack", enabled=True, eps=eps, version="rand", apgd_steps=2)
    evaluators.module("autoattack").Evaluator(deterministic, cfg, common.Shared(batch_size=64, log=lines.append)
                                              ).run(inputs)
    assert any("version 'rand' on a deterministic model" in line for line in lines)


@pytest.mark.parametrize("change, message", [
    ({"version": "plus"}, "version 'plus' is unknown"),
    ({"eot_draws": 0}, "eot_draws"),
    ({"version": "custom"}, "version 'custom' needs at least one attack"),
    ({"attacks": ("apgd-ce",)}, "the standard version fixes its attacks"),
    ({"version": "custom", "attacks": ("pgd",)}, r"\['pgd'\] unknown; AutoAttack's names are"),
    ({"norm": "l1"}, "norm 'l1' is unknown"),
    ({"eps": 0.0}, "eps must be a finite number > 0"),
])
def test_autoattack_settings_that_cannot_work_are_one_line(change, message):
    config = config_lib.default()
    config.evals.autoattack.update(change)
    with pytest.raises(ValueError, match=rf"^config.evals.autoattack\..*{message}"):
        config_lib.validate(config)


def test_filtering_curves_and_rings_match_numpy_on_a_linear_model(linear, reference_split, tmp_path):
    apply_fn, weights, images, labels = linear
    cfg = section("filtering", enabled=True, radii=(0.0, 2.0, 5.0), ring_width=3.0)
    evaluator = evaluators.module("filtering").Evaluator(apply_fn, cfg, QUIET)
    inputs = inputs_of(images, labels)
    (row,) = evaluator.run(inputs)
    x = images.astype(np.float64) / 255
    acc = lambda v: float(np.mean(np.argmax(v.reshape(30, -1) @ weights, -1) == labels))
    lows = {r: reference_split(x, r)[0] for r in (0.0, 2.0, 3.0, 5.0, 6.0, 8.0, 9.0)}
    assert row.radii == [0.0, 2.0, 5.0] and row.ring_starts == [0.0, 3.0, 6.0]  # 12x12: largest radius 8.49
    assert row.low == pytest.approx([acc(lows[r]) for r in row.radii])
    assert row.high == pytest.approx([acc(x - lows[r]) for r in row.radii])
    rings = [lows[s + 3.0] - lows[s] for s in row.ring_starts]
    assert row.ring_only == pytest.approx([acc(ring) for ring in rings])
    assert row.ring_removed == pytest.approx([acc(x - ring) for ring in rings])
    assert row.critical_band == row.ring_starts[int(np.argmax(row.clean - np.asarray(row.ring_removed)))]
    evaluator.write([row], tmp_path, inputs)
    assert (tmp_path / "filtering.png").stat().st_size > 10_000 and "critical band" in evaluator.markdown([row])
    with pytest.raises(ValueError, match=r"9 lies beyond the largest radius of 12x12 images \(8.49\)"):
        evaluators.module("filtering").Evaluator(apply_fn, section("filtering", radii=(9.0,)), QUIET).run(inputs)


def test_phase_recombination_rates_match_numpy_on_a_linear_model(linear, tmp_path):
    apply_fn, weights, images, _ = linear
    labels = np.random.default_rng(7).integers(0, 4, 30).astype(np.int32)  # many pairs of different labels
    phase = evaluators.module("phase")
    evaluator = phase.Evaluator(apply_fn, section("phase", enabled=True, seed=3), QUIET)
    inputs = inputs_of(images, labels)
    (row,) = evaluator.run(inputs)
    x = images.astype(np.float64) / 255
    spectrum = np.fft.fft2(x, axes=(1, 2))
    amplitude, angle = np.abs(spectrum), np.angle(spectrum)
    build = lambda a, p: np.clip(np.real(np.fft.ifft2(a * np.exp(1j * p), axes=(-3, -2))), 0, 1)
    predict = lambda v: np.argmax(v.reshape(len(v), -1) @ weights, -1)
    partner = np.arange(30) ^ 1  # batches of 16: the pairs never straddle a batch
    swapped = predict(build(amplitude[partner], angle))
    pair = labels[partner] != labels
    noise_phase = np.angle(np.fft.fft2(np.random.default_rng(3).uniform(size=(12, 12, 3)), axes=(0, 1)))
    assert row.pairs == int(pair.sum()) > 10
    assert row.follows_phase == pytest.approx(np.mean(swapped[pair] == labels[pair]))
    assert row.follows_amplitude == pytest.approx(np.mean(swapped[pair] == labels[partner][pair]))
    assert row.phase_only == pytest.approx(np.mean(predict(build(amplitude.mean(0), angle)) == labels))
    assert row.amplitude_only == pytest.approx(np.mean(predict(build(amplitude, noise_phase)) == labels))
    assert row.clean == pytest.approx(np.mean(predict(x) == labels))
    assert list(phase.partners(5)) == [1, 0, 3, 2, -1]  # an odd batch's last image has no partner
    assert evaluator.scalars(row, "test")["test_phase_follows_phase"] == row.follows_phase
    evaluator.write([row], tmp_path, inputs)
    assert (tmp_path / "phase.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "phase.json").read_text())["rows"][0]["pairs"] == row.pairs


def _ring_means(power):
    """Mean of `power` [N, H, W] per rounded distance to the centre of the shifted spectrum (a loop)."""
    h, w = power.shape[1:]
    ring = np.rint(np.hypot(np.arange(h)[:, None] - h // 2, np.arange(w)[None, :] - w // 2)).astype(int)
    shifted = np.fft.fftshift(power, axes=(1, 2))
    return np.stack([[p[ring == r].mean() for r in range(ring.max() + 1)] for p in shifted])


def test_gradient_spectra_match_the_closed_form_gradient_of_a_linear_model(linear, reference_split, tmp_path):
    _, weights, images, labels = linear
    weights = weights * 0.05  # doubtful everywhere: a float32 gradient of a near-certain softmax is rounding noise
    apply_fn = lambda variables, x: x.reshape(x.shape[0], -1) @ weights
    evaluator = evaluators.module("gradients").Evaluator(apply_fn, section("gradients", enabled=True, eps=0.3), QUIET)
    inputs = inputs_of(images, labels)
    (row,) = evaluator.run(inputs)
    x = images.astype(np.float64) / 255
    logits = x.reshape(30, -1) @ weights
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    gradient = ((p - np.eye(4)[labels]) @ weights.T).reshape(x.shape)  # d CE / d x of a linear model
    unit = gradient / np.sqrt((gradient ** 2).sum(axis=(1, 2, 3), keepdims=True))
    spectrum = lambda v: _ring_means((np.abs(np.fft.fft2(v, axes=(1, 2))) ** 2).mean(-1))
    beyond = lambda v: [np.mean([(reference_split(u[None], r)[1] ** 2).sum() for u in v]) for r in (2.0, 4.0)]
    assert row.images == 30 and row.radii == [2.0, 4.0]
    np.testing.assert_allclose(row.gradient_spectrum, spectrum(unit).mean(0), rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(row.gradient_high, beyond(unit), rtol=1e-4)
    predict = lambda v: np.argmax(v.reshape(30, -1) @ weights, -1)
    success = (predict(x) == labels) & (predict(np.clip(x + 0.3 * np.sign(gradient), 0, 1)) != labels)
    assert row.fgsm_successes == int(success.sum()) > 0
    assert row.fgsm == pytest.approx(np.mean((predict(x) == labels) & ~success))
    signs = np.sign(gradient[success]) / np.sqrt(gradient[0].size)
    np.testing.assert_allclose(row.sign_spectrum, spectrum(signs).mean(0), rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(row.sign_high, beyond(signs), rtol=1e-4)
    evaluator.write([row], tmp_path, inputs)
    assert (tmp_path / "gradients.png").stat().st_size > 10_000
    assert "sign-pattern energy beyond r=4" in (tmp_path / "gradients.md").read_text()


def test_gradient_report_of_a_model_with_no_gradient_has_empty_cells(linear, tmp_path):
    """A constant classifier (what a network whose ReLUs all died computes): no image has a
    gradient, so no spectrum; the report says so with empty cells instead of failing."""
    _, _, images, labels = linear
    apply_fn = lambda variables, x: jnp.zeros((x.shape[0], 4)) + jnp.arange(4.0)
    evaluator = evaluators.module("gradients").Evaluator(apply_fn, section("gradients", enabled=True), QUIET)
    inputs = inputs_of(images, labels)
    (row,) = evaluator.run(inputs)
    assert row.images == 0 and row.gradient_spectrum is None and row.gradient_high is None
    evaluator.write([row], tmp_path, inputs)
    assert "| 0 |" in (tmp_path / "gradients.md").read_text() and (tmp_path / "gradients.png").exists()


def test_subspace_margins_equal_the_closed_form_of_a_linear_model(linear, tmp_path):
    import scipy.fft

    apply_fn, weights, images, labels = linear
    cfg = section("margins", enabled=True, block=4, stride=4, overshoot=0.0)
    evaluator = evaluators.module("margins").Evaluator(apply_fn, cfg, QUIET)
    inputs = inputs_of(images, labels)
    (row,) = evaluator.run(inputs)
    x = images.astype(np.float64).reshape(30, -1) / 255
    right = np.argmax(x @ weights, -1) == labels
    w = weights.T.reshape(4, 12, 12, 3).astype(np.float64)

    def closed_form(keep):  # min over k != y of (f_y - f_k) / ||P (w_k - w_y)||
        projected = scipy.fft.idctn(scipy.fft.dctn(w, axes=(1, 2), norm="ortho") * keep, axes=(1, 2), norm="ortho")
        out = []
        for image, y in zip(x[right], labels[right]):
            f = image @ weights
            out.append(min((f[y] - f[k]) / np.linalg.norm(projected[k] - projected[y]) for k in range(4) if k != y))
        return np.asarray(out)

    assert row.band_starts == [0, 4, 8] and row.images == int(right.sum()) == 24
    margins = np.asarray(row.per_image, np.float64)  # [24, 3 bands + the whole space]
    for j, s in enumerate(row.band_starts):
        keep = np.zeros((1, 12, 12, 1))
        keep[:, s:s + 4, s:s + 4] = 1
        np.testing.assert_allclose(margins[:, j], closed_form(keep), rtol=1e-3)
        assert row.median[j] == pytest.approx(np.median(closed_form(keep)), rel=1e-3)
    np.testing.assert_allclose(margins[:, -1], closed_form(np.ones((1, 12, 12, 1))), rtol=1e-3)
    assert row.found == [1.0, 1.0, 1.0] and row.full_median < min(row.median)  # a subspace is never closer
    evaluator.write([row], tmp_path, inputs)
    assert (tmp_path / "margins.png").stat().st_size > 10_000
    none = [None] * len(row.band_starts)  # a model that gets no image right: a figure that says so, no error
    empty = dict(common.to_json(row), images=0, per_image=[], median=none, q25=none, q75=none, full_median=None)
    evaluators.module("margins").figure([empty], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 5_000
    assert "DCT 4-7" in (tmp_path / "margins.md").read_text()
    with pytest.raises(ValueError, match="a DCT block of 13x13 does not fit 12x12 images"):
        evaluators.module("margins").Evaluator(apply_fn, section("margins", block=13), QUIET).run(inputs)


class TwoStage(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), name="stem")(x))
        x = nn.Conv(6, (3, 3), strides=2, name="down")(x)  # 12x12 -> 6x6
        x = nn.Conv(5, (3, 3), strides=3, name="tiny")(x)  # 2x2: below min_size, left out
        return nn.Dense(4)(x.mean((1, 2)))


def test_feature_map_spectra_match_numpy_on_flaxs_own_intermediates(linear, tmp_path):
    _, _, images, labels = linear
    model = TwoStage()
    variables = model.init(jax.random.key(0), images[:1].astype(np.float32))
    apply_fn = lambda v, x: model.apply(v, x)
    evaluator = evaluators.module("features").Evaluator(apply_fn, section("features", enabled=True), QUIET)
    inputs = inputs_of(images, labels, variables=variables)
    (row,) = evaluator.run(inputs)
    (rings,) = evaluators.module("features").Evaluator(apply_fn, section("features", enabled=True, profile="rings"),
                                                       QUIET).run(inputs)
    _, state = model.apply(variables, images.astype(np.float32) / 255, capture_intermediates=True)
    assert row.layers == rings.layers == ["stem", "down"] and row.shapes == [[12, 12, 4], [6, 6, 6]]
    assert (row.profile, rings.profile) == ("diagonal", "rings")
    for i, layer in enumerate(row.layers):
        maps = np.asarray(state["intermediates"][layer]["__call__"][0], np.float64)
        log_amplitude = np.log(np.abs(np.fft.fft2(maps, axes=(1, 2))) + 1e-8).mean(-1)  # [N, H, W]
        half = maps.shape[1] // 2
        diagonal = log_amplitude[:, np.arange(half + 1), np.arange(half + 1)]  # Park & Kim: F(k, k), 0 .. pi
        np.testing.assert_allclose(row.profiles[i], (diagonal - diagonal[:, :1]).mean(0), rtol=1e-3, atol=1e-3)
        ring = _ring_means(log_amplitude)
        expected = (ring - ring[:, :1]).mean(0)
        np.testing.assert_allclose(rings.profiles[i], expected, rtol=1e-3, atol=1e-3)
        assert row.high[i] == pytest.approx(row.profiles[i][half]) and rings.high[i] == pytest.approx(expected[half],
                                                                                                      abs=1e-3)
    evaluator.write([row], tmp_path, inputs)
    assert (tmp_path / "features.png").stat().st_size > 10_000
    larger = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)  # traced again, not kept
    assert evaluator.run(inputs_of(larger, labels[:8], variables=variables))[0].shapes == [[16, 16, 4], [8, 8, 6]]
    only = section("features", enabled=True, modules="^down$")
    assert evaluators.module("features").Evaluator(apply_fn, only, QUIET).run(inputs)[0].layers == ["down"]
    with pytest.raises(ValueError, match="found no feature maps: the model is a plain function"):
        evaluators.module("features").Evaluator(linear[0], section("features", enabled=True), QUIET).run(
            inputs_of(images, labels))
    with pytest.raises(ValueError, match="profile must be one of"):
        evaluators.validate(ml_collections.ConfigDict({"features": section("features", profile="ring")}))


@settings(max_examples=15, deadline=None)
@given(height=st.integers(2, 13), width=st.integers(2, 13), seed=st.integers(0, 2**16))
def test_diagonal_profile_equals_numpys_transform_at_the_diagonal_frequencies(height, width, seed):
    """The diagonal profile (the skewed anti-diagonal sums on square maps, the direct product on
    others) is numpy's full 2-D FFT read at the diagonal frequencies, which run from (0, 0) to
    (H // 2, W // 2) in min(H, W) // 2 + 1 integer steps."""
    from hfcjax.evaluators import features

    maps = np.random.default_rng(seed).normal(0.3, 1.0, (2, height, width, 3))
    u, v = features.diagonal_frequencies(height, width)
    assert len(u) == min(height, width) // 2 + 1 and (u[-1], v[-1]) == (height // 2, width // 2)
    assert np.all(np.diff(u) >= 0) and np.all(np.diff(v) >= 0) and (height != width or np.array_equal(u, v))
    log_amplitude = np.log(np.abs(np.fft.fft2(maps, axes=(1, 2))[:, u, v]) + 1e-8).mean(-1)
    got = np.asarray(features.diagonal_log_amplitude(jnp.asarray(maps, jnp.float32)))
    np.testing.assert_allclose(got, log_amplitude - log_amplitude[:, :1], atol=2e-4)
