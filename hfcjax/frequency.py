"""Frequency decomposition of images (Section 3.1 and 8 of Wang et al., CVPR 2020).

All functions are pure `jnp` functions on channels-last images ``[..., H, W, C]``
(any number of leading batch dimensions) and can be `jax.jit`-ed and `jax.vmap`-ed.

The paper's split keeps, per channel, the Fourier coefficients within Euclidean
distance ``r`` of the centre of the *centred* (fftshift-ed) spectrum, whose centre
is at ``(H // 2, W // 2)``. We never shift: the centred position ``i`` holds the
unshifted frequency ``i - H // 2``, which is exactly ``np.fft.fftfreq(H) * H``; so
the mask is built on signed integer frequencies and applied to the real-input
transform (``rfft2``). The mask is symmetric under ``f -> -f``, hence the inverse
is real and equals the paper's "discard the imaginary part".
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import backend
from hfcjax.errors import UserError

RESCALE_MODES = ("none", "max", "minmax")
_Tracer = getattr(jax.core, "Tracer", None) or jax._src.core.Tracer  # noqa: SLF001 (public alias moved)


def is_traced(value) -> bool:
    """True inside jit/vmap tracing, where the value is not known yet."""
    return isinstance(value, _Tracer)


def _check_radius(radius) -> None:
    """Rejects negative or non-finite radii when the radius is a concrete value."""
    if is_traced(radius):
        return
    value = np.asarray(radius)
    if value.size and (not np.all(np.isfinite(value)) or np.any(value < 0)):
        raise UserError(f"radius must be a finite number >= 0, got {radius!r}.")


def _check_images(images, what: str = "images") -> jnp.ndarray:
    """Validates `[..., H, W, C]` real images and returns them as a float array."""
    images = jnp.asarray(images)
    if images.ndim < 3:
        raise UserError(
            f"{what} must be channels-last [..., H, W, C] with at least 3 dims, "
            f"got shape {images.shape}. Add a channel axis for grey images (x[..., None])."
        )
    if jnp.issubdtype(images.dtype, jnp.complexfloating) or images.dtype == jnp.bool_:
        raise UserError(f"{what} must be real numbers (uint8 or float), got dtype {images.dtype}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.float32)
    return images


def _signed_frequencies(n: int) -> np.ndarray:
    """Signed integer frequency of each unshifted FFT index (centre at n // 2 after fftshift)."""
    return np.fft.fftfreq(n, d=1.0 / n).round().astype(np.int64)


def squared_distance(height: int, width: int, *, real_input: bool = False) -> np.ndarray:
    """Squared distance of every *unshifted* frequency to the spectrum's centre.

    With ``real_input=True`` only the ``width // 2 + 1`` columns kept by ``rfft2``.
    """
    fy = _signed_frequencies(height)[:, None]
    fx = _signed_frequencies(width)[None, :]
    d2 = fy**2 + fx**2
    if real_input:
        d2 = d2[:, : width // 2 + 1]
    return d2.astype(np.float32)


def radial_mask(height: int, width: int, radius, *, inclusive: bool = True) -> jnp.ndarray:
    """1.0 inside the disk of `radius` around the centre of the centred (fftshift-ed) spectrum.

    ``inclusive=True`` is the paper's ``d <= r``; ``inclusive=False`` is ``d < r`` as in the
    authors' released code. The result is laid out centred, like ``np.fft.fftshift`` output.
    """
    _check_radius(radius)
    i = np.arange(height)[:, None] - height // 2
    j = np.arange(width)[None, :] - width // 2
    return _inside(np.sqrt(i**2 + j**2), radius, inclusive).astype(jnp.float32)


def _inside(distance: np.ndarray, radius, inclusive: bool) -> jnp.ndarray:
    """Compares distances with the radius in float32 (both rounded alike, so a radius equal
    to a distance, e.g. the half-diagonal, is on the circle)."""
    d = jnp.asarray(distance.astype(np.float32))
    r = jnp.asarray(radius, jnp.float32)
    return d <= r if inclusive else d < r


def _low_pass_rfft(images: jnp.ndarray, radius, inclusive: bool, band: Optional[int] = None) -> jnp.ndarray:
    del band  # every frequency is in the spectrum
    height, width = images.shape[-3], images.shape[-2]
    keep = _inside(np.sqrt(squared_distance(height, width, real_input=True)), radius, inclusive)
    spectrum = jnp.fft.rfft2(images, axes=(-3, -2))
    spectrum = spectrum * keep[:, :, None].astype(spectrum.dtype)
    return jnp.fft.irfft2(spectrum, s=(height, width), axes=(-3, -2)).astype(images.dtype)


def _real_basis(n: int, band: Optional[int]):
    """Non-negative frequencies a kept along one axis (those <= `band`; all for None), their
    cos|sin basis [n, 2K] and the weight of each frequency in the real projection (1 for 0 and
    Nyquist, else 2)."""
    a = np.arange(n // 2 + 1)
    a = a if band is None else a[a <= band]
    angle = 2 * np.pi * np.outer(np.arange(n), a) / n
    weight = np.where((a == 0) | (2 * a == n), 1.0, 2.0)
    return a, np.concatenate([np.cos(angle), np.sin(angle)], 1).astype(np.float32), weight


def _low_pass_matmul(images: jnp.ndarray, radius, inclusive: bool, band: Optional[int]) -> jnp.ndarray:
    """The same low-pass as four real 2-D GEMMs over the kept band only.

    The mask depends on fy^2 + fx^2, so the low-pass is the real projection onto the cos/sin
    products of the kept non-negative frequencies (a, b):
    ``low = By (G * (By^T x Bx)) Bx^T`` with ``B = [cos | sin]`` and ``G`` the quarter-disk mask
    times the weights / (H W). No complex arithmetic; every stage is one GEMM over all images
    and channels (the fast path on CPUs at small radii and on TPUs, where FFTs are slow).
    """
    lead = images.shape[:-3]
    height, width, channels = images.shape[-3:]
    ay, by, wy = _real_basis(height, band)
    ax, bx, wx = _real_basis(width, band)
    keep = _inside(np.sqrt(ay[:, None] ** 2 + ax[None, :] ** 2), radius, inclusive).astype(images.dtype)
    gain = jnp.tile(keep * jnp.asarray((wy[:, None] * wx[None, :] / (height * width)).astype(np.float32)), (2, 2)).T
    kx, ky = bx.shape[1], by.shape[1]
    mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
    x = jnp.moveaxis(images.reshape(-1, height, width, channels), -1, 1)  # [B, C, H, W]
    b = x.shape[0] * channels
    t = mm(x.reshape(b * height, width), jnp.asarray(bx)).reshape(b, height, kx).transpose(0, 2, 1)
    y = mm(t.reshape(b * kx, height), jnp.asarray(by)).reshape(b, kx, ky) * gain  # coefficients
    t = mm(y.reshape(b * kx, ky), jnp.asarray(by.T)).reshape(b, kx, height).transpose(0, 2, 1)
    low = mm(t.reshape(b * height, kx), jnp.asarray(bx.T)).reshape(-1, channels, height, width)
    return jnp.moveaxis(low, 1, -1).reshape(*lead, height, width, channels)


SPLIT_METHODS = ("auto", "fft", "matmul")


def _block_size(num_images: int, image_bytes: int) -> int:
    """Images per block: about `backend.split_block_bytes()`, preferring a divisor of the batch
    (no remainder pass); 0 means "one pass over everything" (small batches, accelerators)."""
    block_bytes = backend.split_block_bytes()
    if not block_bytes:
        return 0
    target = max(1, block_bytes // image_bytes)
    if num_images < 2 * target:
        return 0
    for size in range(target, max(1, target // 4) - 1, -1):
        if num_images % size == 0:
            return size
    return target


def split(images, radius, *, inclusive: bool = True, method: str = "auto") -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Splits images into low- and high-frequency components (LFC, HFC) at `radius`.

    Args:
      images: real ``[..., H, W, C]`` array (uint8 is converted to float32).
      radius: Python number or (traced) scalar; a traced radius compiles once for all radii.
      inclusive: ``d <= r`` (paper) if True, ``d < r`` (authors' code) if False.
      method: ``"fft"`` (rfft2), ``"matmul"`` (the DFT as real matrix multiplies over the kept
        band only; fastest on CPUs, GPUs and TPUs when the radius is concrete) or ``"auto"``
        (matmul for a concrete radius, fft for a traced one).

    Returns:
      ``(low, high)`` float arrays of the input's shape with ``low + high == images``.

    Large batches may be split in blocks (``lax.map``) of the size `backend.split_block_bytes`
    chooses (cache-sized on a CPU, where the transform is memory-bound); the result is the same.
    """
    _check_radius(radius)
    images = _check_images(images)
    if method not in SPLIT_METHODS:
        raise UserError(f"unknown split method {method!r}; choose one of {SPLIT_METHODS}.")
    if method == "auto":
        method = "fft" if is_traced(radius) else "matmul"
    # One compiled program per image shape and band size: the radius itself is an argument, so
    # an eager sweep over radii compiles once per whole-frequency band, not once per operation.
    band = None if method == "fft" or is_traced(radius) else min(int(np.floor(radius)), max(images.shape[-3:-1]))
    return _split(images, radius, inclusive=inclusive, method=method, band=band)


@functools.partial(jax.jit, static_argnames=("inclusive", "method", "band"))
def _split(images, radius, *, inclusive: bool, method: str, band: Optional[int]):
    low_pass = _low_pass_rfft if method == "fft" else _low_pass_matmul

    def split_block(x):
        low = low_pass(x, radius, inclusive, band)
        return low, x - low

    flat = images.reshape(-1, *images.shape[-3:])
    block = _block_size(flat.shape[0], math.prod(flat.shape[1:]) * flat.dtype.itemsize)
    if not block:
        low, high = split_block(flat)
    else:
        whole = flat.shape[0] // block * block
        low, high = jax.lax.map(split_block, flat[:whole].reshape(-1, block, *flat.shape[1:]))
        low, high = low.reshape(whole, *flat.shape[1:]), high.reshape(whole, *flat.shape[1:])
        if whole < flat.shape[0]:
            rest_low, rest_high = split_block(flat[whole:])
            low, high = jnp.concatenate([low, rest_low]), jnp.concatenate([high, rest_high])
    return low.reshape(images.shape), high.reshape(images.shape)


def rescale(images, mode: str) -> jnp.ndarray:
    """Per-image normalisation used when training on LFC/HFC images (Table 1).

    ``"max"`` divides each image by its maximum (the authors' code), ``"minmax"`` maps each
    image to [0, 1], ``"none"`` returns the images unchanged. Constant images map to 0.
    """
    if mode not in RESCALE_MODES:
        raise UserError(f"unknown rescale mode {mode!r}; choose one of {RESCALE_MODES}.")
    images = _check_images(images)
    if mode == "none":
        return images
    axes = (-3, -2, -1)
    hi = jnp.max(images, axis=axes, keepdims=True)
    tiny = jnp.finfo(images.dtype).tiny
    if mode == "max":
        safe = jnp.where(jnp.abs(hi) > tiny, hi, 1.0)
        return jnp.where(jnp.abs(hi) > tiny, images / safe, 0.0)
    lo = jnp.min(images, axis=axes, keepdims=True)
    span = hi - lo
    return jnp.where(span > tiny, (images - lo) / jnp.where(span > tiny, span, 1.0), 0.0)


def svd_split(images, rank: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Section 8's alternative split: per channel, reconstruction from the `rank` largest
    singular values (dominant) and from the remaining ones (trailing)."""
    images = _check_images(images)
    max_rank = min(images.shape[-3], images.shape[-2])
    if not isinstance(rank, numbers.Integral) or not 0 <= rank <= max_rank:
        raise UserError(f"rank must be an integer in [0, {max_rank}], got {rank!r}.")
    mats = jnp.moveaxis(images, -1, -3)  # [..., C, H, W]
    u, s, vt = jnp.linalg.svd(mats, full_matrices=False)
    keep = (jnp.arange(s.shape[-1]) < rank).astype(s.dtype)
    dominant = jnp.einsum("...ik,...k,...kj->...ij", u, s * keep, vt)
    dominant = jnp.moveaxis(dominant, -3, -1)
    return dominant, images - dominant


def radial_spectrum(images) -> jnp.ndarray:
    """Mean power ``|F(x)|^2`` per integer radius (rounded distance to the centre).

    Returns ``[..., R]`` with ``R = floor(max distance) + 1``, averaged over channels and
    over the frequencies in each ring; leading batch dims are kept.
    """
    images = _check_images(images)
    power = jnp.abs(jnp.fft.rfft2(images, axes=(-3, -2))) ** 2  # real images: half the spectrum says it all
    return ring_mean(jnp.mean(power, axis=-1), width=images.shape[-2])


def ring_mean(values, width: Optional[int] = None) -> jnp.ndarray:
    """The mean of per-frequency `values` ``[..., H, W]`` (unshifted, as `fft2` lays them out)
    per integer radius, the rounded distance to the zero frequency: ``[..., R]``. With
    `width`, `values` is rfft2's half ``[..., H, width // 2 + 1]`` of a spectrum symmetric
    under f -> -f (an amplitude, a power): each column that stands for two counts twice."""
    height = values.shape[-2]
    full = width is None
    width = values.shape[-1] if full else width
    ring = np.rint(np.sqrt(squared_distance(height, width, real_input=not full))).astype(np.int32)
    weight = np.ones(ring.shape, np.float32)
    if not full:
        weight[:, 1:(width + 1) // 2] = 2.0  # the columns whose mirror rfft2 leaves out
    onehot = np.eye(int(np.rint(np.sqrt(squared_distance(height, width).max()))) + 1, dtype=np.float32)[ring]
    onehot = onehot * weight[..., None]  # [H, W', R]
    return jnp.einsum("...hw,hwr->...r", values, jnp.asarray(onehot)) / onehot.sum(axis=(0, 1))


def amplitude_phase(images, phasor: bool = False) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Per channel, the amplitude ``|F(x)|`` and the phase ``angle(F(x))`` of the 2-D Fourier
    transform over H and W of real images, as `rfft2` lays it out (``[..., H, W // 2 + 1, C]``
    each: the other half is their mirror image). With `phasor` the phase comes as the unit
    complex number ``F / |F|`` (1 where F = 0, whose angle is 0): `recombine` takes either,
    and the phasor spares it an arctangent, a cosine and a sine per frequency."""
    spectrum = jnp.fft.rfft2(_check_images(images), axes=(-3, -2))
    amplitude = jnp.abs(spectrum)
    if not phasor:
        return amplitude, jnp.angle(spectrum)
    nonzero = amplitude > 0
    return amplitude, jnp.where(nonzero, spectrum / jnp.where(nonzero, amplitude, 1.0), 1.0)


def recombine(amplitude, phase, width: int) -> jnp.ndarray:
    """The real image ``[..., H, width, C]`` whose spectrum has `amplitude` and `phase` (both
    as `amplitude_phase` returns them, the phase as angles or as phasors: its inverse). With one
    real image's amplitude and another's phase (Chen et al. 2021's amplitude-phase
    recombination) this is the real part of the inverse of the full recombined spectrum. Not
    clipped to [0, 1]."""
    height = amplitude.shape[-3]
    rotation = phase if jnp.iscomplexobj(phase) else jnp.exp(1j * phase)
    return jnp.fft.irfft2(amplitude * rotation, s=(height, width), axes=(-3, -2))


def dct_bands(height: int, width: int, block: int, stride: int) -> Tuple[int, ...]:
    """The starts of the diagonal DCT blocks of Ortiz-Jimenez et al. 2020: block j holds the
    orthonormal 2-D DCT-II basis images (u, v) with s_j <= u, v < s_j + block, s_j = j * stride,
    low to high frequency, as many as fit in the smaller side."""
    if not 1 <= block <= min(height, width):
        raise UserError(f"a DCT block of {block}x{block} does not fit {height}x{width} images; "
                        f"choose 1 <= block <= {min(height, width)}.")
    if stride < 1:
        raise UserError(f"the stride between DCT blocks must be >= 1, got {stride}.")
    return tuple(range(0, min(height, width) - block + 1, stride))


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``C`` (n x n): ``scipy.fft.dct(x, norm="ortho") == C @ x``."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def dct_block_project(images, start, block: int) -> jnp.ndarray:
    """Orthogonal projection of `images` ``[..., H, W, C]`` onto the span of the orthonormal
    2-D DCT-II basis images (u, v) with start <= u, v < start + block, per channel (`start`
    may be traced). The block is a product of a row and a column band, so the projection is
    two small matrix products, ``A x B`` with ``A = C_H^T diag(rows) C_H`` (and B alike)."""
    images = _check_images(images)

    def band(n):
        c = jnp.asarray(dct_matrix(n), jnp.float32)
        k = jnp.arange(n)
        keep = ((k >= start) & (k < start + block)).astype(jnp.float32)
        return (c.T * keep) @ c  # symmetric

    return jnp.einsum("hk,...kwc,wl->...hlc", band(images.shape[-3]), images, band(images.shape[-2]))
