"""Frequency split: jitted hfcjax.frequency.split vs the authors' per-image numpy loop."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import best_time, cifar_images, on_gpu
from hfcjax import backend, frequency


def numpy_loop(images, radius):
    """The authors' style: per image and channel, fft2, fftshift, mask, inverse, real part."""
    n, h, w, c = images.shape
    i = np.arange(h)[:, None] - h // 2
    j = np.arange(w)[None, :] - w // 2
    mask = (i**2 + j**2) <= radius**2
    low = np.empty_like(images)
    high = np.empty_like(images)
    for k in range(n):
        for ch in range(c):
            z = np.fft.fftshift(np.fft.fft2(images[k, :, :, ch]))
            low[k, :, :, ch] = np.real(np.fft.ifft2(np.fft.ifftshift(z * mask)))
            high[k, :, :, ch] = np.real(np.fft.ifft2(np.fft.ifftshift(z * ~mask)))
    return low, high


def run(n: int = 0, radius: float = 8.0):
    """`n` images (default: 10k on a CPU; 50k, the whole CIFAR-10 training set, on a GPU, where
    10k images (123 MB) are too few to measure bandwidth)."""
    n = n or (50_000 if on_gpu() else 10_000)
    x_np = cifar_images(n).astype(np.float32) / 255
    loop_n = 1000  # the loop is timed on a slice and scaled (it is linear in N)
    t_loop = best_time(lambda: numpy_loop(x_np[:loop_n], radius), reps=3) * n / loop_n
    x = jax.device_put(x_np)
    r = jnp.float32(radius)
    timed = {}
    for name, fn, args in [
        ("hfcjax split (default: band-limited matmul)", lambda v: frequency.split(v, radius), (x,)),
        ("hfcjax split, rfft2 (traced radius)", lambda v, rr: frequency.split(v, rr), (x, r)),
    ]:
        f = jax.jit(fn)
        timed[name] = best_time(lambda: jax.block_until_ready(f(*args)), reps=10)
    if not on_gpu():  # the same matmul in one pass, to show what the cache-sized blocks buy
        with _blocks_off():
            f = jax.jit(lambda v: frequency.split(v, radius))
            timed["hfcjax split matmul, one pass (no blocks)"] = best_time(lambda: jax.block_until_ready(f(x)), reps=10)
    rows = [(f"split {n // 1000}k CIFAR r={radius:g}: per-image numpy loop", n / t_loop, "img/s", 1.0, "baseline")]
    for name, t in timed.items():
        rows.append((f"split {n // 1000}k CIFAR r={radius:g}: {name}", n / t, "img/s", t_loop / t,
                     "speed-up vs the numpy loop (goal >= 25x CPU)"))
    if on_gpu():
        t_jax = min(timed.values())
        nbytes = x.size * 4
        copy = jax.jit(lambda v: v * 1.0001)
        t_copy = best_time(lambda: jax.block_until_ready(copy(x)), reps=10)
        copy_bw, split_bw = 2 * nbytes / t_copy, 3 * nbytes / t_jax  # read x, write low and high
        rows.append(("split bandwidth (read x, write low+high)", split_bw / 1e9, "GB/s", split_bw / copy_bw,
                     f"fraction of copy bandwidth {copy_bw / 1e9:.0f} GB/s (goal >= 0.5)"))
    return rows


@contextlib.contextmanager
def _blocks_off():
    saved = backend.CPU_SPLIT_BLOCK_BYTES
    backend.CPU_SPLIT_BLOCK_BYTES = 0  # one pass over everything
    try:
        yield
    finally:
        backend.CPU_SPLIT_BLOCK_BYTES = saved
