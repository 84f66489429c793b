"""The Square attack in L2 (and its schedule) against literal ports of the authors' code, and on a
linear model whose minimal L2 perturbations are known in closed form."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfcjax import attacks
from test_attacks import linear_problem

FAST_COMPILE = True  # compilation is most of this module's time (conftest._fast_compile)
square_module = importlib.import_module("hfcjax.attacks.square")  # `attacks.square` is the function


def authors_rectangles(x, y):
    """pseudo_gaussian_pert_rectangles of the authors' code, loop for loop."""
    delta = np.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    corner = [x_c - 1, y_c - 1]
    for k in range(max(x_c, y_c)):
        delta[max(corner[0], 0):min(corner[0] + 2 * k + 1, x), max(0, corner[1]):min(corner[1] + 2 * k + 1, y)] += (
            1.0 / (k + 1) ** 2)
        corner[0] -= 1
        corner[1] -= 1
    return delta / np.sqrt((delta ** 2).sum())


def authors_pattern(s, transpose):
    """meta_pseudo_gaussian_pert: two blocks of opposite sign, unit norm, maybe transposed."""
    delta = np.zeros([s, s])
    if s // 2:
        delta[:s // 2] = authors_rectangles(s // 2, s)
    delta[s // 2:] = -authors_rectangles(s - s // 2, s)
    delta /= np.sqrt((delta ** 2).sum())
    return delta.T if transpose else delta


def test_window_pattern_is_the_authors_pattern_wherever_the_window_lies():
    height, width = 12, 10
    cases = [(s, top, left, t) for s in range(1, 10) for top, left in ((0, 0), (height - s, width - s), (2, 1))
             for t in (False, True)]
    top, left, transpose = (jnp.array([c[i] for c in cases]) for i in (1, 2, 3))
    for s in range(1, 10):  # the side is one value per call (traced in the attack's loop)
        got = np.asarray(jax.jit(square_module.window_pattern, static_argnums=(0, 1))(
            height, width, top, left, s, transpose))
        for i, (side, t0, l0, t) in enumerate(cases):
            if side == s:
                want = np.zeros((height, width))
                want[t0:t0 + s, l0:l0 + s] = authors_pattern(s, t)
                np.testing.assert_allclose(got[i], want, atol=1e-6, err_msg=str(cases[i]))


def authors_fraction(p_init, it):
    """p_selection of the authors' code (AutoAttack: the schedule not rescaled)."""
    for count, halvings in ((8000, 9), (6000, 8), (4000, 7), (2000, 6), (1000, 5), (500, 4), (200, 3), (50, 2),
                            (10, 1)):
        if it > count:
            return p_init / 2 ** halvings
    return p_init


def test_the_window_fraction_follows_the_authors_schedule():
    its = np.array([0, 10, 11, 50, 51, 200, 201, 999, 1001, 4000, 4001, 7999, 8001, 9999])
    got = np.asarray(jax.vmap(lambda i: square_module.fraction(i, 10000, 0.8, False))(its))
    np.testing.assert_allclose(got, [authors_fraction(0.8, i) for i in its], rtol=1e-6)


@pytest.mark.parametrize("side", [8, 4])  # 4: under the authors' 5-pixel minimum, one-pixel start windows
def test_square_l2_stays_in_the_ball_breaks_nothing_beyond_the_closed_form_and_lowers_margins(side):
    fn, x, y, _, minimal = linear_problem(n=48, side=side)
    eps = float(np.quantile(minimal, 0.75))
    adv = jax.jit(lambda x, y, k: attacks.square(fn, x, y, eps, key=k, queries=300, norm="l2", p_init=0.8,
                                                 rescale_schedule=False))(x, y, jax.random.key(0))
    adv = np.asarray(adv)
    norms = np.sqrt(((adv - np.asarray(x)) ** 2).reshape(len(adv), -1).sum(1))
    assert adv.min() >= 0 and adv.max() <= 1 and np.all(norms <= eps * (1 + 1e-5))
    broken = np.asarray(fn(jnp.asarray(adv))).argmax(-1) != np.asarray(y)
    assert not np.any(broken & (minimal > eps))  # nothing breaks an image beyond its minimum
    # Random search on a dense linear direction is slow (torchattacks' Square breaks none of these
    # either); it still makes progress: the margins fall. Its strength is held against torchattacks
    # on a trained network (test_autoattack_parity).
    before = np.asarray(attacks.margin(fn(x), y))
    after = np.asarray(attacks.margin(fn(jnp.asarray(adv)), y))
    assert np.mean(after) < 0.9 * np.mean(before)


def test_square_rejects_an_unknown_norm():
    fn, x, y, _, _ = linear_problem(n=2)
    with pytest.raises(ValueError, match="norm 'l1' is unknown for Square"):
        attacks.square(fn, x, y, 0.1, key=jax.random.key(0), queries=1, norm="l1")
