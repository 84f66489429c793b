"""What every attack shares: the logits-function contract and its input checks, the
input gradient, the L-inf projection, norms, frequency bands of a perturbation, and the
losses (cross-entropy, margin, DLR)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfcjax import frequency
from hfcjax.errors import UserError

LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def check_inputs(logits_fn: LogitsFn, images, labels, eps=0.0) -> None:
    """Raises ValueError for labels that are not one per image, a concrete eps < 0 or not
    finite, or concrete labels outside the logits' classes."""
    if not frequency.is_traced(eps):
        value = np.asarray(eps, np.float64)
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise UserError(f"eps must be a finite number >= 0, got {eps!r}.")
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




LOSSES = ("ce", "dlr")


def dlr_loss(logits, labels):
    """Difference of logits ratio (Croce & Hein 2020), per example: -(z_y - max_{i != y} z_i)
    / (z_pi1 - z_pi3 + 1e-12), with z sorted in decreasing order. Shift- and scale-invariant;
    needs at least 3 classes. > 0 means misclassified."""
    top3 = jax.lax.top_k(logits, 3)[0]
    return -margin(logits, labels) / (top3[:, 0] - top3[:, 2] + 1e-12)
