"""What every attack shares: the logits-function contract and its input checks, the
input gradient, the L-inf projection, norms, frequency bands of a perturbation, and the
losses (cross-entropy, margin, DLR)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfcjax import backend, frequency
from hfcjax.errors import UserError

backend.canonical_conv_gradients()  # every attack differentiates a model: its convolutions' fast path on a CPU

LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def check_inputs(logits_fn: LogitsFn, images, labels, eps=0.0, **positive) -> None:
    """Raises UserError for labels that are not one per image, a concrete eps < 0 or not
    finite, a concrete value of `positive` (name=value: step sizes) that is not > 0,
    concrete images outside [0, 1], or concrete labels outside the logits' classes."""
    if not frequency.is_traced(eps):
        value = np.asarray(eps, np.float64)
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise UserError(f"eps must be a finite number >= 0, got {eps!r}.")
    for name, v in positive.items():
        if not frequency.is_traced(v) and not np.all(np.asarray(v, np.float64) > 0):
            raise UserError(f"{name} must be > 0, got {v!r}.")
    if not frequency.is_traced(images) and np.size(images):
        values = np.asarray(images)
        low, high = float(values.min()), float(values.max())
        if not (0.0 <= low and high <= 1.0):
            raise UserError(f"images must lie in [0, 1] for the attacks (eps is in those units); got values from "
                            f"{low:g} to {high:g}. Divide uint8 pixels by 255; a model that wants another range "
                            "normalises inside (external.Preprocess, --mean/--std).")
    if jnp.ndim(labels) != 1 or jnp.shape(labels)[0] != jnp.shape(images)[0]:
        raise UserError(f"labels must be one integer per image, shape [{jnp.shape(images)[0]}]; "
                         f"got shape {tuple(jnp.shape(labels))}.")
    if not frequency.is_traced(labels) and not frequency.is_traced(images):
        classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(jnp.shape(images), jnp.result_type(images))).shape[-1]
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= classes):
            raise UserError(f"labels must lie in [0, {classes}) for a model with {classes} outputs; "
                             f"got values from {values.min()} to {values.max()}.")


