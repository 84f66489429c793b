"""Frequency split: jitted hfcjax.frequency.split vs the authors' per-image numpy loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import best_time, cifar_images, on_gpu
from hfcjax import frequency


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


def run(n: int = 10_000, radius: float = 8.0):
    x_np = cifar_images(n).astype(np.float32) / 255
    loop_n = 1000  # the loop is timed on a slice and scaled (it is linear in N)
    t_loop = best_time(lambda: numpy_loop(x_np[:loop_n], radius), reps=3) * n / loop_n
    x = jax.device_put(x_np)
    split = jax.jit(lambda v, r: frequency.split(v, r))
    r = jnp.float32(radius)
    t_fft = best_time(lambda: jax.block_until_ready(split(x, r)), reps=10)
    split_mm = jax.jit(lambda v: frequency.split(v, radius, method="matmul"))
    t_mm = best_time(lambda: jax.block_until_ready(split_mm(x)), reps=10)
    t_jax = min(t_fft, t_mm)
    rows = [("split 10k CIFAR r=8: per-image numpy loop", n / t_loop, "img/s", 1.0, "baseline"),
            ("split 10k CIFAR r=8: hfcjax jit, rfft2 (traced radius)", n / t_fft, "img/s", t_loop / t_fft,
             "speed-up vs the numpy loop (goal >= 25x CPU)"),
            ("split 10k CIFAR r=8: hfcjax jit, band-limited matmul", n / t_mm, "img/s", t_loop / t_mm,
             "speed-up vs the numpy loop (goal >= 25x CPU)")]
    if on_gpu():
        nbytes = x.size * 4
        copy = jax.jit(lambda v: v * 1.0001)
        t_copy = best_time(lambda: jax.block_until_ready(copy(x)), reps=10)
        copy_bw, split_bw = 2 * nbytes / t_copy, 3 * nbytes / t_jax  # read x, write low and high
        rows.append(("split bandwidth (read x, write low+high)", split_bw / 1e9, "GB/s", split_bw / copy_bw,
                     f"fraction of copy bandwidth {copy_bw / 1e9:.0f} GB/s (goal >= 0.5)"))
    return rows
