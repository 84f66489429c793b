"""hfcjax.heatmap against an independent numpy construction of the Fourier bases (inverse DFT
of a conjugate pair of deltas) on a model whose heat map is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hfcjax import heatmap

FAST_COMPILE = True  # compilation is most of this module's time (conftest._fast_compile)


def reference_basis(h, w, a, b):
    """Centred cell (a, b): the real image whose DFT is 1 at that frequency and its conjugate."""
    spectrum = np.zeros((h, w), complex)
    k = ((a - h // 2) % h, (b - w // 2) % w)
    spectrum[k] += 1
    spectrum[(-k[0]) % h, (-k[1]) % w] += 1
    u = np.fft.ifft2(spectrum)
    assert np.abs(u.imag).max() < 1e-12
    return u.real / np.linalg.norm(u.real)


@pytest.mark.parametrize("shape,target", [((8, 8), (2, 5)), ((7, 5), (0, 4)), ((6, 9), (0, 4)), ((6, 6), (0, 0)),
                                          ((5, 6), (3, 3))])
def test_heat_map_of_a_projection_detector_is_its_conjugate_pair(shape, target):
    """Model: class 1 iff |<x - 0.5, V>| > t with V = U at `target` in every channel. Images are
    0.5 (class 0). A basis orthogonal to V changes nothing (error 0); V itself moves the
    projection by eps * |sum of 3 random signs| >= eps > t (error 1), whatever the signs."""
    h, w = shape
    v = reference_basis(h, w, *target)
    images = jnp.full((5, h, w, 3), 0.5)
    labels = jnp.zeros(5, jnp.int32)

    def logits_fn(x):
        proj = jnp.abs(jnp.einsum("nhwc,hw->n", x - 0.5, jnp.asarray(v, jnp.float32)))
        return jnp.stack([jnp.full_like(proj, 0.05), proj], -1)

    counts = jax.jit(lambda e: heatmap.heatmap_counts(logits_fn, images, labels, e, key=jax.random.key(0),
                                                      basis_chunk=4))(0.2)
    error = 1 - np.asarray(counts) / 5
    expected = np.array([[abs(np.vdot(reference_basis(h, w, a, b), v)) > 0.5 for b in range(w)] for a in range(h)])
    np.testing.assert_array_equal(error, expected.astype(float))
    assert expected.sum() in (1, 2)  # a frequency and its conjugate (one cell when self-conjugate)


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 9), st.integers(2, 9), st.data())
def test_basis_matches_the_inverse_dft_of_a_conjugate_pair(h, w, data):
    reps, cell_to_basis = heatmap.basis_frequencies(h, w)
    a, b = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    fy, fx = reps[cell_to_basis[a, b]]
    np.testing.assert_allclose(heatmap.basis(h, w, float(fy), float(fx)), reference_basis(h, w, a, b), atol=2e-6)
    # Every cell and its conjugate share one basis; the bases are about half the cells.
    assert cell_to_basis[a, b] == cell_to_basis[(2 * (h // 2) - a) % h, (2 * (w // 2) - b) % w]
    assert len(reps) == len(np.unique(cell_to_basis)) <= h * w // 2 + 2


def test_zero_eps_gives_the_clean_error_everywhere_and_band_means():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(6 * 6 * 1, 3)).astype(np.float32)
    images = jnp.asarray(rng.uniform(size=(10, 6, 6, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, 10))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weights
    clean = float(np.mean(np.argmax(np.asarray(logits_fn(images)), -1) == np.asarray(labels)))
    counts = heatmap.heatmap_counts(logits_fn, images, labels, 0.0, key=jax.random.key(1))
    np.testing.assert_allclose(np.asarray(counts) / 10, clean)
    error = np.arange(36, dtype=float).reshape(6, 6)
    inside, outside = heatmap.band_means(error, 1.0)
    assert inside == pytest.approx(np.mean([error[3, 3], error[2, 3], error[4, 3], error[3, 2], error[3, 4]]))
    assert outside == pytest.approx((error.sum() - 5 * inside) / 31)


def test_bad_eps_and_shape_are_one_line():
    logits_fn = lambda x: x.reshape(x.shape[0], -1)[:, :2]
    with pytest.raises(ValueError, match="eps .* must be finite and >= 0"):
        heatmap.heatmap_counts(logits_fn, jnp.zeros((2, 4, 4, 1)), jnp.zeros(2, jnp.int32), -1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"must be \[N, H, W, C\]"):
        heatmap.heatmap_counts(logits_fn, jnp.zeros((4, 4, 1)), jnp.zeros(4, jnp.int32), 1.0, key=jax.random.key(0))


def test_evaluator_groups_of_bases_equal_one_call(monkeypatch):
    """The heatmap evaluator runs the bases in fixed groups (and batches of images); the map equals
    `heatmap_counts` of all bases in one call with the same keys."""
    from hfcjax import backend, evaluators
    from hfcjax.evaluators import common, variants

    monkeypatch.setattr(backend, "heatmap_group", lambda num_bases: 24)  # 12x12: 74 bases -> 4 groups
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(12 * 12 * 1, 4)).astype(np.float32)
    images = rng.integers(0, 256, (10, 12, 12, 1), dtype=np.uint8)
    labels = np.argmax((images.reshape(10, -1) / 255) @ weights, -1).astype(np.int32)
    apply_fn = lambda v, x: x.reshape(x.shape[0], -1) @ weights
    cfg = evaluators.module("heatmap").get_config()
    cfg.eps = 3.0
    evaluator = evaluators.module("heatmap").Evaluator(apply_fn, cfg, common.Shared(batch_size=10, log=lambda m: None))
    result = evaluator.run(common.Inputs({}, variants.model_variants({}, rhos=(0.0,)), images, labels, (2.0,)))
    error = result.maps[0.0]
    counts = heatmap.heatmap_counts(lambda x: apply_fn({}, x), jnp.asarray(images, jnp.float32) / 255,
                                    jnp.asarray(labels), 3.0, key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(error, 1 - np.asarray(counts, np.float64) / 10, atol=1e-9)
    assert error.max() > 0  # eps 3 does flip some predictions
