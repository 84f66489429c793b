"""Auto-PGD (Croce & Hein 2020) with AutoAttack's rules: L-infinity and L2, the CE, DLR and
targeted DLR losses, step-size checkpoints, and per example the first misclassified iterate
(an image counts as broken when any iterate misclassifies it). APGD-T runs over the top
target classes. The loop state is a NamedTuple (`ApgdState`)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

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
    what the next checkpoint compares (loss increases since the last checkpoint, and the
    step size and best loss at the last checkpoint), and the first misclassified iterate
    (`adv`, valid where `fooled`)."""

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
    adv: jnp.ndarray
    fooled: jnp.ndarray


def apgd(logits_fn: core.LogitsFn, images, labels, eps, **kw):
    """The adversarial images of `apgd_run` (first misclassified iterate, else highest loss)."""
    return apgd_run(logits_fn, images, labels, eps, **kw).adv


def apgd_run(logits_fn: core.LogitsFn, images, labels, eps, *, steps: int = 100, loss: str = "ce",
             norm: str = "linf", targets=None, key=None, momentum: float = 0.75, rho: float = 0.75,
             unroll: int | bool | None = None, eot: Optional[core.Eot] = None) -> core.AttackResult:
    """Auto-PGD (Croce & Hein 2020) in `norm` (linf: sign steps, l2: normalised gradient
    steps): PGD with momentum whose step size starts at 2 eps and is halved at the
    checkpoints (`apgd_checkpoints`) where fewer than `rho` of the steps since the last one
    raised the loss, or where neither the step nor the best loss changed; after a halving it
    restarts from the best point. `loss`: ce, dlr, or ce_targeted / dlr_targeted with
    `targets` (class per image). Returns `core.AttackResult`: per example the first iterate
    that misclassifies the true label (AutoAttack's rule), else the point of highest loss,
    and whether one did. With `key`, starts at random in the eps-ball. With `eot`
    (`core.Eot`), `logits_fn` is a randomized model's ``(images, key)`` and every gradient the
    mean over `eot.draws` passes (AutoAttack's rand version)."""
    one_draw = logits_fn if eot is None else (lambda z: logits_fn(z, eot.key))  # shapes and checks
    core.check_inputs(one_draw, images, labels, eps)
    _check(one_draw, images, loss, norm, steps, targets, eot)
    unroll = backend.attack_unroll(steps) if unroll is None else unroll

    def evaluate(z, step):
        def total(q, draw=None):
            logits = logits_fn(q) if eot is None else logits_fn(q, draw)
            losses = core.attack_loss(loss, logits, labels, targets)
            return jnp.sum(losses), (losses, jnp.argmax(logits, -1) != labels)

        if eot is None:
            (_, (losses, wrong)), grad = jax.value_and_grad(total, has_aux=True)(z)
        else:
            (losses, wrong), grad = core.eot_value_and_grad(total, z, eot, step)
        return losses, grad, wrong

    geometry = _Geometry(images, eps, norm)
    x0 = images if key is None else geometry.random_start(key)
    state = _apgd_start(evaluate, geometry, x0)
    state = jax.lax.fori_loop(1, steps, _apgd_step(evaluate, geometry, steps, momentum, rho), state, unroll=unroll)
    each = _per_example(state.fooled, images.ndim)
    return core.AttackResult(jnp.where(each, state.adv, state.best_x), state.fooled, state.best_loss)


def apgd_targeted(logits_fn: core.LogitsFn, images, labels, eps, *, targets: int = 9, steps: int = 100,
                  loss: str = "dlr_targeted", norm: str = "linf", key=None, eot: Optional[core.Eot] = None,
                  **kw) -> core.AttackResult:
    """APGD-T (AutoAttack): `apgd_run` towards each of the `targets` classes the clean logits
    rank highest after the first (2nd, 3rd, ...; at most classes - 1), one after another;
    per example the first success is kept. A run is skipped once every image is broken.
    With `eot`, the ranking is one draw of the randomized model, each run its own keys."""
    one_draw = logits_fn if eot is None else (lambda z: logits_fn(z, eot.key))
    classes = core.num_classes(one_draw, images)
    if loss == "dlr_targeted" and classes < 4:
        raise UserError(f"targeted DLR needs at least 4 classes, the model has {classes}; use loss='ce_targeted'.")
    fold = lambda k, rank: None if k is None else jax.random.fold_in(k, rank)
    return core.over_targets(one_draw, images, targets, lambda target, rank: apgd_run(
        logits_fn, images, labels, eps, steps=steps, loss=loss, norm=norm, targets=target, key=fold(key, rank),
        eot=None if eot is None else eot._replace(key=fold(eot.key, rank)), **kw))


