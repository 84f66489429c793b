"""Accuracy measurements shared by training (per-epoch tracking) and evaluation.

`variant_counts` scores the original images and their LFC and HFC at every radius in
one compiled pass, from uint8 batches and a 0/1 mask for padded rows; `variant_names` and
`svd_names` name the variants (evaluation adds Section 8's SVD split).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from hfcjax import frequency


def to_unit(images_u8):
    """uint8 pixels -> float32 in [0, 1]."""
    return images_u8.astype(jnp.float32) / 255.0


def variant_names(radii: Sequence[float]):
    return ["orig"] + [f"low_r{r:g}" for r in radii] + [f"high_r{r:g}" for r in radii]


def variant_counts(logits_fn, images_u8, labels, mask, radii, *, inclusive: bool = True):
    """Correct counts ``[1 + 2R]``: original, LFC at each radius, HFC at each radius.
    `radii` is an array, so new radii never recompile."""
    x = to_unit(images_u8)
    low, high = jax.vmap(lambda r: frequency.split(x, r, inclusive=inclusive))(radii)

    def correct(v):
        return jnp.sum((jnp.argmax(logits_fn(v), -1) == labels) * mask)

    return map_unrolled(correct, jnp.concatenate([x[None], low, high]))


def map_unrolled(fn, stacked):
    """``lax.map(fn, stacked)`` with the loop unrolled. On CPU, a rolled loop over nine ResNet-18
    forward passes whose parameters are jit arguments ran 1.25x slower than the same passes
    unrolled (benchmarks/bench_attacks.py's evaluation row; the cause inside XLA:CPU's loop is
    not isolated). The number of variants is small (1 + 2R [+ 2K]),
    so unrolling costs only compile time (4.2 s instead of 2.9 s for ResNet-18 on CPU)."""
    return jax.lax.scan(lambda carry, v: (carry, fn(v)), None, stacked, unroll=True)[1]


def compiler_options():
    """XLA options for compiling evaluation's attack grid and prediction report: on CPU the
    memory-optimized scheduler. Their unrolled, independent passes (PGD steps for several eps,
    restarts, 17 variants) otherwise get buffers for many passes at once: the Table-2 grid of
    the MNIST CNN at batch 200 with unrolled PGD needed 25.8 GB of temporaries with the default
    scheduler and 0.5 GB with this one. The per-epoch `variant_counts` keeps the default: this
    scheduler made its nine ResNet-18 passes 1.25-1.33x the time of plain forwards (1.01-1.04x
    with the default, at 4.7 GB instead of 1.3 GB of temporaries for batch 500)."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def svd_names(ranks: Sequence[int]):
    return [f"dominant_k{k}" for k in ranks] + [f"trailing_k{k}" for k in ranks]
