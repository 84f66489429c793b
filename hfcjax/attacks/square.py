"""The Square attack (Andriushchenko et al. 2020): L-infinity, gradient-free."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax.attacks import core
from hfcjax.errors import UserError


def square(
    logits_fn: core.LogitsFn,
    images,
    labels,
    eps,
    *,
    key: jax.Array,
    queries: int = 200,
    p_init: float = 0.1,
):
    """Square attack (Andriushchenko et al., 2020), L-infinity, gradient-free.

    Starts from vertical stripes of +-eps, then per query proposes a random square of
    +-eps (one sign per channel) and keeps it where the core.margin loss drops. Uses only
    logits, so it is the referee for gradient masking: a model that resists PGD but not
    this attack masks its gradients. The square side shrinks on the schedule of the paper.
    """
    core.check_inputs(logits_fn, images, labels, eps, p_init=p_init)
    if isinstance(queries, bool) or not isinstance(queries, (int, np.integer)) or queries < 0:
        raise UserError(f"queries must be an integer >= 0, got {queries!r}.")
    n, height, width, channels = images.shape
    key, init_key = jax.random.split(key)
    stripes = jax.random.choice(init_key, jnp.array([-1.0, 1.0]), (n, 1, width, channels))
    x = core.project_linf(images + eps * stripes, images, eps)
    best = core.margin(logits_fn(x), labels)

    def p_schedule(i):
        fractions = jnp.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]) * queries / 10000
        halvings = jnp.sum(i >= fractions)
        return p_init / 2.0 ** halvings

    def body(i, carry):
        x, best, key = carry
        key, k_pos, k_sign = jax.random.split(key, 3)
        side = jnp.clip(jnp.round(jnp.sqrt(p_schedule(i) * height * width)), 1, min(height, width)).astype(jnp.int32)
        pos = jax.random.uniform(k_pos, (n, 2))
        top = jnp.floor(pos[:, 0] * (height - side + 1)).astype(jnp.int32)
        left = jnp.floor(pos[:, 1] * (width - side + 1)).astype(jnp.int32)
        rows = jnp.arange(height)[None, :, None]
        cols = jnp.arange(width)[None, None, :]
        inside = ((rows >= top[:, None, None]) & (rows < (top + side)[:, None, None])
                  & (cols >= left[:, None, None]) & (cols < (left + side)[:, None, None]))
        signs = jax.random.choice(k_sign, jnp.array([-1.0, 1.0]), (n, 1, 1, channels))
        candidate = jnp.where(inside[..., None], core.project_linf(images + eps * signs, images, eps), x)
        loss = core.margin(logits_fn(candidate), labels)
        improved = (loss < best) & (best > 0)
        x = jnp.where(improved[:, None, None, None], candidate, x)
        return x, jnp.where(improved, loss, best), key

    x, _, _ = jax.lax.fori_loop(0, queries, body, (x, best, key))
    return x