def _check(logits_fn, images, loss: str, norm: str, steps: int, targets, eot=None) -> None:
    if eot is not None and eot.draws < 1:
        raise UserError(f"EOT needs draws >= 1, got {eot.draws!r}.")
    if loss not in core.LOSSES + core.TARGETED_LOSSES:
        raise UserError(f"unknown APGD loss {loss!r}; choose one of {core.LOSSES + core.TARGETED_LOSSES}.")
    if norm not in core.NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of {core.NORMS}.")
    if steps < 1:
        raise UserError(f"APGD needs steps >= 1, got {steps}.")
    if (loss in core.TARGETED_LOSSES) != (targets is not None):
        raise UserError(f"loss {loss!r} {'needs' if targets is None else 'takes no'} targets.")
    need = {"dlr": 3, "dlr_targeted": 4}.get(loss, 0)
    classes = core.num_classes(logits_fn, images)
    if classes < need:
        raise UserError(f"the {loss} loss needs at least {need} classes, the model has {classes}; use a CE loss.")


def _per_example(v, ndim: int):
    """A per-example [B] array shaped to broadcast against images of rank `ndim`."""
    return v.reshape((-1,) + (1,) * (ndim - 1))


class _Geometry:
    """The ball of the attack: its projection, step direction and random start."""

    def __init__(self, images, eps, norm: str):
        self.images, self.eps, self.norm = images, eps, norm

    def project(self, x):
        if self.norm == "linf":
            return core.project_linf(x, self.images, self.eps)
        delta = x - self.images
        return jnp.clip(self.images + delta * jnp.minimum(1.0, self.eps / jnp.maximum(core.l2_norm(delta), 1e-12)),
                        0.0, 1.0)

    def direction(self, grad):
        return jnp.sign(grad) if self.norm == "linf" else grad / jnp.maximum(core.l2_norm(grad), 1e-12)

    def random_start(self, key):
        """AutoAttack's start: L-inf, uniform noise in [-1, 1] scaled per image so that its
        largest entry is eps; L2, on the sphere of radius eps; then clipped to [0, 1]."""
        if self.norm == "linf":
            noise = jax.random.uniform(key, self.images.shape, self.images.dtype, -1.0, 1.0)
            largest = jnp.max(jnp.abs(noise).reshape(noise.shape[0], -1), -1)
            noise = self.eps * noise / _per_example(jnp.maximum(largest, 1e-12), noise.ndim)
        else:
            noise = jax.random.normal(key, self.images.shape, self.images.dtype)
            noise = self.eps * noise / jnp.maximum(core.l2_norm(noise), 1e-12)
        return self.project(self.images + noise)


def _apgd_start(evaluate, geometry: _Geometry, x0) -> ApgdState:
    """The state after APGD's first step (of size 2 eps) from `x0`."""
    images = geometry.images
    eta0 = jnp.full(images.shape[0], 2.0, images.dtype) * geometry.eps
    loss0, grad0, wrong0 = evaluate(x0, 0)
    x1 = geometry.project(x0 + _per_example(eta0, images.ndim) * geometry.direction(grad0))
    loss1, grad1, wrong1 = evaluate(x1, 1)
    better = _per_example(loss1 > loss0, images.ndim)
    best = jnp.maximum(loss0, loss1)
    adv = jnp.where(_per_example(wrong0, images.ndim), x0, x1)
    return ApgdState(x=x1, x_prev=x0, grad=grad1, loss=loss1, eta=eta0, best_x=jnp.where(better, x1, x0),
                     best_loss=best, best_grad=jnp.where(better, grad1, grad0),
                     increases=(loss1 > loss0).astype(jnp.int32), ckpt_eta=eta0, ckpt_best=best,
                     adv=adv, fooled=wrong0 | wrong1)


def _apgd_step(evaluate, geometry: _Geometry, steps: int, momentum: float, rho: float):
    """APGD's step k: momentum step, best point, first misclassified iterate, and at
    checkpoints the step-size halving."""
    checkpoints = apgd_checkpoints(steps)
    is_checkpoint = np.zeros(steps + 1, bool)
    is_checkpoint[checkpoints[1:]] = True
    since = np.zeros(steps + 1, np.int32)  # steps since the previous checkpoint, at each checkpoint
    since[checkpoints[1:]] = np.diff(checkpoints)
    each = lambda v: _per_example(v, geometry.images.ndim)

    def step(k, s: ApgdState) -> ApgdState:
        z = geometry.project(s.x + each(s.eta) * geometry.direction(s.grad))
        alpha = jnp.where(k == 1, 1.0, momentum)
        x_new = geometry.project(s.x + alpha * (z - s.x) + (1 - alpha) * (s.x - s.x_prev))
        loss_new, grad_new, wrong = evaluate(x_new, k + 1)
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
            ckpt_best=jnp.where(at, best_loss, s.ckpt_best),
            adv=jnp.where(each(wrong & ~s.fooled), x_new, s.adv), fooled=s.fooled | wrong)

    return step
