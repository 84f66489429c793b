"""The Square attack (Andriushchenko et al. 2020): gradient-free random search, L-infinity and L2.

Both norms follow the authors' code (the version AutoAttack runs): each query changes one
random square window of the perturbation and keeps the change where the margin (correct
logit minus the best other) drops or the image is misclassified; images already
misclassified are not changed again. The side of the window shrinks on the authors'
schedule. L2 puts into the window a centre-weighted pattern of nested rectangles of opposite
sign in its two halves (`window_pattern`) and moves the mass of a second window into it.
Shapes stay fixed however the side changes (windows are masks), so one compiled loop serves
every query.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax.attacks import core
from hfcjax.errors import UserError

SQUARE_NORMS = ("linf", "l2")
_HALVINGS_AT = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # the authors' schedule, per 10,000 queries


def square(
    logits_fn: core.LogitsFn,
    images,
    labels,
    eps,
    *,
    key: jax.Array,
    queries: int = 200,
    p_init: float = 0.1,
    norm: str = "linf",
    rescale_schedule: bool = True,
):
    """Square attack (Andriushchenko et al., 2020) in `norm` (linf or l2), gradient-free.

    L-inf starts from vertical stripes of +-eps and proposes squares of +-eps (one sign per
    channel); L2 starts from a grid of `window_pattern`s scaled to norm eps and proposes the
    L2 update of the authors' code. `p_init` is the fraction of pixels the first windows
    cover (AutoAttack: 0.8); the fraction halves after the query counts of the authors'
    schedule, counted per 10,000 queries when `rescale_schedule` (so a short run goes through
    the whole schedule), else as they are (AutoAttack's setting). Uses only logits, so it is
    the referee for gradient masking: a model that resists PGD but not this attack masks
    its gradients. Returns the adversarial images, in [0, 1] and within eps of `images`.
    """
    core.check_inputs(logits_fn, images, labels, eps, p_init=p_init)
    if isinstance(queries, bool) or not isinstance(queries, (int, np.integer)) or queries < 0:
        raise UserError(f"queries must be an integer >= 0, got {queries!r}.")
    if norm not in SQUARE_NORMS:
        raise UserError(f"norm {norm!r} is unknown for Square; choose one of {SQUARE_NORMS}.")
    run = _linf if norm == "linf" else _l2
    return run(logits_fn, images, labels, eps, key, queries, p_init, rescale_schedule)


def fraction(i, queries: int, p_init: float, rescale: bool):
    """The fraction of pixels query `i` (from 0) changes: `p_init` halved once for each count
    of the schedule passed (10, 50, 200, ... of 10,000 queries when `rescale`)."""
    if rescale:  # the existing L-inf behaviour: thresholds scaled to `queries`, counted from the threshold on
        halvings = jnp.sum(i >= jnp.asarray(_HALVINGS_AT) * queries / 10000)
    else:  # the authors' p_selection: halved once the query count is past the threshold
        halvings = jnp.sum(i > jnp.asarray(_HALVINGS_AT))
    return p_init / 2.0 ** halvings


def _search(logits_fn, images, labels, start, key, queries, propose):
    """The random search both norms share: from `start`, `queries` proposals
    `propose(i, x, key) -> (candidate, next key)`, each kept where it lowers the margin of an image
    not yet misclassified (a misclassified candidate always has a lower margin than a correct point)."""
    best = core.margin(logits_fn(start), labels)

    def body(i, carry):
        x, best, key = carry
        candidate, key = propose(i, x, key)
        loss = core.margin(logits_fn(candidate), labels)
        improved = (loss < best) & (best > 0)
        x = jnp.where(improved[:, None, None, None], candidate, x)
        return x, jnp.where(improved, loss, best), key

    x, _, _ = jax.lax.fori_loop(0, queries, body, (start, best, key))
    return x


def _linf(logits_fn, images, labels, eps, key, queries, p_init, rescale):
    n, height, width, channels = images.shape
    key, init_key = jax.random.split(key)
    stripes = jax.random.choice(init_key, jnp.array([-1.0, 1.0]), (n, 1, width, channels))

    def propose(i, x, key):
        key, k_pos, k_sign = jax.random.split(key, 3)
        p = fraction(i, queries, p_init, rescale)
        side = jnp.clip(jnp.round(jnp.sqrt(p * height * width)), 1, min(height, width)).astype(jnp.int32)
        pos = jax.random.uniform(k_pos, (n, 2))
        top = jnp.floor(pos[:, 0] * (height - side + 1)).astype(jnp.int32)
        left = jnp.floor(pos[:, 1] * (width - side + 1)).astype(jnp.int32)
        inside = _window(height, width, top, left, side)
        signs = jax.random.choice(k_sign, jnp.array([-1.0, 1.0]), (n, 1, 1, channels))
        return jnp.where(inside[..., None], core.project_linf(images + eps * signs, images, eps), x), key

    start = core.project_linf(images + eps * stripes, images, eps)
    return _search(logits_fn, images, labels, start, key, queries, propose)


def _window(height, width, top, left, side):
    """[N, H, W] masks of the square windows with corners (`top`, `left`) [N] and `side`."""
    rows = jnp.arange(height)[None, :, None] - top[:, None, None]
    cols = jnp.arange(width)[None, None, :] - left[:, None, None]
    return (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)


def _rectangles(r, c, rows, cols, size: int):
    """The authors' pseudo-Gaussian block of `rows` x `cols` at offsets (r, c), unnormalised:
    nested rectangles around the centre (rows // 2, cols // 2), ring k weighing 1 / (k + 1)^2,
    so a pixel on ring d holds sum_{k=d}^{K-1} 1 / (k + 1)^2, K = max(rows, cols) // 2 + 1.
    `size` bounds rows and cols (the image's larger side)."""
    rings = jnp.maximum(jnp.abs(r - rows // 2), jnp.abs(c - cols // 2))
    big = jnp.maximum(rows // 2, cols // 2) + 1
    terms = 1.0 / jnp.arange(1, size + 2, dtype=jnp.float32) ** 2
    partial = jnp.concatenate([jnp.zeros(1), jnp.cumsum(terms)])  # partial[m] = sum_{k<m} 1 / (k + 1)^2
    return partial[big] - partial[jnp.minimum(rings, big)]


def window_pattern(height: int, width: int, top, left, side, transpose):
    """[N, H, W]: per image the authors' L2 pattern (`meta_pseudo_gaussian_pert`) in the square
    of `side` at (`top`, `left`), zero outside: its upper side // 2 rows hold one normalised
    pseudo-Gaussian block, the other rows the negated other, the whole of unit L2 norm,
    transposed where `transpose`. `top`, `left`, `transpose`: [N]; `side` may be traced."""
    s = jnp.asarray(side, jnp.int32)
    inside = _window(height, width, top, left, s)  # a square: the same mask transposed
    r = jnp.arange(height)[None, :, None] - top[:, None, None]
    c = jnp.arange(width)[None, None, :] - left[:, None, None]
    t = transpose[:, None, None]
    r, c = jnp.where(t, c, r), jnp.where(t, r, c)
    upper = r < s // 2
    size = max(height, width)
    first = jnp.where(inside & upper, _rectangles(r, c, s // 2, s, size), 0.0)
    second = jnp.where(inside & ~upper, _rectangles(r - s // 2, c, s - s // 2, s, size), 0.0)
    unit = lambda a: a / jnp.sqrt(jnp.maximum(jnp.sum(a ** 2, (1, 2), keepdims=True), 1e-30))
    return unit(unit(first) - unit(second))


def _l2_norm(a):
    return jnp.sqrt(jnp.sum(a ** 2, axis=(1, 2, 3), keepdims=True))


def _l2_init(images, eps, key):
    """The authors' start: a grid of windows of side H // 5 (at least 1: images under 5 pixels
    high, which the authors' code cannot take, get one-pixel windows), each a `window_pattern`
    with a random sign per image and channel, scaled to L2 norm eps."""
    n, height, width, channels = images.shape
    side = max(height // 5, 1)
    start = max((height - side * 5) // 2, 0)
    tops, lefts = np.meshgrid(start + side * np.arange(height // side), start + side * np.arange(width // side),
                              indexing="ij")
    cells = tops.size
    k_flip, k_sign = jax.random.split(key)
    flips = jax.random.bernoulli(k_flip, 0.5, (cells,))  # one orientation per window, as the authors'
    at = lambda v: jnp.repeat(jnp.asarray(v.reshape(-1), jnp.int32), n)  # [cells * n]: window-major
    patterns = window_pattern(height, width, at(tops), at(lefts), side, jnp.repeat(flips, n))
    signs = jax.random.choice(k_sign, jnp.array([-1.0, 1.0]), (cells, n, 1, 1, channels))
    delta = jnp.sum(patterns.reshape(cells, n, height, width, 1) * signs, axis=0)
    return jnp.clip(images + delta / (_l2_norm(delta) + 1e-12) * eps, 0.0, 1.0)


def _l2(logits_fn, images, labels, eps, key, queries, p_init, rescale):
    n, height, width, channels = images.shape
    key, init_key = jax.random.split(key)

    def propose(i, x, key):
        key, k_pos, k_flip, k_sign = jax.random.split(key, 4)
        p = fraction(i, queries, p_init, rescale)
        side = jnp.maximum(jnp.round(jnp.sqrt(p * height * width)), 3).astype(jnp.int32)
        side = jnp.minimum(side + (side % 2 == 0), min(height, width))  # odd, as the authors'
        room_at = jnp.array([height, width, height, width])[:, None] - side  # corners in [0, H - side), as theirs
        corner = jnp.floor(jax.random.uniform(k_pos, (4, n)) * room_at).astype(jnp.int32)
        first = _window(height, width, corner[0], corner[1], side)[..., None]
        second = _window(height, width, corner[2], corner[3], side)[..., None]
        delta = x - images
        in_first = jnp.sqrt(jnp.sum(jnp.where(first, delta, 0.0) ** 2, axis=(1, 2), keepdims=True))  # per channel
        room = jnp.maximum(eps ** 2 - _l2_norm(delta) ** 2, 0.0) / channels
        moved = _l2_norm(jnp.where(first | second, delta, 0.0)) ** 2
        pattern = window_pattern(height, width, corner[0], corner[1], side,
                                 jax.random.bernoulli(k_flip, 0.5, (n,)))[..., None]
        signs = jax.random.choice(k_sign, jnp.array([-1.0, 1.0]), (n, 1, 1, channels))
        new = jnp.where(first, pattern * signs + delta / (1e-12 + in_first), 0.0)
        new = new / (1e-12 + jnp.sqrt(jnp.sum(new ** 2, axis=(1, 2), keepdims=True))) * jnp.sqrt(room + moved)
        delta = jnp.where(first, new, jnp.where(second, 0.0, delta))
        return jnp.clip(images + delta / (_l2_norm(delta) + 1e-12) * eps, 0.0, 1.0), key

    return _search(logits_fn, images, labels, _l2_init(images, eps, init_key), key, queries, propose)
