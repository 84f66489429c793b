"""The model variants an evaluation scores (Table 2's rows): the first-layer kernels
smoothed with every rho of Eq. 3 and, for models with BatchNorm, the same with the
statistics re-estimated on training images after smoothing.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import data, measure, models, smoothing
from hfcjax.evaluators import common
from hfcjax.errors import UserError


def model_variants(variables, *, rhos: Sequence[float], layers: Sequence[str] = smoothing.DEFAULT_LAYERS,
                   recalibrate: Optional[Callable[[Dict], Dict]] = None) -> List[common.ModelVariant]:
    """Every rho (names 'rho=R'), then with `recalibrate` (variables -> variables with
    re-estimated BatchNorm statistics) the same again ('rho=R (BN re-estimated)'). A model
    without parameters (a plain logits function) has one variant, rho = 0, as given; rho = 0
    is the identity and needs no selected kernel (then the variant has no kernel to draw)."""
    if "params" not in variables:
        return [common.ModelVariant("rho=0", 0.0, False, variables)]
    try:
        smoothing.selected_paths(variables["params"], layers)  # a clear error before any work
        selected = True
    except UserError:
        if any(float(r) > 0 for r in rhos):
            raise
        selected = False
    out = []
    for recal in (False, True) if recalibrate else (False,):
        for rho in rhos:
            current, kernel, rough = variables, None, None
            if selected:
                current = {**variables, "params": smoothing.smooth_params(variables["params"], rho, layers=layers)}
            if recal:
                current = recalibrate(current)
            if selected:
                kernel = np.asarray(jax.device_get(smoothing.first_kernel(current["params"], layers)))
                rough = float(smoothing.roughness(kernel))
            out.append(common.ModelVariant(f"rho={rho:g}" + (" (BN re-estimated)" if recal else ""), float(rho),
                                           recal, current, kernel, rough))
    return out


def make_batch_stats_fn(model):
    """Jitted (params, batch_stats, images_u8) -> this batch's BatchNorm means and variances."""

    @jax.jit
    def batch_stats_of(params, stats, x):
        zeros = jax.tree.map(jnp.zeros_like, stats)
        _, updates = model.apply({"params": params, "batch_stats": zeros}, measure.to_unit(x), train=True,
                                 mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return jax.tree.map(lambda v: v / (1.0 - models.BN_MOMENTUM), updates["batch_stats"])

    return batch_stats_of


def recalibrate_batch_stats(model, variables, images_u8: np.ndarray, batch_size: int = 200, stats_fn=None):
    """Re-estimates BatchNorm statistics on `images_u8` for (e.g. smoothed) parameters:
    the mean over batches of each batch's mean and variance, as used in training mode.
    Pass one `stats_fn` (make_batch_stats_fn) for many calls so it compiles once."""
    batch_stats_of = stats_fn or make_batch_stats_fn(model)
    total, n = None, 0
    for x, _, _ in data.batches(images_u8, np.zeros(len(images_u8), np.int32), batch_size, shuffle=False):
        stats = batch_stats_of(variables["params"], variables["batch_stats"], x)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    if n == 0:
        raise UserError(f"need at least {batch_size} training images to re-estimate BatchNorm statistics.")
    return {**variables, "batch_stats": jax.tree.map(lambda v: v / n, total)}
