"""L-infinity adversarial attacks as pure, batched, jit/vmap-friendly functions.

Every attack takes ``logits_fn(images) -> logits`` (the model in inference mode, its
state closed over), pixels in [0, 1] and integer labels, and returns adversarial
images in [0, 1] within `eps` of the input. `eps` and `step_size` may be traced
scalars, so one compiled function can sweep several eps values with `jax.vmap`.
Each example's result depends only on that example: the loss is a sum over the
batch, so its gradient for one image ignores the others (as long as `logits_fn` is
per-example, i.e. BatchNorm uses running averages).

Inputs are checked where that is cheap: `labels` must be one integer per image; a concrete
`eps` must be finite and >= 0, and concrete labels must lie in [0, classes) (the number of
classes from the logits' shape). Traced values (inside jit/vmap) are not checked.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfcjax import backend, frequency

LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def check_inputs(logits_fn: LogitsFn, images, labels, eps=0.0) -> None:
    """Raises ValueError for labels that are not one per image, a concrete eps < 0 or not
    finite, or concrete labels outside the logits' classes."""
    if not frequency.is_traced(eps):
        value = np.asarray(eps, np.float64)
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}.")
    if jnp.ndim(labels) != 1 or jnp.shape(labels)[0] != jnp.shape(images)[0]:
        raise ValueError(f"labels must be one integer per image, shape [{jnp.shape(images)[0]}]; "
                         f"got shape {tuple(jnp.shape(labels))}.")
    if not frequency.is_traced(labels) and not frequency.is_traced(images):
        classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(jnp.shape(images), jnp.result_type(images))).shape[-1]
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= classes):
            raise ValueError(f"labels must lie in [0, {classes}) for a model with {classes} outputs; "
                             f"got values from {values.min()} to {values.max()}.")


