"""Auto-PGD (Croce & Hein 2020), L-infinity, with its step-size checkpoints; the loop state
is a NamedTuple (`ApgdState`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfcjax import backend
from hfcjax.attacks import core
from hfcjax.errors import UserError


def apgd_checkpoints(steps: int) -> np.ndarray:
    """The iterations at which APGD may halve its step: w_j = ceil(p_j * steps) with p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return np.unique(np.ceil(np.asarray(p[:-1]) * steps).astype(int))


class ApgdState(NamedTuple):
    """APGD's loop state, per example: the iterate and the one before (momentum), its
    gradient and loss, the step size, the best point so far (with its loss and gradient),
    and what the next checkpoint compares: loss increases since the last checkpoint, and the
    step size and best loss at the last checkpoint."""

    x: jnp.ndarray
    x_prev: jnp.ndarray
    grad: jnp.ndarray
    loss: jnp.ndarray
    eta: jnp.ndarray
    best_x: jnp.ndarray
    best_loss: jnp.ndarray
    best_grad: jnp.ndarray
    increases: jnp.ndarray
    ckpt_eta: jnp.ndarray
    ckpt_best: jnp.ndarray


def apgd(logits_fn: core.LogitsFn, images, labels, eps, *, steps: int = 100, loss: str = "ce", key=None,
         momentum: float = 0.75, rho: float = 0.75, unroll: int | bool | None = None):
    """Auto-PGD (Croce & Hein 2020), L-infinity: PGD with momentum whose step size starts at
    2 eps and is halved at the checkpoints (`apgd_checkpoints`) where fewer than `rho` of the
    steps since the last one raised the loss, or where neither the step nor the best loss
    changed; after a halving it restarts from the best point. Returns the per-example point
    of highest loss (`loss` "ce" or "dlr"). With `key`, starts uniformly in the eps-ball."""
    core.check_inputs(logits_fn, images, labels, eps)
    if loss not in core.LOSSES:
        raise UserError(f"unknown APGD loss {loss!r}; choose one of {core.LOSSES}.")
    if steps < 1:
        raise UserError(f"APGD needs steps >= 1, got {steps}.")
    if loss == "dlr":
        classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(jnp.shape(images), jnp.result_type(images))).shape[-1]
        if classes < 3:
            raise UserError(f"the DLR loss needs at least 3 classes, the model has {classes}; use loss='ce'.")
    unroll = backend.pgd_unroll() if unroll is None else unroll
    per_example = (lambda z: core.dlr_loss(logits_fn(z), labels)) if loss == "dlr" else (
        lambda z: optax.softmax_cross_entropy_with_integer_labels(logits_fn(z), labels))

    def loss_and_grad(z):
        (_, losses), grad = jax.value_and_grad(lambda q: (jnp.sum(per_example(q)), per_example(q)),
                                               has_aux=True)(z)
        return losses, grad

    x0 = images
    if key is not None:
        x0 = core.project_linf(images + jax.random.uniform(key, images.shape, images.dtype, -eps, eps), images, eps)
    state = _apgd_start(loss_and_grad, x0, images, eps)
    step = _apgd_step(loss_and_grad, images, eps, steps, momentum, rho)
    return jax.lax.fori_loop(1, steps, step, state, unroll=unroll).best_x


def _per_example(v, ndim: int):
    """A per-example [B] array shaped to broadcast against images of rank `ndim`."""
    return v.reshape((-1,) + (1,) * (ndim - 1))


def _apgd_start(loss_and_grad, x0, images, eps) -> ApgdState:
    """The state after APGD's first step (of size 2 eps) from `x0`."""
    eta0 = jnp.full(images.shape[0], 2.0, images.dtype) * eps
    loss0, grad0 = loss_and_grad(x0)
    x1 = core.project_linf(x0 + _per_example(eta0, images.ndim) * jnp.sign(grad0), images, eps)
    loss1, grad1 = loss_and_grad(x1)
    better = _per_example(loss1 > loss0, images.ndim)
    best = jnp.maximum(loss0, loss1)
    return ApgdState(x=x1, x_prev=x0, grad=grad1, loss=loss1, eta=eta0, best_x=jnp.where(better, x1, x0),
                     best_loss=best, best_grad=jnp.where(better, grad1, grad0),
                     increases=(loss1 > loss0).astype(jnp.int32), ckpt_eta=eta0, ckpt_best=best)


def _apgd_step(loss_and_grad, images, eps, steps: int, momentum: float, rho: float):
    """APGD's step k: momentum step, best point, and at checkpoints the step-size halving."""
    checkpoints = apgd_checkpoints(steps)
    is_checkpoint = np.zeros(steps + 1, bool)
    is_checkpoint[checkpoints[1:]] = True
    since = np.zeros(steps + 1, np.int32)  # steps since the previous checkpoint, at each checkpoint
    since[checkpoints[1:]] = np.diff(checkpoints)
    each = lambda v: _per_example(v, images.ndim)

    def step(k, s: ApgdState) -> ApgdState:
        z = core.project_linf(s.x + each(s.eta) * jnp.sign(s.grad), images, eps)
        alpha = jnp.where(k == 1, 1.0, momentum)
        x_new = core.project_linf(s.x + alpha * (z - s.x) + (1 - alpha) * (s.x - s.x_prev), images, eps)
        loss_new, grad_new = loss_and_grad(x_new)
        improved = loss_new > s.best_loss
        best_x = jnp.where(each(improved), x_new, s.best_x)
        best_grad = jnp.where(each(improved), grad_new, s.best_grad)
        best_loss = jnp.maximum(loss_new, s.best_loss)
        increases = s.increases + (loss_new > s.loss).astype(jnp.int32)
        at = jnp.asarray(is_checkpoint)[k + 1]
        few_increases = increases < rho * jnp.asarray(since)[k + 1]
        stalled = (s.ckpt_eta == s.eta) & (s.ckpt_best == best_loss)
        halve = at & (few_increases | stalled)
        return ApgdState(
            x=jnp.where(each(halve), best_x, x_new), x_prev=jnp.where(each(halve), best_x, s.x),
            grad=jnp.where(each(halve), best_grad, grad_new), loss=jnp.where(halve, best_loss, loss_new),
            eta=jnp.where(halve, s.eta / 2, s.eta), best_x=best_x, best_loss=best_loss, best_grad=best_grad,
            increases=jnp.where(at, 0, increases), ckpt_eta=jnp.where(at, s.eta, s.ckpt_eta),
            ckpt_best=jnp.where(at, best_loss, s.ckpt_best))

    return step
