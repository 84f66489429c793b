"""FGSM and PGD (L-inf or L2, band-limited, targeted, random start), and restarts as a
wrapper around any attack (foolbox's `Repeated`)."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from hfcjax import backend
from hfcjax.attacks import core
from hfcjax.errors import UserError


def fgsm(logits_fn: core.LogitsFn, images, labels, eps):
    """Fast gradient sign method: clip01(x + eps * sign(grad))."""
    core.check_inputs(logits_fn, images, labels, eps)
    grad = core.input_gradient(logits_fn, images, labels)
    return core.project_linf(images + eps * jnp.sign(grad), images, eps)


def pgd(logits_fn: core.LogitsFn, images, labels, eps, *, step_size, steps: int, key: Optional[jax.Array] = None,
        unroll: int | bool | None = None, norm: str = "linf", band=None, targeted: bool = False):
    """Projected gradient descent (Madry et al.) on the cross-entropy, in L-inf or L2.

    L-infinity (``norm="linf"``): x <- clip01(clip_eps(x + step_size * sign(grad))). L2
    (``norm="l2"``): the step follows grad / ||grad|| and the perturbation is scaled back
    into the eps-ball. With `band` (``("low", r)`` or ``("high", r)``) every step's
    perturbation is first projected onto the LFC or HFC of radius r, then onto the ball,
    then the image is clipped to [0, 1]: in L2 the band and ball projections commute, so
    only the [0, 1] clip can move energy out of the band; in L-infinity the box clip does
    too. `band_leak` measures it. With `targeted`, `labels` are the target classes and the
    attack descends their cross-entropy.

    With `key` the start is uniform in the eps-ball (random start); restarts are the
    `restarts` wrapper around it. `unroll` is passed to `lax.fori_loop`; the default (None)
    is `backend.pgd_unroll()` (a rolled loop, unless a CPU lacks `backend.canonical_conv_gradients`).
    """
    core.check_inputs(logits_fn, images, labels, eps, step_size=step_size)
    if norm not in core.NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of {core.NORMS}.")
    if steps < 0:
        raise UserError(f"need steps >= 0, got steps={steps}.")
    unroll = backend.pgd_unroll() if unroll is None else unroll
    project = _ball_projector(images, eps, norm, band)
    sign = -1.0 if targeted else 1.0

    def step(_, x):
        grad = sign * core.input_gradient(logits_fn, x, labels)
        direction = jnp.sign(grad) if norm == "linf" else grad / jnp.maximum(core.l2_norm(grad), 1e-12)
        return project(x + step_size * direction)

    x = images if key is None else project(images + _random_start(key, images, eps, norm))
    return jax.lax.fori_loop(0, steps, step, x, unroll=unroll)


def _ball_projector(images, eps, norm: str, band) -> Callable:
    """x -> x with its perturbation from `images` in the band (if any), in the eps-ball, in [0, 1]."""
    if norm == "linf" and band is None:
        return lambda x: core.project_linf(x, images, eps)
    in_band = core.band_projector(band, images.shape)

    def project(x):
        delta = in_band(x - images)
        if norm == "linf":
            delta = jnp.clip(delta, -eps, eps)
        else:
            delta = delta * jnp.minimum(1.0, eps / jnp.maximum(core.l2_norm(delta), 1e-12))
        return jnp.clip(images + delta, 0.0, 1.0)

    return project


def _random_start(key, images, eps, norm: str):
    """A perturbation uniform in the L-inf ball, or of uniform radius and direction in L2."""
    if norm == "linf":
        return jax.random.uniform(key, images.shape, images.dtype, -eps, eps)
    k1, k2 = jax.random.split(key)
    direction = jax.random.normal(k1, images.shape, images.dtype)
    radius = eps * jax.random.uniform(k2, (images.shape[0],) + (1,) * (images.ndim - 1), images.dtype)
    return direction / jnp.maximum(core.l2_norm(direction), 1e-12) * radius


def restarts(attack: Callable, times: int) -> Callable:
    """foolbox's `Repeated`: ``attack(logits_fn, images, labels, eps, key=, **kw)`` run
    `times` times with keys split from `key`, keeping per example the run of highest
    cross-entropy (lowest, for ``targeted=True``); for an attack that returns a
    `core.AttackResult` (`apgd_run`, `apgd_targeted`), the first successful run (AutoAttack's
    rule), else the highest loss. ``times == 1`` is `attack` itself."""
    if times < 1:
        raise UserError(f"need restarts >= 1, got {times}.")

    def repeated(logits_fn: core.LogitsFn, images, labels, eps, *, key: jax.Array, **kw):
        if times == 1:
            return attack(logits_fn, images, labels, eps, key=key, **kw)
        if key is None:
            raise UserError("restarts need a jax.random key (each restart starts at random).")
        sign = -1.0 if kw.get("targeted") else 1.0
        keys = jax.random.split(key, times)
        best = attack(logits_fn, images, labels, eps, key=keys[0], **kw)
        if isinstance(best, core.AttackResult):
            for run_key in keys[1:]:
                best = core.keep_first_success(best, attack(logits_fn, images, labels, eps, key=run_key, **kw))
            return best
        best_loss = sign * core.per_example_loss(logits_fn, best, labels)
        for run_key in keys[1:]:
            x = attack(logits_fn, images, labels, eps, key=run_key, **kw)
            loss = sign * core.per_example_loss(logits_fn, x, labels)
            best = jnp.where((loss > best_loss).reshape((-1,) + (1,) * (x.ndim - 1)), x, best)
            best_loss = jnp.maximum(loss, best_loss)
        return best

    return repeated