def _loss_sum(logits_fn: LogitsFn, images, labels):
    logits = logits_fn(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


def input_gradient(logits_fn: LogitsFn, images, labels):
    """Gradient of the summed cross-entropy with respect to the images."""
    return jax.grad(_loss_sum, argnums=1)(logits_fn, images, labels)


def _project(x, images, eps):
    """Clips `x` into the eps-ball around `images`, then into [0, 1]."""
    return jnp.clip(jnp.clip(x, images - eps, images + eps), 0.0, 1.0)


def fgsm(logits_fn: LogitsFn, images, labels, eps):
    """Fast gradient sign method: clip01(x + eps * sign(grad))."""
    check_inputs(logits_fn, images, labels, eps)
    grad = input_gradient(logits_fn, images, labels)
    return _project(images + eps * jnp.sign(grad), images, eps)


NORMS = ("linf", "l2")
BANDS = ("low", "high")


def _norm(v):
    """Per-example L2 norm, shaped to broadcast against `v`."""
    return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def band_projector(band, image_shape) -> Callable:
    """delta -> its LFC (``band=("low", r)``) or HFC (``("high", r)``) at radius r (an
    orthogonal projection: `frequency.split` is linear); identity for ``band=None``."""
    if band is None:
        return lambda delta: delta
    kind, radius = band
    if kind not in BANDS:
        raise ValueError(f"unknown band {kind!r}; choose one of {BANDS} (with a radius), or None.")
    height, width = image_shape[-3:-1]
    largest = float(np.sqrt((height // 2) ** 2 + (width // 2) ** 2))
    if not frequency.is_traced(radius) and not 0 <= float(radius) < largest:
        raise ValueError(f"band radius must lie in [0, {largest:.2f}) for {height}x{width} images (beyond it the "
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


def pgd(
    logits_fn: LogitsFn,
    images,
    labels,
    eps,
    *,
    step_size,
    steps: int,
    random_start: bool = False,
    key: Optional[jax.Array] = None,
    restarts: int = 1,
    unroll: int | bool | None = None,
    norm: str = "linf",
    band=None,
    targeted: bool = False,
):
    """Projected gradient descent (Madry et al.) on the cross-entropy.

    L-infinity (``norm="linf"``): x <- clip01(clip_eps(x + step_size * sign(grad))). L2
    (``norm="l2"``): the step follows grad / ||grad|| and the perturbation is scaled back
    into the eps-ball. With `band` (``("low", r)`` or ``("high", r)``) every step's
    perturbation is first projected onto the LFC or HFC of radius r, then onto the ball,
    then the image is clipped to [0, 1]: in L2 the band and ball projections commute, so
    only the [0, 1] clip can move energy out of the band; in L-infinity the box clip does
    too. `band_leak` measures it. With `targeted`, `labels` are the target classes and the
    attack descends their cross-entropy.

    With `random_start` the start is uniform in the eps-ball (needs `key`). With
    ``restarts > 1`` the run with the highest loss (lowest, when targeted) is kept per
    example. `unroll` is passed to `lax.fori_loop`; the default (None) is
    `backend.pgd_unroll()` (every step on a CPU, none on accelerators).
    """
    check_inputs(logits_fn, images, labels, eps)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}.")
    if unroll is None:
        unroll = backend.pgd_unroll()
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}.")
    if random_start and key is None:
        raise ValueError("pgd(random_start=True) needs a jax.random key.")
    in_band = band_projector(band, images.shape)
    sign = -1.0 if targeted else 1.0
    plain = norm == "linf" and band is None

    def project(x):
        if plain:
            return _project(x, images, eps)
        delta = in_band(x - images)
        if norm == "linf":
            delta = jnp.clip(delta, -eps, eps)
        else:
            delta = delta * jnp.minimum(1.0, eps / jnp.maximum(_norm(delta), 1e-12))
        return jnp.clip(images + delta, 0.0, 1.0)

    def step(_, x):
        grad = sign * input_gradient(logits_fn, x, labels)
        direction = jnp.sign(grad) if norm == "linf" else grad / jnp.maximum(_norm(grad), 1e-12)
        return project(x + step_size * direction)

    def one_run(run_key):
        x = images
        if random_start:
            if norm == "linf":
                noise = jax.random.uniform(run_key, images.shape, images.dtype, -eps, eps)
            else:
                k1, k2 = jax.random.split(run_key)
                direction = jax.random.normal(k1, images.shape, images.dtype)
                radius = eps * jax.random.uniform(k2, (images.shape[0],) + (1,) * (images.ndim - 1), images.dtype)
                noise = direction / jnp.maximum(_norm(direction), 1e-12) * radius
            x = project(images + noise)
        return jax.lax.fori_loop(0, steps, step, x, unroll=unroll)

    if restarts == 1:
        return one_run(key)
    keys = jax.random.split(key, restarts) if key is not None else [None] * restarts
    best = one_run(keys[0])
    best_loss = sign * per_example_loss(logits_fn, best, labels)
    for run_key in keys[1:]:
        x = one_run(run_key)
        loss = sign * per_example_loss(logits_fn, x, labels)
        better = loss > best_loss
        best = jnp.where(better.reshape((-1,) + (1,) * (x.ndim - 1)), x, best)
        best_loss = jnp.maximum(loss, best_loss)
    return best


LOSSES = ("ce", "dlr")


def dlr_loss(logits, labels):
    """Difference of logits ratio (Croce & Hein 2020), per example: -(z_y - max_{i != y} z_i)
    / (z_pi1 - z_pi3 + 1e-12), with z sorted in decreasing order. Shift- and scale-invariant;
    needs at least 3 classes. > 0 means misclassified."""
    top3 = jax.lax.top_k(logits, 3)[0]
    return -margin(logits, labels) / (top3[:, 0] - top3[:, 2] + 1e-12)


def apgd_checkpoints(steps: int) -> np.ndarray:
    """The iterations at which APGD may halve its step: w_j = ceil(p_j * steps) with p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return np.unique(np.ceil(np.asarray(p[:-1]) * steps).astype(int))


def apgd(logits_fn: LogitsFn, images, labels, eps, *, steps: int = 100, loss: str = "ce", key=None,
         momentum: float = 0.75, rho: float = 0.75, unroll: int | bool | None = None):
    """Auto-PGD (Croce & Hein 2020), L-infinity: PGD with momentum whose step size starts at
    2 eps and is halved at the checkpoints (`apgd_checkpoints`) where fewer than `rho` of the
    steps since the last one raised the loss, or where neither the step nor the best loss
    changed; after a halving it restarts from the best point. Returns the per-example point
    of highest loss (`loss` "ce" or "dlr"). With `key`, starts uniformly in the eps-ball."""
    check_inputs(logits_fn, images, labels, eps)
    if loss not in LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; choose one of {LOSSES}.")
    if steps < 1:
        raise ValueError(f"APGD needs steps >= 1, got {steps}.")
    if loss == "dlr":
        classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(jnp.shape(images), jnp.result_type(images))).shape[-1]
        if classes < 3:
            raise ValueError(f"the DLR loss needs at least 3 classes, the model has {classes}; use loss='ce'.")
    unroll = backend.pgd_unroll() if unroll is None else unroll
    per_example = (lambda z: dlr_loss(logits_fn(z), labels)) if loss == "dlr" else (
        lambda z: optax.softmax_cross_entropy_with_integer_labels(logits_fn(z), labels))

    def loss_and_grad(z):
        (_, losses), grad = jax.value_and_grad(lambda q: (jnp.sum(per_example(q)), per_example(q)),
                                               has_aux=True)(z)
        return losses, grad
    checkpoints = apgd_checkpoints(steps)
    is_checkpoint = np.zeros(steps + 1, bool)
    is_checkpoint[checkpoints[1:]] = True
    since = np.zeros(steps + 1, np.int32)  # steps since the previous checkpoint, at each checkpoint
    since[checkpoints[1:]] = np.diff(checkpoints)
    shape = (-1,) + (1,) * (images.ndim - 1)
    x0 = images
    if key is not None:
        x0 = _project(images + jax.random.uniform(key, images.shape, images.dtype, -eps, eps), images, eps)
    eta0 = jnp.full(images.shape[0], 2.0, images.dtype) * eps
    loss0, grad0 = loss_and_grad(x0)
    x1 = _project(x0 + eta0.reshape(shape) * jnp.sign(grad0), images, eps)
    loss1, grad1 = loss_and_grad(x1)
    better = loss1 > loss0
    state = {"x": x1, "x_prev": x0, "grad": grad1, "loss": loss1, "eta": eta0,
             "best_x": jnp.where(better.reshape(shape), x1, x0), "best_loss": jnp.maximum(loss0, loss1),
             "best_grad": jnp.where(better.reshape(shape), grad1, grad0),
             "increases": better.astype(jnp.int32), "ckpt_eta": eta0, "ckpt_best": jnp.maximum(loss0, loss1)}

    def step(k, s):
        z = _project(s["x"] + s["eta"].reshape(shape) * jnp.sign(s["grad"]), images, eps)
        alpha = jnp.where(k == 1, 1.0, momentum)
        x_new = _project(s["x"] + alpha * (z - s["x"]) + (1 - alpha) * (s["x"] - s["x_prev"]), images, eps)
        loss_new, grad_new = loss_and_grad(x_new)
        improved = loss_new > s["best_loss"]
        best_x = jnp.where(improved.reshape(shape), x_new, s["best_x"])
        best_grad = jnp.where(improved.reshape(shape), grad_new, s["best_grad"])
        best_loss = jnp.maximum(loss_new, s["best_loss"])
        increases = s["increases"] + (loss_new > s["loss"]).astype(jnp.int32)
        at = jnp.asarray(is_checkpoint)[k + 1]
        few_increases = increases < rho * jnp.asarray(since)[k + 1]
        stalled = (s["ckpt_eta"] == s["eta"]) & (s["ckpt_best"] == best_loss)
        halve = at & (few_increases | stalled)
        eta = jnp.where(halve, s["eta"] / 2, s["eta"])
        x_next = jnp.where(halve.reshape(shape), best_x, x_new)
        grad_next = jnp.where(halve.reshape(shape), best_grad, grad_new)
        return {"x": x_next, "x_prev": jnp.where(halve.reshape(shape), best_x, s["x"]), "grad": grad_next,
                "loss": jnp.where(halve, best_loss, loss_new), "eta": eta, "best_x": best_x, "best_loss": best_loss,
                "best_grad": best_grad,
                "increases": jnp.where(at, 0, increases), "ckpt_eta": jnp.where(at, s["eta"], s["ckpt_eta"]),
                "ckpt_best": jnp.where(at, best_loss, s["ckpt_best"])}

    state = jax.lax.fori_loop(1, steps, step, state, unroll=unroll)
    return state["best_x"]


def per_example_loss(logits_fn: LogitsFn, images, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(images), labels)


def margin(logits, labels):
    """Correct-class logit minus the best other logit (< 0 means misclassified)."""
    correct = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return correct - others.max(axis=-1)


def square(
    logits_fn: LogitsFn,
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
    +-eps (one sign per channel) and keeps it where the margin loss drops. Uses only
    logits, so it is the referee for gradient masking: a model that resists PGD but not
    this attack masks its gradients. The square side shrinks on the schedule of the paper.
    """
    check_inputs(logits_fn, images, labels, eps)
    n, height, width, channels = images.shape
    key, init_key = jax.random.split(key)
    stripes = jax.random.choice(init_key, jnp.array([-1.0, 1.0]), (n, 1, width, channels))
    x = _project(images + eps * stripes, images, eps)
    best = margin(logits_fn(x), labels)

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
        candidate = jnp.where(inside[..., None], _project(images + eps * signs, images, eps), x)
        loss = margin(logits_fn(candidate), labels)
        improved = (loss < best) & (best > 0)
        x = jnp.where(improved[:, None, None, None], candidate, x)
        return x, jnp.where(improved, loss, best), key

    x, _, _ = jax.lax.fori_loop(0, queries, body, (x, best, key))
    return x
