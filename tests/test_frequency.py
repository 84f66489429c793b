"""hfcjax.frequency against a plain numpy reading of Section 3.1, plus properties."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from hfcjax import backend, frequency
from hfcjax.errors import UserError

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)


SHAPES = [(3, 32, 32, 3), (2, 28, 28, 1), (2, 31, 17, 2), (1, 224, 224, 3)]
RADII = [0, 1, 4, 7.5, 8, 12, 16, 40]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("method", frequency.SPLIT_METHODS)
def test_split_matches_numpy_reference(shape, inclusive, method, reference_split):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, shape).astype(np.float32)
    for radius in RADII:
        low, high = frequency.split(images, radius, inclusive=inclusive, method=method)
        ref_low, ref_high, _ = reference_split(images, radius, inclusive)
        np.testing.assert_allclose(low, ref_low, atol=2e-5)
        np.testing.assert_allclose(high, ref_high, atol=2e-5)


def test_boundary_conventions_differ_exactly_on_the_circle():
    # r = 5 passes through the integer points (3, 4): d <= r keeps them, d < r drops them.
    inc = np.asarray(frequency.radial_mask(32, 32, 5, inclusive=True))
    exc = np.asarray(frequency.radial_mask(32, 32, 5, inclusive=False))
    i, j = np.nonzero(inc != exc)
    assert len(i) > 0 and np.allclose(np.hypot(i - 16, j - 16), 5)


@pytest.mark.parametrize("h,w", [(32, 32), (28, 28), (31, 17)])
@pytest.mark.parametrize("radius", [0, 3, 8.5, 16])
def test_radial_mask_matches_reference(h, w, radius, reference_split):
    for inclusive in (True, False):
        _, _, ref = reference_split(np.zeros((1, h, w, 1)), radius, inclusive)
        np.testing.assert_array_equal(frequency.radial_mask(h, w, radius, inclusive=inclusive), ref)


def test_unshifted_mask_equals_centred_mask():
    for h, w in [(32, 32), (28, 28), (31, 17), (8, 5)]:
        d2 = frequency.squared_distance(h, w)
        centred = np.fft.fftshift(d2)
        i = np.arange(h)[:, None] - h // 2
        j = np.arange(w)[None, :] - w // 2
        np.testing.assert_array_equal(centred, i**2 + j**2)


def test_traced_radius_compiles_once_for_all_radii():
    images = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def split_at(r):
        return frequency.split(images, r)

    for radius in (2.0, 4.0, 8.0, 16.0):
        low, _ = split_at(jnp.float32(radius))
        np.testing.assert_allclose(low, frequency.split(images, radius)[0], atol=5e-6)
    traced_matmul = jax.jit(lambda r: frequency.split(images, r, method="matmul"))
    np.testing.assert_allclose(traced_matmul(jnp.float32(8.0))[0], frequency.split(images, 8.0)[0], atol=2e-5)
    lows, highs = jax.vmap(lambda r: frequency.split(images, r))(jnp.array([4.0, 8.0]))
    assert lows.shape == (2, 2, 32, 32, 3)
    np.testing.assert_allclose(lows[1], frequency.split(images, 8)[0], atol=5e-6)


@pytest.mark.parametrize("num_images", [20, 21, 17])
@pytest.mark.parametrize("method", frequency.SPLIT_METHODS)
def test_blocked_split_equals_reference(monkeypatch, num_images, method, reference_split):
    # Target 8 images a block: 20 -> blocks of 5, 21 -> 7 (divisors), 17 (prime) -> 8 + a remainder pass.
    image_bytes = 8 * 8 * 2 * 4
    monkeypatch.setattr(backend, "CPU_SPLIT_BLOCK_BYTES", 8 * image_bytes)
    monkeypatch.setattr(backend, "is_cpu", lambda: True)
    assert frequency._block_size(num_images, image_bytes) == {20: 5, 21: 7, 17: 8}[num_images]
    images = np.random.default_rng(num_images).uniform(0, 1, (num_images, 8, 8, 2)).astype(np.float32)
    low, high = jax.jit(lambda x: frequency.split(x, 2.5, method=method))(images)
    ref_low, ref_high, _ = reference_split(images, 2.5, True)
    np.testing.assert_allclose(low, ref_low, atol=2e-5)
    np.testing.assert_allclose(high, ref_high, atol=2e-5)
    assert frequency._block_size(3, image_bytes) == 0  # small batches: one pass
    monkeypatch.setattr(backend, "is_cpu", lambda: False)
    assert frequency._block_size(num_images, image_bytes) == 0  # accelerators: one pass


def test_any_leading_batch_dims_and_uint8():
    images = np.random.default_rng(2).integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    low, high = frequency.split(images, 4)
    assert low.dtype == jnp.float32 and low.shape == images.shape
    flat_low, _ = frequency.split(images.reshape(6, 16, 16, 3), 4)
    np.testing.assert_allclose(low.reshape(6, 16, 16, 3), flat_low, atol=1e-4)


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="radius must be"):
        frequency.split(np.zeros((1, 8, 8, 1)), -1)
    with pytest.raises(ValueError, match="radius must be"):
        frequency.radial_mask(8, 8, float("nan"))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, C\]"):
        frequency.split(np.zeros((8, 8)), 2)
    with pytest.raises(UserError, match="real numbers"):
        frequency.split(np.zeros((1, 8, 8, 1), np.complex64), 2)
    with pytest.raises(ValueError, match="rescale mode"):
        frequency.rescale(np.zeros((1, 8, 8, 1)), "zscore")
    with pytest.raises(ValueError, match="rank"):
        frequency.svd_split(np.zeros((1, 8, 8, 1)), 9)


# Shapes from a small fixed set (batch 1 and 2, odd and even sides, square and not, grey and
# colour): every new shape is a new compilation (about half a second each), and hypothesis
# varies the values, which is what these properties are about.
PROPERTY_SHAPES = [(1, 2, 5, 1), (2, 5, 5, 3), (1, 8, 12, 3), (2, 12, 8, 1), (1, 12, 12, 3), (2, 5, 8, 1)]
image_arrays = st.sampled_from(PROPERTY_SHAPES).flatmap(
    lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
SIDES = st.sampled_from(sorted({s[1:3] for s in PROPERTY_SHAPES}))
radii = st.floats(0, 10)


@settings(max_examples=25, deadline=None)
@given(image_arrays, radii)
def test_low_plus_high_is_the_image(images, radius):
    low, high = frequency.split(images, radius)
    np.testing.assert_allclose(low + high, images, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(image_arrays, radii, st.floats(-3, 3), st.floats(-3, 3))
def test_split_is_linear(images, radius, a, b):
    other = np.roll(images[::-1], 1, axis=-2)
    low_mix, _ = frequency.split(a * images + b * other, radius)
    low_a, _ = frequency.split(images, radius)
    low_b, _ = frequency.split(other, radius)
    np.testing.assert_allclose(low_mix, a * low_a + b * low_b, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(image_arrays)
def test_radius_beyond_half_diagonal_keeps_everything(images):
    h, w = images.shape[1:3]
    low, high = frequency.split(images, np.hypot(h / 2, w / 2))
    np.testing.assert_allclose(low, images, atol=1e-5)
    np.testing.assert_allclose(high, 0, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.floats(-5, 5), SIDES, radii)
def test_low_of_constant_image_is_the_image(value, size, radius):
    images = np.full((1, *size, 2), value, np.float32)
    low, high = frequency.split(images, radius)
    np.testing.assert_allclose(low, images, atol=1e-5)


def test_rescale_modes():
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 3)).astype(np.float32)
    m = np.asarray(frequency.rescale(x, "max"))
    np.testing.assert_allclose(m, x / x.max(axis=(1, 2, 3), keepdims=True), rtol=1e-6)
    mm = np.asarray(frequency.rescale(x, "minmax"))
    np.testing.assert_allclose(mm.min(axis=(1, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(mm.max(axis=(1, 2, 3)), 1, atol=1e-6)
    np.testing.assert_array_equal(frequency.rescale(x, "none"), x)
    np.testing.assert_array_equal(frequency.rescale(np.zeros((1, 4, 4, 1)), "minmax"), 0)


def test_svd_split_matches_numpy():
    x = np.random.default_rng(4).uniform(size=(2, 12, 10, 3)).astype(np.float32)
    for rank in (0, 3, 10):
        dom, trail = frequency.svd_split(x, rank)
        for n in range(2):
            for c in range(3):
                u, s, vt = np.linalg.svd(x[n, :, :, c].astype(np.float64), full_matrices=False)
                ref = (u[:, :rank] * s[:rank]) @ vt[:rank]
                np.testing.assert_allclose(dom[n, :, :, c], ref, atol=1e-4)
        np.testing.assert_allclose(dom + trail, x, atol=1e-5)
    np.testing.assert_allclose(frequency.svd_split(x, 10)[0], x, atol=1e-4)


def test_radial_spectrum_matches_loop():
    x = np.random.default_rng(5).uniform(size=(2, 9, 8, 2)).astype(np.float32)
    out = np.asarray(frequency.radial_spectrum(x))
    power = np.abs(np.fft.fftshift(np.fft.fft2(x, axes=(1, 2)), axes=(1, 2))) ** 2
    i = np.arange(9)[:, None] - 4
    j = np.arange(8)[None, :] - 4
    ring = np.rint(np.hypot(i, j)).astype(int)
    for n in range(2):
        for r in range(ring.max() + 1):
            np.testing.assert_allclose(out[n, r], power[n][ring == r].mean(), rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(image_arrays)
def test_recombined_spectrum_is_one_images_amplitude_and_the_others_phase(a):
    width = a.shape[2]
    amplitude, phase = frequency.amplitude_phase(a)
    np.testing.assert_allclose(frequency.recombine(amplitude, phase, width), a, atol=1e-5)  # the inverse
    # b: noise, so no coefficient is near zero (whose phase float32 rounding decides)
    b = np.random.default_rng(a.size).uniform(size=a.shape).astype(np.float32)
    mixed = np.asarray(frequency.recombine(amplitude, frequency.amplitude_phase(b)[1], width), np.float64)
    fa, fb = np.fft.fft2(a.astype(np.float64), axes=(1, 2)), np.fft.fft2(b.astype(np.float64), axes=(1, 2))
    np.testing.assert_allclose(mixed, np.real(np.fft.ifft2(np.abs(fa) * np.exp(1j * np.angle(fb)), axes=(1, 2))),
                               atol=1e-5)
    np.testing.assert_allclose(np.abs(np.fft.fft2(mixed, axes=(1, 2))), np.abs(fa), atol=1e-4)  # real: nothing lost
    same, phasor = frequency.amplitude_phase(b, phasor=True)  # the phase as F / |F|: the same recombination
    np.testing.assert_allclose(np.abs(phasor), 1.0, atol=1e-5)
    np.testing.assert_allclose(frequency.recombine(amplitude, phasor, width), mixed, atol=1e-5)
    np.testing.assert_allclose(frequency.recombine(same, phasor, width), b, atol=1e-5)
    zero, one = frequency.amplitude_phase(np.zeros_like(a), phasor=True)  # F = 0: angle 0, phasor 1
    assert np.all(np.asarray(zero) == 0) and np.all(np.asarray(one) == 1)


@settings(max_examples=20, deadline=None)
@given(image_arrays, st.integers(0, 6), st.integers(1, 6))
def test_dct_band_projection_is_scipys_and_a_projection(images, start, block):
    import scipy.fft

    h, w = images.shape[1:3]
    keep = np.zeros((h, w, 1))
    keep[start:start + block, start:start + block] = 1
    projected = np.asarray(frequency.dct_block_project(images, start, block))
    reference = scipy.fft.idctn(scipy.fft.dctn(images.astype(np.float64), axes=(1, 2), norm="ortho") * keep,
                                axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(projected, reference, atol=1e-5)
    np.testing.assert_allclose(frequency.dct_block_project(projected, start, block), projected, atol=1e-5)
    np.testing.assert_allclose(frequency.dct_matrix(w) @ images[0, 0, :, 0], scipy.fft.dct(images[0, 0, :, 0],
                                                                                             norm="ortho"), atol=1e-5)
    assert frequency.dct_bands(28, 28, 8, 4) == (0, 4, 8, 12, 16, 20)


@pytest.mark.parametrize("height,width", [(6, 6), (5, 7), (8, 5)])
def test_ring_mean_of_rfft2_half_equals_the_full_spectrums(height, width):
    x = np.random.default_rng(height * width).normal(size=(2, height, width, 3))
    full = np.abs(np.fft.fft2(x, axes=(1, 2))).mean(-1)
    half = np.abs(np.fft.rfft2(x, axes=(1, 2))).mean(-1)
    np.testing.assert_allclose(frequency.ring_mean(half, width=width), frequency.ring_mean(full), rtol=1e-5)
