"""Fourier heat map (Yin et al. 2019, "A Fourier perspective on model robustness") as a pure,
jit-friendly function of any ``logits_fn``.

For every frequency (i, j) of an H x W image, the model's error rate under
``clip01(x + eps * r_c * U_ij)``: `U_ij` is the real image whose DFT is non-zero only at
(i, j) and (-i, -j), with equal real values (a cosine), scaled to unit L2 norm, the same in
every channel; `r_c` is a random sign per image and channel. The map is laid out like
``np.fft.fftshift`` output: zero frequency at ``(H // 2, W // 2)``. Any H and W, odd or even.

Conjugate frequencies give the same basis, so each pair is computed once and mirrored.
`heatmap_counts` runs all bases of a batch in one compiled call (a scan over vmapped chunks of
bases); `basis_counts` runs a given group of bases, which is how evaluation bounds memory on a
CPU (fixed-size groups, one compilation, see `backend.heatmap_group`).
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import backend, frequency
from hfcjax.errors import UserError


@functools.lru_cache(maxsize=None)
def basis_frequencies(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """(frequencies [K, 2], cell_to_basis [H, W]): one signed frequency (fy, fx) per class of
    conjugate frequencies, and for every cell of the centred map the index of its class."""
    cy, cx = height // 2, width // 2
    fy = np.arange(height) - cy
    fx = np.arange(width) - cx
    # Unshifted indices of each cell and of its conjugate; a class is named by its smaller flat index.
    ky, kx = np.meshgrid(fy % height, fx % width, indexing="ij")
    flat = ky * width + kx
    conj = ((-ky) % height) * width + (-kx) % width
    name = np.minimum(flat, conj).ravel()
    _, first_cell, cell_to_basis = np.unique(name, return_index=True, return_inverse=True)
    reps = np.stack([fy[first_cell // width], fx[first_cell % width]], axis=1)
    return reps, cell_to_basis.reshape(height, width)


def basis(height: int, width: int, fy, fx) -> jnp.ndarray:
    """U for the signed frequency (fy, fx): cos(2 pi (fy y / H + fx x / W)) at unit L2 norm, [H, W]."""
    y = jnp.arange(height, dtype=jnp.float32)[:, None]
    x = jnp.arange(width, dtype=jnp.float32)[None, :]
    u = jnp.cos(2 * jnp.pi * (fy * y / height + fx * x / width))
    return u / jnp.sqrt(jnp.sum(u * u))


def basis_counts(logits_fn, images, labels, eps, basis_ids, *, key, mask=None, basis_chunk: int = 8,
                 unroll=None) -> jnp.ndarray:
    """Correct predictions ``[len(basis_ids)]`` of `images` (floats in [0, 1], [N, H, W, C])
    under the perturbation of each basis class in `basis_ids` (indices into
    `basis_frequencies`; its length a multiple of `basis_chunk`). Chunks of bases are vmapped,
    the chunks scanned with `unroll` (default `backend.heatmap_unroll`). Rows with
    ``mask == 0`` do not count; `eps` may be traced."""
    if not frequency.is_traced(eps) and not (np.isfinite(eps) and eps >= 0):
        raise UserError(f"the heat map's eps (the L2 norm of each Fourier basis) must be finite and >= 0, got {eps!r}.")
    if images.ndim != 4:
        raise UserError(f"images must be [N, H, W, C] floats in [0, 1], got shape {images.shape}.")
    n, height, width, channels = images.shape
    reps = jnp.asarray(basis_frequencies(height, width)[0])
    mask = jnp.ones(n, jnp.float32) if mask is None else mask
    chunks = basis_ids.shape[0] // basis_chunk
    unroll = backend.heatmap_unroll(chunks) if unroll is None else unroll

    def correct(index):
        u = basis(height, width, reps[index, 0].astype(jnp.float32), reps[index, 1].astype(jnp.float32))
        signs = jax.random.rademacher(jax.random.fold_in(key, index), (n, 1, 1, channels), jnp.float32)
        x = jnp.clip(images + eps * signs * u[None, :, :, None], 0.0, 1.0)
        return jnp.sum((jnp.argmax(logits_fn(x), -1) == labels) * mask)

    per_chunk = lambda carry, ids: (carry, jax.vmap(correct)(ids))
    return jax.lax.scan(per_chunk, None, basis_ids.reshape(chunks, basis_chunk), unroll=unroll)[1].reshape(-1)


def padded_ids(num_bases: int, multiple: int) -> np.ndarray:
    """0 .. num_bases-1, padded (repeating the first ids) to a multiple of `multiple`."""
    return np.arange(-(-num_bases // multiple) * multiple) % num_bases


def heatmap_counts(logits_fn, images, labels, eps, *, key, mask=None, basis_chunk: int = 8) -> jnp.ndarray:
    """Correct predictions ``[H, W]`` (centred) of `images` (floats in [0, 1], [N, H, W, C])
    under the perturbation of every frequency, all bases in this one call; rows with
    ``mask == 0`` do not count. `eps` may be traced. Sum over batches, divide by the number
    of images for accuracy."""
    if images.ndim != 4:
        raise UserError(f"images must be [N, H, W, C] floats in [0, 1], got shape {images.shape}.")
    reps, cell_to_basis = basis_frequencies(*images.shape[1:3])
    ids = jnp.asarray(padded_ids(len(reps), basis_chunk))
    counts = basis_counts(logits_fn, images, labels, eps, ids, key=key, mask=mask, basis_chunk=basis_chunk)
    return counts[:len(reps)][jnp.asarray(cell_to_basis)]


def to_map(counts_per_basis, height: int, width: int) -> np.ndarray:
    """Per-basis values -> the centred [H, W] map (each frequency and its conjugate share one)."""
    return np.asarray(counts_per_basis)[basis_frequencies(height, width)[1]]


def band_means(error_map, radius: float, *, inclusive: bool = True) -> Tuple[float, float]:
    """(mean inside, mean outside) the centred disk of `radius`: the heat map in the paper's
    LFC / HFC bands."""
    error_map = np.asarray(error_map, np.float64)
    inside = np.asarray(frequency.radial_mask(*error_map.shape, radius, inclusive=inclusive)) > 0
    outside = ~inside
    return (float(error_map[inside].mean()) if inside.any() else float("nan"),
            float(error_map[outside].mean()) if outside.any() else float("nan"))
