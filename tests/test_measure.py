"""hfcjax.measure: per-variant accuracy counts against the numpy reference split."""

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import measure
from test_frequency import reference_split


def test_variant_counts_match_the_reference_split_per_variant():
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
    assert measure.variant_names(radii) == ["orig", "low_r2", "low_r5", "high_r2", "high_r5"]


def test_map_unrolled_equals_lax_map():
    stacked = jnp.arange(12.0).reshape(4, 3)
    fn = lambda v: (jnp.sum(v**2), v[::-1])
    for got, want in zip(measure.map_unrolled(fn, stacked), jax.lax.map(fn, stacked)):
        np.testing.assert_array_equal(got, want)
