"""DeepFool (Moosavi-Dezfooli et al. 2016), L2, multi-class, optionally restricted to a
linear subspace (Ortiz-Jimenez et al. 2020's margins along DCT subspaces).

Each step linearises every class's logit difference to the true class at the current point,
projects the gradients onto the subspace (`project`, an orthogonal projector; identity:
the whole input space), and moves to the nearest linearised boundary (plus a tiny 1e-4 in
logit units, so the step crosses it). The point tested is ``images + (1 + overshoot) * r``;
an example stops once it is misclassified there. No [0, 1] box: the result is a distance to
the decision boundary (a margin), not an image to show the model.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from hfcjax import backend
from hfcjax.attacks import core
from hfcjax.errors import UserError


class DeepFoolResult(NamedTuple):
    """`delta`: the perturbation ``(1 + overshoot) * r`` (``[B, ...]``); `crossed`: whether
    ``images + delta`` is misclassified; `norm`: its L2 norm, inf where it did not cross."""

    delta: jnp.ndarray
    crossed: jnp.ndarray
    norm: jnp.ndarray


def deepfool(logits_fn: core.LogitsFn, images, labels, *, project: Optional[Callable] = None, steps: int = 50,
             overshoot: float = 0.02, candidates: Optional[int] = None) -> DeepFoolResult:
    """DeepFool from `images` (any real values) with their true `labels`; `project` maps a
    batch of gradients ``[K, ...]`` to their projections onto the subspace. The boundaries
    looked at are those of the `candidates` other classes the clean logits rank highest (None:
    every other class; DeepFool's own speed-up), one backward pass each per step. Examples
    already misclassified stay at delta 0 (crossed, norm 0). At most `steps` linearisations
    per example; the loop ends as soon as every example crossed."""
    if steps < 1:
        raise UserError(f"DeepFool needs steps >= 1, got {steps}.")
    if not overshoot >= 0:
        raise UserError(f"overshoot must be >= 0, got {overshoot!r}.")
    project = project or (lambda v: v)
    n = images.shape[0]
    flat = lambda v: v.reshape(v.shape[:-images.ndim + 1] + (-1,))
    pick = lambda v, c: jnp.take_along_axis(v, c[:, None], axis=-1)[:, 0]
    clean = logits_fn(images)
    classes = clean.shape[-1]
    count = classes - 1 if candidates is None else max(1, min(int(candidates), classes - 1))
    truth = jax.nn.one_hot(labels, classes, dtype=clean.dtype)
    others = jax.lax.top_k(jnp.where(truth > 0, -jnp.inf, clean), count)[1]  # [B, K]
    cotangents = jax.nn.one_hot(others, classes, dtype=clean.dtype) - truth[:, None]  # d(f_k - f_y)

    def linearise(point):
        logits, pullback = jax.vjp(logits_fn, point)
        w = jax.vmap(lambda c: pullback(c)[0], in_axes=1)(cotangents)  # [K, B, ...]: gradients of f_k - f_y
        w = jnp.moveaxis(flat(project(w.reshape((-1,) + images.shape[1:])).reshape(w.shape)), 0, 1)  # [B, K, D]
        diff = jnp.take_along_axis(logits, others, -1) - pick(logits, labels)[:, None]  # f_k - f_y
        size = jnp.sqrt(jnp.sum(w ** 2, -1))
        distance = jnp.where(size > 0, jnp.abs(diff) / jnp.maximum(size, 1e-30), jnp.inf)
        k = jnp.argmin(distance, -1)
        wk, sk = jnp.take_along_axis(w, k[:, None, None], axis=1)[:, 0], pick(size, k)
        step = ((pick(jnp.abs(diff), k) + 1e-4) / jnp.maximum(sk, 1e-30) ** 2)[:, None] * wk
        right = jnp.argmax(logits, -1) == labels
        return right & jnp.isfinite(pick(distance, k)), step.reshape(images.shape)

    def cond(state):
        i, _, active = state
        return (i < steps) & jnp.any(active)

    def body(state):
        i, r, _ = state
        active, step = linearise(images + (1 + overshoot) * r)
        return i + 1, r + jnp.where(active.reshape((n,) + (1,) * (images.ndim - 1)), step, 0.0), active

    state = (jnp.int32(0), jnp.zeros_like(images), jnp.ones((n,), bool))
    if backend.attack_unroll(steps) is True:  # unrolled (backend's choice): every step, no early end
        for _ in range(steps):
            state = body(state)
    else:
        state = jax.lax.while_loop(cond, body, state)
    r = state[1]
    delta = (1 + overshoot) * r
    crossed = jnp.argmax(logits_fn(images + delta), -1) != labels
    norm = jnp.sqrt(jnp.sum(flat(delta) ** 2, -1))
    return DeepFoolResult(delta, crossed, jnp.where(crossed, norm, jnp.inf))