def loss_sum(logits_fn: LogitsFn, images, labels):
    logits = logits_fn(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


def input_gradient(logits_fn: LogitsFn, images, labels):
    """Gradient of the summed cross-entropy with respect to the images."""
    return jax.grad(loss_sum, argnums=1)(logits_fn, images, labels)


def project_linf(x, images, eps):
    """Clips `x` into the eps-ball around `images`, then into [0, 1]."""
    return jnp.clip(jnp.clip(x, images - eps, images + eps), 0.0, 1.0)


class AttackResult(NamedTuple):
    """What an attack with AutoAttack's rule returns, per example: `adv` (the first
    misclassified iterate where one was found, else the point of highest loss), `success`
    (some iterate was misclassified: the image is broken) and the highest `loss` reached."""

    adv: jnp.ndarray
    success: jnp.ndarray
    loss: jnp.ndarray


def keep_first_success(first: AttackResult, then: AttackResult) -> AttackResult:
    """Per example: `first` where it succeeded, else `then` where it did or reached a higher loss."""
    take = ~first.success & (then.success | (then.loss > first.loss))
    each = take.reshape((-1,) + (1,) * (first.adv.ndim - 1))
    return AttackResult(jnp.where(each, then.adv, first.adv), first.success | then.success,
                        jnp.where(take, then.loss, first.loss))


def over_targets(logits_fn: LogitsFn, images, count: int, run: Callable) -> AttackResult:
    """AutoAttack's targeted loop: ``run(targets, rank)`` towards each of the `count` classes
    the clean logits rank highest after the first (at most classes - 1), one after another;
    per example the first success is kept, and a run is skipped once every image is broken.
    One loop over the ranks (`rank` is traced): the attack compiles once, not once per target."""
    classes = num_classes(logits_fn, images)
    order = jnp.argsort(logits_fn(images), axis=-1)
    n = images.shape[0]
    none = AttackResult(images, jnp.zeros(n, bool), jnp.full(n, -jnp.inf, images.dtype))

    def body(rank, done: AttackResult) -> AttackResult:
        attempt = lambda: run(order[:, classes - rank], rank)
        return keep_first_success(done, jax.lax.cond(jnp.all(done.success), lambda: done, attempt))

    return jax.lax.fori_loop(2, min(count, classes - 1) + 2, body, none)


class Eot(NamedTuple):
    """Expectation over transformation (Athalye et al. 2018) for a randomized model, as
    AutoAttack's APGD has it (`eot_iter`; its rand version: 20): the logits function takes
    ``(images, key)``; each gradient is the mean over `draws` passes with fresh keys drawn
    from `key` and the step, and the loss and the misclassification check are the last
    pass's."""

    draws: int
    key: jax.Array


def eot_value_and_grad(total: Callable, z, eot: Eot, step):
    """``(aux, gradient)`` of ``total(z, key) -> (sum, aux)``: `aux` of the last of
    `eot.draws` passes, the gradient their mean; the keys: `eot.key` folded with `step`, split
    per pass. One pass at a time (a scan): memory as one pass's."""
    grad_of = jax.value_and_grad(total, has_aux=True)

    def one(grad_sum, key):
        (_, aux), grad = grad_of(z, key)
        return grad_sum + grad, aux

    keys = jax.random.split(jax.random.fold_in(eot.key, step), eot.draws)
    grad_sum, auxes = jax.lax.scan(one, jnp.zeros_like(z), keys)
    return jax.tree.map(lambda a: a[-1], auxes), grad_sum / eot.draws


class RandomizedApply:
    """A randomized model (a random defence): ``(variables, images, key=None) -> logits``,
    its randomness drawn from `key`. Without a key, one fixed draw (key 0): every analysis
    but AutoAttack's EOT sees one deterministic model. `apply(variables, images, key)` is
    the model's own function."""

    def __init__(self, apply: Callable):
        self.apply = apply

    def __call__(self, variables, images, key=None):
        return self.apply(variables, images, jax.random.key(0) if key is None else key)


NORMS = ("linf", "l2")
BANDS = ("low", "high")


def l2_norm(v):
    """Per-example L2 norm, shaped to broadcast against `v`."""
    return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def band_projector(band, image_shape) -> Callable:
    """delta -> its LFC (``band=("low", r)``) or HFC (``("high", r)``) at radius r (an
    orthogonal projection: `frequency.split` is linear); identity for ``band=None``."""
    if band is None:
        return lambda delta: delta
    kind, radius = band
    if kind not in BANDS:
        raise UserError(f"unknown band {kind!r}; choose one of {BANDS} (with a radius), or None.")
    height, width = image_shape[-3:-1]
    largest = float(np.sqrt((height // 2) ** 2 + (width // 2) ** 2))
    if not frequency.is_traced(radius) and not 0 <= float(radius) < largest:
        raise UserError(f"band radius must lie in [0, {largest:.2f}) for {height}x{width} images (beyond it the "
                         f"HFC is empty), got {radius!r}.")
    index = BANDS.index(kind)
    return lambda delta: frequency.split(delta, radius)[index]


def band_leak(delta, band) -> jnp.ndarray:
    """Per example, the fraction of the perturbation's energy outside `band`:
    ||delta - P(delta)||^2 / ||delta||^2 (0 for a perturbation inside the band or zero)."""
    inside = band_projector(band, delta.shape)(delta)
    total = jnp.sum(delta * delta, axis=tuple(range(1, delta.ndim)))
    out = jnp.sum((delta - inside) ** 2, axis=tuple(range(1, delta.ndim)))
    return jnp.where(total > 0, out / jnp.where(total > 0, total, 1.0), 0.0)


def per_example_loss(logits_fn: LogitsFn, images, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(images), labels)


def margin(logits, labels):
    """Correct-class logit minus the best other logit (< 0 means misclassified)."""
    correct = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return correct - others.max(axis=-1)




LOSSES = ("ce", "dlr")  # untargeted: the loss rises as the true class loses
TARGETED_LOSSES = ("ce_targeted", "dlr_targeted")  # the loss rises as the target class wins


def dlr_loss(logits, labels):
    """Difference of logits ratio (Croce & Hein 2020), per example: -(z_y - max_{i != y} z_i)
    / (z_pi1 - z_pi3 + 1e-12), with z sorted in decreasing order. Shift- and scale-invariant;
    needs at least 3 classes. > 0 means misclassified."""
    top3 = jax.lax.top_k(logits, 3)[0]
    return -margin(logits, labels) / (top3[:, 0] - top3[:, 2] + 1e-12)


def dlr_targeted_loss(logits, labels, targets):
    """Targeted DLR (Croce & Hein 2020, AutoAttack's APGD-T), per example: -(z_y - z_t) /
    (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), z sorted in decreasing order; needs 4+ classes."""
    top4 = jax.lax.top_k(logits, 4)[0]
    z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return -(z_y - z_t) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + 1e-12)


def attack_loss(name: str, logits, labels, targets=None):
    """Per-example loss an attack ascends: ce, dlr (untargeted) or ce_targeted, dlr_targeted."""
    if name == "ce":
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if name == "dlr":
        return dlr_loss(logits, labels)
    if name == "ce_targeted":
        return -optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if name == "dlr_targeted":
        return dlr_targeted_loss(logits, labels, targets)
    raise UserError(f"unknown attack loss {name!r}; choose one of {LOSSES + TARGETED_LOSSES}.")


def num_classes(logits_fn: LogitsFn, images) -> int:
    return jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(jnp.shape(images), jnp.result_type(images))).shape[-1]
