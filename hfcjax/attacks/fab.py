"""FAB (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack"), L-infinity and L2, untargeted and targeted (FAB-T, AutoAttack's).

Each step linearises the decision boundary between the true class and one other class
(the closest one, or the target), projects both the current point and the original image
onto that hyperplane (inside the [0, 1] box), takes a convex combination biased towards
the original image, overshoots slightly (`eta`) and, once a point is adversarial, keeps the
smallest such perturbation and steps back towards the image (`beta`). The projections
solve min ||d|| s.t. w.(x + d) = b, 0 <= x + d <= 1 exactly up to a bisection on one scalar
(the problem's dual variable), so they vectorise with vmap.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hfcjax.attacks import core
from hfcjax.errors import UserError

BISECTION_STEPS = 32  # float32 resolution: linf halves [0, 1] to 2e-10; l2 halves log(top / 1e-30) to 1 + 2e-8


def project_hyperplane(point, w, b, norm: str):
    """The smallest `d` (L-inf or L2) with ``w . (point + d) = b`` and point + d in [0, 1]
    (flat vectors of one example); where the box makes the plane unreachable, the move that
    gets closest. `d_i(s) = clip(s * dir_i, -point_i, 1 - point_i)` for a scalar s >= 0
    (dir = sign(w) sign(c) in L-inf, w sign(c) in L2), whose effect w.d(s) grows with s."""
    c = b - jnp.dot(w, point)
    sign = jnp.where(c >= 0, 1.0, -1.0)
    direction = jnp.sign(w) * sign if norm == "linf" else w * sign
    low, high = -point, 1.0 - point
    move = lambda s: jnp.clip(s * direction, low, high)
    reach = lambda s: jnp.dot(w, move(s)) * sign  # >= 0, non-decreasing in s
    # Largest useful s: every coordinate at its box bound.
    top = 1.0 if norm == "linf" else jnp.max(1.0 / jnp.maximum(jnp.abs(w), 1e-12))
    target = jnp.abs(c)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi) if norm == "linf" else jnp.sqrt(jnp.maximum(lo, 1e-30) * hi)
        enough = reach(mid) >= target
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    lo0 = jnp.asarray(0.0, point.dtype) if norm == "linf" else jnp.asarray(1e-30, point.dtype)
    _, hi = jax.lax.fori_loop(0, BISECTION_STEPS, halve, (lo0, jnp.asarray(top, point.dtype)))
    return jnp.where(target > 0, move(hi), jnp.zeros_like(point))


class _FabState(NamedTuple):
    x: jnp.ndarray  # current point
    adv: jnp.ndarray  # smallest adversarial point so far
    size: jnp.ndarray  # its perturbation norm (inf: none yet)


def fab(logits_fn: core.LogitsFn, images, labels, eps, *, norm: str = "linf", steps: int = 100, targets=None,
        key=None, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> core.AttackResult:
    """FAB from the image itself (or, with `key`, a random start within eps / 2); `targets`
    (a class per image) makes it FAB-T's single run. Returns `core.AttackResult`: the
    smallest adversarial point found, success where its `norm` is within `eps`, and
    loss = -that norm."""
    core.check_inputs(logits_fn, images, labels, eps)
    if norm not in core.NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of {core.NORMS}.")
    if steps < 1:
        raise UserError(f"FAB needs steps >= 1, got {steps}.")
    n = images.shape[0]
    flat = lambda v: v.reshape(n, -1)
    each = lambda v: v.reshape((-1,) + (1,) * (images.ndim - 1))
    size_of = ((lambda d: jnp.max(jnp.abs(flat(d)), -1)) if norm == "linf"
               else (lambda d: jnp.sqrt(jnp.sum(flat(d) ** 2, -1))))
    boundary = _targeted_boundary if targets is not None else _closest_boundary
    project = jax.vmap(functools.partial(project_hyperplane, norm=norm))

    def step(_, s: _FabState) -> _FabState:
        df, dg = boundary(logits_fn, s.x, labels, targets, norm)  # f_other - f_true and its gradient
        w = flat(dg)
        b = -df + jnp.sum(w * flat(s.x), -1)
        d1 = project(flat(s.x), w, b).reshape(images.shape)
        d2 = project(flat(images), w, b).reshape(images.shape)
        a1, a2 = jnp.maximum(size_of(d1), 1e-8), jnp.maximum(size_of(d2), 1e-8)
        alpha = each(jnp.clip(a1 / (a1 + a2), 0.0, alpha_max))
        x = jnp.clip((s.x + eta * d1) * (1 - alpha) + (images + eta * d2) * alpha, 0.0, 1.0)
        wrong = jnp.argmax(logits_fn(x), -1) != labels
        size = size_of(x - images)
        better = wrong & (size < s.size)
        adv = jnp.where(each(better), x, s.adv)
        x = jnp.where(each(wrong), images + (x - images) * beta, x)
        return _FabState(x, adv, jnp.where(better, size, s.size))

    x0 = images
    if key is not None:
        noise = (jax.random.uniform(key, images.shape, images.dtype, -1.0, 1.0) if norm == "linf"
                 else jax.random.normal(key, images.shape, images.dtype))
        scale = size_of(noise)
        x0 = jnp.clip(images + each(0.5 * eps / jnp.maximum(scale, 1e-12)) * noise, 0.0, 1.0)
    init = _FabState(x0, images, jnp.full((n,), jnp.inf, images.dtype))
    final = jax.lax.fori_loop(0, steps, step, init)
    success = final.size <= eps * (1 + 1e-6)
    return core.AttackResult(jnp.where(each(success), final.adv, images), success, -final.size)


def fab_targeted(logits_fn: core.LogitsFn, images, labels, eps, *, targets: int = 9, norm: str = "linf",
                 steps: int = 100, key=None, **kw) -> core.AttackResult:
    """FAB-T (AutoAttack): `fab` towards each of the `targets` classes the clean logits rank
    highest after the first, one after another; per example the first success is kept, and a
    run is skipped once every image is broken."""
    return core.over_targets(logits_fn, images, targets, lambda target, rank: fab(
        logits_fn, images, labels, eps, norm=norm, steps=steps, targets=target,
        key=None if key is None else jax.random.fold_in(key, rank), **kw))


def _targeted_boundary(logits_fn, x, labels, targets, norm):
    """(f_t - f_y, its gradient) for the target class of each example."""
    def diff(z):
        logits = logits_fn(z)
        pick = lambda c: jnp.take_along_axis(logits, c[:, None], axis=-1)[:, 0]
        return pick(targets) - pick(labels)

    values, pullback = jax.vjp(diff, x)
    return values, pullback(jnp.ones_like(values))[0]


def _closest_boundary(logits_fn, x, labels, targets, norm):
    """(f_k - f_y, its gradient) for the class k whose linearised boundary is nearest."""
    del targets
    n = x.shape[0]
    logits = logits_fn(x)
    jac = jax.vmap(jax.jacrev(lambda z: logits_fn(z[None])[0]))(x)  # [B, C, ...]
    true = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    df = logits - true  # [B, C]
    dg = jac - jnp.take_along_axis(jac, labels.reshape((n, 1) + (1,) * (jac.ndim - 2)), axis=1)
    dual = jnp.sum(jnp.abs(dg.reshape(n, df.shape[1], -1)), -1) if norm == "linf" else jnp.sqrt(
        jnp.sum(dg.reshape(n, df.shape[1], -1) ** 2, -1))
    dist = jnp.abs(df) / (dual + 1e-12)
    dist = jnp.where(jax.nn.one_hot(labels, df.shape[1], dtype=bool), jnp.inf, dist)
    k = jnp.argmin(dist, -1)
    return (jnp.take_along_axis(df, k[:, None], axis=-1)[:, 0],
            jnp.take_along_axis(dg, k.reshape((n, 1) + (1,) * (dg.ndim - 2)), axis=1)[:, 0])
