"""hfcjax.measure: per-variant accuracy counts against the numpy reference split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfcjax import measure


def test_variant_counts_match_the_reference_split_per_variant(reference_split):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 24)
    mask = (np.arange(24) < 21).astype(np.float32)  # the last three rows are padding
    weights = rng.normal(size=(16 * 16 * 3, 4)).astype(np.float32)
    radii = [2.0, 5.0]

    x = images.astype(np.float64) / 255
    variants = [x] + [reference_split(x, r)[0] for r in radii] + [reference_split(x, r)[1] for r in radii]
    logits = [v.reshape(24, -1) @ weights for v in variants]
    top2 = np.sort(np.stack(logits), -1)[..., -2:]
    assert np.min(top2[..., 1] - top2[..., 0]) > 1e-3  # no near-ties: float32 agrees with float64
    expected = [int(np.sum((np.argmax(z, -1) == labels) * mask)) for z in logits]

    counts = jax.jit(lambda im, y, m, rr: measure.variant_counts(
        lambda v: v.reshape(v.shape[0], -1) @ weights, im, y, m, rr))(images, labels, mask, jnp.asarray(radii))
    assert counts.shape == (1 + 2 * len(radii),)
    np.testing.assert_array_equal(np.asarray(counts), expected)
    assert len(set(expected)) > 1  # the variants really differ
    names = [v.name for v in measure.tracked_variants(radii)]
    assert names == ["original", "low_r2", "low_r5", "high_r2", "high_r5"]


def test_map_unrolled_equals_lax_map():
    stacked = jnp.arange(12.0).reshape(4, 3)
    fn = lambda v: (jnp.sum(v**2), v[::-1])
    for got, want in zip(measure.map_unrolled(fn, stacked), jax.lax.map(fn, stacked)):
        np.testing.assert_array_equal(got, want)


def test_metric_names_are_derived_and_read_back_by_lookup():
    variants = measure.tracked_variants([4.0, 12]) + measure.svd_variants([8])
    names = [measure.metric_name("test", v) for v in variants]
    assert names == ["test_acc", "test_low_r4", "test_low_r12", "test_high_r4", "test_high_r12",
                     "test_dominant_k8", "test_trailing_k8"]
    records = [measure.flat_metrics({"test": {v: 0.1 * i + e for i, v in enumerate(variants)}}) | {"epoch": e}
               for e in (1, 2)]
    curves = measure.series(records, "test", variants)
    assert curves[measure.high(12)] == [1.4, 2.4]
    assert measure.accuracies(records[1], "test", [measure.ORIGINAL]) == {measure.ORIGINAL: 2.0}
    assert measure.low(4) == measure.Variant("low", 4) and measure.low(4).label == "LFC r=4"
    with pytest.raises(ValueError, match="needs a radius or rank"):
        measure.Variant("low")
    with pytest.raises(ValueError, match="unknown split"):
        measure.metric_name("val", measure.ORIGINAL)


def test_figure2_examples_prefer_r12_else_the_radius_with_most():
    n = 6
    right = np.ones(n, bool)
    correct = {measure.ORIGINAL: right}
    for r in (4.0, 12.0):
        correct[measure.high(r)] = right
    correct[measure.low(4.0)] = np.array([0, 0, 0, 1, 1, 1], bool)  # 3 fit at r=4
    correct[measure.low(12.0)] = np.array([1, 1, 1, 1, 0, 1], bool)  # 1 fits at r=12
    assert measure.figure2_examples(correct, [4.0, 12.0])[0] == 12.0
    assert measure.figure2_examples(correct, [4.0, 12.0])[1].tolist() == [4]
    correct[measure.low(12.0)] = right
    radius, idx = measure.figure2_examples(correct, [4.0, 12.0])
    assert radius == 4.0 and idx.tolist() == [0, 1, 2]
    correct[measure.low(4.0)] = right
    assert measure.figure2_examples(correct, [4.0, 12.0])[0] is None
