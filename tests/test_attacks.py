"""hfcjax.attacks: closed-form checks on a linear model, a numpy PGD loop, invariants."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from hfcjax import attacks, data, models

FAST_COMPILE = True  # compilation is most of this module's time (conftest._fast_compile)

SHAPE = (6, 4, 4, 2)


def linear_model(seed=0, classes=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(int(np.prod(SHAPE[1:])), classes)).astype(np.float32)
    b = rng.normal(size=classes).astype(np.float32)
    return w, b, lambda x: x.reshape(x.shape[0], -1) @ w + b


def numpy_grad(w, b, x, y):
    """d/dx of the summed softmax cross-entropy of the linear model, in float64."""
    logits = x.reshape(len(x), -1).astype(np.float64) @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return (p @ w.T.astype(np.float64)).reshape(x.shape)


def inputs(seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, SHAPE).astype(np.float32), rng.integers(0, 3, SHAPE[0]).astype(np.int32)


def test_fgsm_equals_closed_form_on_linear_model():
    w, b, f = linear_model()
    x, y = inputs()
    for eps in (0.01, 0.1, 0.5):
        ref = np.clip(x + eps * np.sign(numpy_grad(w, b, x, y)), 0, 1)
        np.testing.assert_allclose(attacks.fgsm(f, x, y, eps), ref, atol=1e-6)


def test_pgd_matches_numpy_loop_on_linear_model():
    w, b, f = linear_model()
    x, y = inputs()
    eps, step, steps = 0.1, 0.03, 7
    ref = x.astype(np.float64)
    for _ in range(steps):
        ref = ref + step * np.sign(numpy_grad(w, b, ref.astype(np.float32), y))
        ref = np.clip(np.clip(ref, x - eps, x + eps), 0, 1)
    for unroll in (1, 3, True, None):  # None: the backend's default (all steps on CPU)
        np.testing.assert_allclose(attacks.pgd(f, x, y, eps, step_size=step, steps=steps, unroll=unroll), ref,
                                   atol=1e-5)


def test_eps_zero_returns_the_input():
    _, _, f = linear_model()
    x, y = inputs()
    np.testing.assert_array_equal(attacks.fgsm(f, x, y, 0.0), x)
    np.testing.assert_array_equal(attacks.pgd(f, x, y, 0.0, step_size=0.01, steps=3), x)
    np.testing.assert_array_equal(attacks.square(f, x, y, 0.0, key=jax.random.key(0), queries=5), x)


@settings(max_examples=15, deadline=None)
@given(st.floats(0, 0.3), st.integers(0, 4), st.booleans(), st.integers(0, 1000))
def test_perturbation_stays_in_the_ball_and_in_unit_range(eps, steps, random_start, seed):
    _, _, f = linear_model(seed % 7)
    x, y = inputs(seed)
    key = jax.random.key(seed)
    for adv in (attacks.fgsm(f, x, y, eps),
                attacks.pgd(f, x, y, eps, step_size=eps / 3 + 1e-3, steps=steps, key=key if random_start else None),
                attacks.square(f, x, y, eps, key=key, queries=8)):
        adv = np.asarray(adv)
        assert np.all(np.abs(adv - x) <= eps + 1e-6)
        assert adv.min() >= 0 and adv.max() <= 1


def test_eps_sweep_compiles_once():
    _, _, f = linear_model()
    x, y = inputs()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sweep(eps):
        return jax.vmap(lambda e: attacks.pgd(f, x, y, e, step_size=e / 4, steps=3))(eps)

    out = sweep(jnp.array([0.0, 0.05, 0.1]))
    sweep(jnp.array([0.2, 0.3, 0.4]))
    np.testing.assert_allclose(out[1], attacks.pgd(f, x, y, 0.05, step_size=0.0125, steps=3), atol=1e-6)


def test_restarts_keep_the_worst_case_per_example():
    _, _, f = linear_model()
    x, y = inputs()
    key = jax.random.key(3)
    best = attacks.restarts(attacks.pgd, 4)(f, x, y, 0.2, step_size=0.02, steps=2, key=key)
    singles = [attacks.pgd(f, x, y, 0.2, step_size=0.02, steps=2, key=k) for k in jax.random.split(key, 4)]
    losses = np.stack([attacks.per_example_loss(f, s, y) for s in singles])
    np.testing.assert_allclose(attacks.per_example_loss(f, best, y), losses.max(0), rtol=1e-6)
    once = attacks.restarts(attacks.pgd, 1)(f, x, y, 0.2, step_size=0.02, steps=2, key=key)
    np.testing.assert_array_equal(once, attacks.pgd(f, x, y, 0.2, step_size=0.02, steps=2, key=key))
    with pytest.raises(ValueError, match="restarts need a jax.random key"):
        attacks.restarts(attacks.pgd, 2)(f, x, y, 0.1, step_size=0.01, steps=1, key=None)
    with pytest.raises(ValueError, match="need restarts >= 1"):
        attacks.restarts(attacks.pgd, 0)


@pytest.fixture(scope="module")
def trained_bn_cnn():
    """A small BatchNorm CNN trained for 60 steps on real Fashion-MNIST."""
    images, labels = data.load("fashion_mnist", "train")
    x, y = images[:3000].astype(np.float32) / 255, labels[:3000]
    model = models.create_model("lenet", 10, batch_norm=True)
    variables = model.init(jax.random.key(0), x[:1])
    tx = optax.adam(3e-3)
    params, stats, opt = variables["params"], variables["batch_stats"], tx.init(variables["params"])

    @jax.jit
    def step(params, stats, opt, xb, yb):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, xb, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd
        (_, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt)
        return optax.apply_updates(params, u), upd["batch_stats"], opt

    for i in range(60):
        sl = slice(50 * i, 50 * (i + 1))
        params, stats, opt = step(params, stats, opt, x[sl], y[sl])
    test_x, test_y = data.load("fashion_mnist", "test")
    return model, {"params": params, "batch_stats": stats}, test_x[:200].astype(np.float32) / 255, test_y[:200]


def test_pgd_is_never_weaker_than_fgsm_on_a_trained_model(trained_bn_cnn):
    model, variables, x, y = trained_bn_cnn
    f = lambda z: model.apply(variables, z)
    acc = lambda z: float((jnp.argmax(f(z), -1) == y).mean())
    assert acc(x) > 0.6
    for eps in (0.02, 0.05, 0.1):
        fgsm_acc = acc(attacks.fgsm(f, x, y, eps))
        pgd_acc = acc(attacks.pgd(f, x, y, eps, step_size=eps / 4, steps=10))
        assert pgd_acc <= fgsm_acc < acc(x)


def test_attacks_leave_batch_stats_untouched_and_examples_independent(trained_bn_cnn):
    model, variables, x, y = trained_bn_cnn
    before = jax.tree.map(np.array, variables["batch_stats"])
    f = lambda z: model.apply(variables, z)
    whole = attacks.pgd(f, x[:40], y[:40], 0.05, step_size=0.01, steps=5)
    halves = [attacks.pgd(f, x[s], y[s], 0.05, step_size=0.01, steps=5) for s in (slice(0, 20), slice(20, 40))]
    np.testing.assert_allclose(whole, np.concatenate(halves), atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, variables["batch_stats"]))


def test_square_attack_lowers_accuracy_without_gradients(trained_bn_cnn):
    model, variables, x, y = trained_bn_cnn
    f = lambda z: model.apply(variables, z)
    acc = lambda z: float((jnp.argmax(f(z), -1) == y).mean())
    adv = attacks.square(f, x, y, 0.1, key=jax.random.key(0), queries=100)
    assert acc(adv) < acc(x) - 0.1


# --------------------------------------------------------------------------- L2, bands, targeted


def two_class_linear(h=8, w=8, c=1, seed=0):
    """logits = [0, <w, x> + b]: the cross-entropy's input gradient is parallel to w."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(1, h, w, c))
    images = 0.5 + 0.01 * rng.normal(size=(6, h, w, c))
    labels = np.array([0, 1, 0, 1, 1, 0], np.int32)
    logits_fn = lambda x: jnp.stack([jnp.zeros(x.shape[0]), jnp.sum(x * weight, axis=(1, 2, 3))], -1)
    return weight, images.astype(np.float32), labels, logits_fn


@pytest.mark.parametrize("band", [None, ("low", 2.0), ("high", 2.0)])
def test_l2_pgd_on_a_linear_model_moves_eps_along_the_banded_weight(band, reference_split):
    weight, images, labels, logits_fn = two_class_linear()
    eps = 0.1  # small: no pixel reaches 0 or 1, so the closed form is exact
    adv = attacks.pgd(logits_fn, images, labels, eps, step_size=eps, steps=3, norm="l2", band=band)
    direction = weight.astype(np.float64)
    if band is not None:
        low, high, _ = reference_split(direction, band[1])
        direction = low if band[0] == "low" else high
    direction = direction / np.linalg.norm(direction)
    signs = np.where(labels == 1, -1.0, 1.0)[:, None, None, None]  # push the true class's logit down
    np.testing.assert_allclose(adv, images + eps * signs * direction, atol=2e-5)
    if band is not None:
        np.testing.assert_allclose(attacks.band_leak(adv - images, band), 0, atol=1e-6)


def test_linf_band_limited_pgd_stays_in_the_ball_and_its_leak_is_measured(reference_split):
    weight, images, labels, logits_fn = two_class_linear(seed=1)
    eps = 0.03
    adv = np.asarray(attacks.pgd(logits_fn, images, labels, eps, step_size=0.01, steps=5, band=("high", 3.0)))
    delta = adv - images
    assert np.abs(delta).max() <= eps + 1e-6 and np.abs(delta).max() > 0.5 * eps
    low, high, _ = reference_split(delta, 3.0)
    expected = (low ** 2).sum((1, 2, 3)) / (delta ** 2).sum((1, 2, 3))
    leak = np.asarray(attacks.band_leak(jnp.asarray(delta), ("high", 3.0)))
    np.testing.assert_allclose(leak, expected, atol=1e-5)
    assert 0 < leak.max() < 0.5  # the box clip moves some energy out of the HFC, most stays


def test_targeted_pgd_reaches_the_target_and_restarts_keep_the_closest():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(4 * 4 * 3, 5)).astype(np.float32)
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weights
    x = jnp.asarray(rng.uniform(0.3, 0.7, size=(8, 4, 4, 3)), jnp.float32)
    targets = jnp.asarray((np.argmax(np.asarray(logits_fn(x)), -1) + 1) % 5)
    adv = attacks.restarts(attacks.pgd, 2)(logits_fn, x, targets, 0.5, step_size=0.05, steps=30, targeted=True,
                                           key=jax.random.key(0))
    np.testing.assert_array_equal(np.argmax(np.asarray(logits_fn(adv)), -1), np.asarray(targets))
    untargeted = attacks.pgd(logits_fn, x, targets, 0.5, step_size=0.05, steps=30)
    assert np.mean(np.argmax(np.asarray(logits_fn(untargeted)), -1) == np.asarray(targets)) < 1


def test_l2_pgd_stays_in_the_l2_ball_with_random_start():
    weight, images, labels, logits_fn = two_class_linear(seed=2)
    adv = attacks.pgd(logits_fn, images, labels, 0.5, step_size=0.2, steps=4, norm="l2", key=jax.random.key(1))
    norms = np.sqrt(((np.asarray(adv) - images) ** 2).sum((1, 2, 3)))
    assert norms.max() <= 0.5 + 1e-5 and norms.min() > 0.4
    assert float(np.min(adv)) >= 0 and float(np.max(adv)) <= 1


def test_bad_norm_band_and_radius_are_one_line():
    weight, images, labels, logits_fn = two_class_linear()
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        attacks.pgd(logits_fn, images, labels, 0.1, step_size=0.1, steps=1, norm="l1")
    with pytest.raises(ValueError, match="unknown band 'mid'"):
        attacks.pgd(logits_fn, images, labels, 0.1, step_size=0.1, steps=1, band=("mid", 2.0))
    with pytest.raises(ValueError, match=r"band radius must lie in \[0, 5.66\) for 8x8 images"):
        attacks.pgd(logits_fn, images, labels, 0.1, step_size=0.1, steps=1, band=("high", 6.0))


# --------------------------------------------------------------------------- APGD and DLR


def test_dlr_loss_matches_numpy_and_is_scale_and_shift_invariant():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(7, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 7)
    z = np.sort(logits, -1)[:, ::-1]
    others = np.where(np.eye(5, dtype=bool)[labels], -np.inf, logits).max(-1)
    expected = -(logits[np.arange(7), labels] - others) / (z[:, 0] - z[:, 2] + 1e-12)
    got = attacks.dlr_loss(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(attacks.dlr_loss(jnp.asarray(3 * logits + 2), jnp.asarray(labels)), expected, rtol=1e-4)


def test_apgd_checkpoints_follow_the_paper():
    w = attacks.apgd_checkpoints(100)
    assert w[0] == 0 and w[1] == 22 and w[-1] < 100 and np.all(np.diff(w) >= 6)
    gaps = np.diff(w)
    assert np.all(gaps[1:] <= gaps[:-1])  # the gaps shrink, down to 0.06 N


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_is_at_least_as_strong_as_pgd_and_stays_in_the_ball(loss):
    rng = np.random.default_rng(5)
    weights = rng.normal(size=(6 * 6 * 1, 4)).astype(np.float32)
    logits_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ weights) * 3  # non-linear: steps matter
    x = jnp.asarray(rng.uniform(0.2, 0.8, size=(40, 6, 6, 1)), jnp.float32)
    y = jnp.asarray(np.argmax(np.asarray(logits_fn(x)), -1))
    eps = 0.05
    # Compiled once per loss, the loop rolled (unroll=1): this checks the algorithm, not speed.
    run = jax.jit(lambda e: attacks.apgd(logits_fn, x, y, e, steps=30, loss=loss, unroll=1))
    adv = run(eps)
    assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6 and 0 <= float(adv.min()) and float(adv.max()) <= 1
    pgd = attacks.pgd(logits_fn, x, y, eps, step_size=eps / 4, steps=30, unroll=1)
    acc = lambda z: float(np.mean(np.argmax(np.asarray(logits_fn(z)), -1) == np.asarray(y)))
    assert acc(adv) <= acc(pgd) + 2 / 40 and acc(adv) < 1.0
    np.testing.assert_array_equal(adv, attacks.apgd(logits_fn, x, y, eps, steps=30, loss=loss, unroll=1))  # determ.
    np.testing.assert_array_equal(run(0.0), x)


def test_apgd_bad_input():
    logits_fn = lambda x: x.reshape(x.shape[0], -1)[:, :2]
    x = jnp.full((2, 4, 4, 1), 0.5)
    y = jnp.zeros(2, jnp.int32)
    with pytest.raises(ValueError, match="needs at least 3 classes"):
        attacks.apgd(logits_fn, x, y, 0.1, loss="dlr")
    with pytest.raises(ValueError, match="unknown APGD loss 'cw'"):
        attacks.apgd(logits_fn, x, y, 0.1, loss="cw")


def test_apgd_on_a_two_class_linear_model_reaches_the_closed_form_corner():
    """With logits [0, <w, x> + b] the cross-entropy's gradient sign is -s * sign(w) for every
    step (s = +1 for label 1); APGD's first step (2 eps) lands on the corner x - s eps sign(w)
    of the eps-box and nothing beats it. Images misclassified to begin with are returned as
    they are: the first misclassified iterate is the start (AutoAttack's rule)."""
    weight, images, labels, logits_fn = two_class_linear(seed=6)
    eps = 0.05  # no pixel reaches 0 or 1
    result = attacks.apgd_run(logits_fn, images, labels, eps, steps=10, loss="ce")
    signs = np.where(labels == 1, -1.0, 1.0)[:, None, None, None]
    wrong = (np.argmax(np.asarray(logits_fn(images)), -1) != labels)[:, None, None, None]
    assert 0 < wrong.sum() < len(labels)
    want = np.where(wrong, images, images + eps * signs * np.sign(weight))
    np.testing.assert_allclose(result.adv, want, atol=1e-6)
    assert np.all(np.asarray(result.success)[wrong[:, 0, 0, 0]])


def test_negative_step_sizes_query_counts_and_pixels_outside_0_1_are_refused():
    f = lambda x: x.reshape(x.shape[0], -1)[:, :3]
    x, y = jnp.full((2, 4, 4, 1), 0.5), jnp.array([0, 1])
    with pytest.raises(ValueError, match=r"^step_size must be > 0, got -0.01"):
        attacks.pgd(f, x, y, 0.1, step_size=-0.01, steps=2)
    with pytest.raises(ValueError, match=r"^queries must be an integer >= 0, got -1"):
        attacks.square(f, x, y, 0.1, key=jax.random.key(0), queries=-1)
    with pytest.raises(ValueError, match=r"^images must lie in \[0, 1\] .* from 0 to 255\. Divide uint8 pixels by 255"):
        attacks.fgsm(f, x.at[0, 0, 0, 0].set(255.0).at[1].set(0.0), y, 0.1)
    with pytest.raises(ValueError, match=r"^images must lie in \[0, 1\]"):
        attacks.pgd(f, x - 1.0, y, 0.1, step_size=0.01, steps=1)
    # Traced values are the caller's (a jitted grid over eps): not checked, and no error.
    assert jax.jit(lambda s: attacks.pgd(f, x, y, 0.1, step_size=s, steps=1))(0.01).shape == x.shape


def linear_problem(seed=0, n=64, classes=10, side=4):
    """A linear model on side x side x 3 images near 0.5 (no [0, 1] clip binds at small eps) and,
    per image, the smallest L-inf and L2 perturbations that misclassify it (closed form:
    min over classes t of margin_t / ||w_y - w_t||, dual norms L1 and L2)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(side * side * 3, classes))
    images = (0.5 + 0.02 * rng.normal(size=(n, side, side, 3))).astype(np.float32)
    logits = images.reshape(n, -1).astype(np.float64) @ w
    labels = np.argmax(logits, -1)
    diff = w[:, labels].T[:, :, None] - w[None, :, :]  # [n, pixels, classes]: w_y - w_t
    gap = logits[np.arange(n), labels][:, None] - logits  # margin_t >= 0
    other = np.arange(classes)[None, :] != labels[:, None]
    gap, diff = np.where(other, gap, 1.0), np.where(other[:, None, :], diff, 1.0)  # the true class is left out
    linf = np.where(other, gap / np.abs(diff).sum(1), np.inf).min(1)
    l2 = np.where(other, gap / np.sqrt((diff ** 2).sum(1)), np.inf).min(1)
    fn = lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w, jnp.float32)
    return fn, jnp.asarray(images), jnp.asarray(labels.astype(np.int32)), linf, l2


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_t_breaks_exactly_the_images_within_the_closed_form_minimal_perturbation(norm):
    fn, x, y, linf, l2 = linear_problem()
    minimal = linf if norm == "linf" else l2
    eps = float(np.median(minimal))
    result = jax.jit(lambda x, y: attacks.apgd_targeted(fn, x, y, eps, steps=20, norm=norm))(x, y)
    success = np.asarray(result.success)
    adv = np.asarray(result.adv)
    np.testing.assert_array_equal(success, np.argmax(np.asarray(fn(adv)), -1) != np.asarray(y))  # the flag is true
    assert not success[minimal > eps * 1.001].any()  # no attack can break these
    assert success[minimal < eps * 0.97].all()  # a sound targeted attack breaks these
    delta = (adv - np.asarray(x)).reshape(len(adv), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert (size <= eps * (1 + 1e-5)).all()


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_keeps_a_misclassified_iterate_and_reports_success(loss):
    """AutoAttack's rule: an image counts as broken when any iterate misclassifies it; the
    returned point is then misclassified (never a later higher-loss point that is not)."""
    fn, x, y, linf, _ = linear_problem(seed=1)
    eps = float(np.median(linf))
    run = jax.jit(lambda key: attacks.apgd_run(fn, x, y, eps, steps=15, loss=loss, key=key))  # compiled once
    result = run(jax.random.key(0))
    success = np.asarray(result.success)
    np.testing.assert_array_equal(success, np.argmax(np.asarray(fn(result.adv)), -1) != np.asarray(y))
    assert not success[linf > eps * 1.001].any() and success.mean() > 0.3
    two = jax.jit(lambda key: attacks.restarts(attacks.apgd_run, 2)(fn, x, y, eps, steps=15, loss=loss, key=key)
                  )(jax.random.key(0))  # compiled: eagerly, each run's ops compile one by one (9 s against 2.5)
    singles = [run(k).success for k in jax.random.split(jax.random.key(0), 2)]
    np.testing.assert_array_equal(two.success, np.asarray(singles[0]) | np.asarray(singles[1]))  # any run breaks it
    with pytest.raises(ValueError, match="loss 'dlr_targeted' needs targets"):
        attacks.apgd_run(fn, x, y, eps, loss="dlr_targeted")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["linf", "l2"]))
def test_fab_projection_is_the_closed_form_minimal_step_inside_the_box(seed, norm):
    """min ||d|| s.t. w.(p + d) = b: d = c sign(w) / ||w||_1 (L-inf), c w / ||w||^2 (L2),
    for a point deep inside [0, 1] and a plane close to it; the box is always respected."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=20)
    p = 0.5 + 0.05 * rng.uniform(-1, 1, size=20)
    c = 0.01 * rng.normal()
    d = np.asarray(attacks.project_hyperplane(jnp.asarray(p, jnp.float32), jnp.asarray(w, jnp.float32),
                                              jnp.asarray(w @ p + c, jnp.float32), norm), np.float64)
    want = c * np.sign(w) / np.abs(w).sum() if norm == "linf" else c * w / (w @ w)
    np.testing.assert_allclose(d, want, atol=2e-6)
    far = np.asarray(attacks.project_hyperplane(jnp.asarray(p, jnp.float32), jnp.asarray(w, jnp.float32),
                                                jnp.asarray(w @ p + 100.0, jnp.float32), norm))
    assert np.all(p + far >= -1e-6) and np.all(p + far <= 1 + 1e-6)  # unreachable plane: as close as the box allows


def _box_projection_reference(p, w, c, norm):
    """scipy's minimum of ||d|| (L-inf: a linear program in (d, t); L2: SLSQP) subject to
    w.d = c and 0 <= p + d <= 1."""
    from scipy import optimize

    n = len(p)
    if norm == "linf":
        # variables (d, t): minimise t, -t <= d_i <= t, w.d = c, -p <= d <= 1 - p
        eye = np.eye(n)
        bounds = [(-pi, 1 - pi) for pi in p] + [(0, None)]
        res = optimize.linprog(np.r_[np.zeros(n), 1.0], A_ub=np.block([[eye, -np.ones((n, 1))], [-eye, -np.ones((n, 1))]]),
                               b_ub=np.zeros(2 * n), A_eq=np.r_[w, 0.0][None], b_eq=[c], bounds=bounds, method="highs")
        assert res.status == 0
        return res.x[:n]
    res = optimize.minimize(lambda d: d @ d, np.zeros(n), jac=lambda d: 2 * d, method="SLSQP",
                            bounds=[(-pi, 1 - pi) for pi in p],
                            constraints=[{"type": "eq", "fun": lambda d: w @ d - c, "jac": lambda d: w}],
                            options={"ftol": 1e-14, "maxiter": 500})
    assert res.success
    return res.x


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), norm=st.sampled_from(["linf", "l2"]), reach=st.floats(0.05, 0.9))
def test_fab_projection_equals_scipys_where_the_box_binds(seed, norm, reach):
    """Points near the box's faces and planes far enough that many coordinates end at a bound
    (and some w_i = 0): the sorted closed form is the minimum scipy's solvers find."""
    rng = np.random.default_rng(seed)
    n = 12
    p = rng.choice([0.0, 0.02, 0.5, 0.97, 1.0], size=n)
    p = np.clip(p + rng.uniform(-0.01, 0.01, size=n), 0, 1)
    w = rng.normal(size=n) * (rng.uniform(size=n) > 0.2)
    w[0] = 1.0 + abs(w[0])
    sign = rng.choice([-1.0, 1.0])
    most = np.sum(np.where(w * sign > 0, w * sign * (1 - p), -w * sign * p))  # the largest reachable |c|
    c = sign * reach * most
    d = np.asarray(attacks.project_hyperplane(jnp.asarray(p, jnp.float32), jnp.asarray(w, jnp.float32),
                                              jnp.asarray(w @ p + c, jnp.float32), norm), np.float64)
    want = _box_projection_reference(p, w, c, norm)
    size = (lambda v: np.max(np.abs(v))) if norm == "linf" else np.linalg.norm
    assert np.all(p + d >= -1e-6) and np.all(p + d <= 1 + 1e-6)
    assert w @ d == pytest.approx(c, abs=1e-4 * max(1.0, abs(c)))
    assert size(d) == pytest.approx(size(want), rel=1e-4, abs=1e-5)
    if norm == "l2":  # strictly convex: the minimiser itself is unique
        np.testing.assert_allclose(d, want, atol=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_closed_form_minimal_perturbation_of_a_linear_model(norm):
    fn, x, y, linf, l2 = linear_problem(seed=2, n=32)
    minimal = linf if norm == "linf" else l2
    eps = float(np.median(minimal))
    for targeted in (False, True):
        result = (attacks.fab_targeted if targeted else attacks.fab)(fn, x, y, eps, norm=norm, steps=20)
        success, adv = np.asarray(result.success), np.asarray(result.adv)
        np.testing.assert_array_equal(success, np.argmax(np.asarray(fn(adv)), -1) != np.asarray(y))
        assert not success[minimal > eps * 1.001].any() and success[minimal < eps * 0.95].all()
        found = -np.asarray(result.loss)[success]
        assert np.all(found >= minimal[success] * (1 - 1e-4))  # nothing beats the closed form
        if not targeted:  # FAB heads for the nearest boundary: within its 5% overshoot of the minimum
            assert np.all(found <= minimal[success] * 1.06)


def test_eot_gradient_is_the_mean_of_the_closed_form_gradients_of_each_draw():
    """A randomized linear model, logits = x (W + E_k) with E_k drawn from the pass's key: the
    EOT gradient of the summed CE is the mean over draws of (W + E_k) (softmax - onehot), the
    aux the last draw's; keys are the step's, split per pass."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 5)).astype(np.float32)
    x = rng.uniform(size=(3, 12)).astype(np.float32)
    y = rng.integers(0, 5, size=3)
    noise = lambda key: 0.5 * jax.random.normal(key, w.shape)

    def total(z, key):
        logits = z @ (jnp.asarray(w) + noise(key))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y))
        return losses.sum(), losses

    eot = attacks.Eot(7, jax.random.key(3))
    losses, grad = attacks.eot_value_and_grad(total, jnp.asarray(x), eot, 4)
    keys = jax.random.split(jax.random.fold_in(eot.key, 4), 7)
    want = np.zeros_like(x, np.float64)
    for key in keys:
        m = w.astype(np.float64) + np.asarray(noise(key), np.float64)
        logits = x.astype(np.float64) @ m
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        want += (p - np.eye(5)[y]) @ m.T / 7
    np.testing.assert_allclose(grad, want, atol=1e-5)
    last = x.astype(np.float64) @ (w + np.asarray(noise(keys[-1]), np.float64))
    want_losses = np.log(np.exp(last).sum(-1)) - last[np.arange(3), y]
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)


def randomized_linear_problem():
    """`linear_problem(seed=3)` as a randomized model ``logits_fn(images, key)``: plus a wobble
    whose value is tiny (< 0.01) but whose input gradient is a fresh random sign per pass,
    larger than the model's own. Returns (logits_fn, images, labels, minimal L-inf)."""
    fn, x, y, linf, _ = linear_problem(seed=3)
    v = jnp.asarray(np.random.default_rng(9).normal(size=(48, 10)), jnp.float32)

    def randomized(z, key):
        flat = z.reshape(z.shape[0], -1)
        sign = jax.random.rademacher(key, flat.shape, flat.dtype)
        return fn(z) + (3.0 * sign * jnp.sin(1000.0 * flat) / 1000.0) @ v

    return randomized, x, y, linf


def test_apgd_with_eot_breaks_a_randomized_model_one_draw_per_gradient_cannot():
    """On `randomized_linear_problem`, APGD with one pass per gradient follows noise, with AutoAttack's 20 (rand version) it breaks every image whose closed-form
    minimal L-inf perturbation is below 0.95 eps, and nothing beyond the closed form."""
    randomized, x, y, linf = randomized_linear_problem()
    eps = float(np.quantile(linf, 0.75))
    broken = {}
    for draws in (1, 20):
        eot = attacks.Eot(draws, jax.random.key(0))
        result = jax.jit(lambda x, y: attacks.apgd_run(randomized, x, y, eps, steps=50, eot=eot))(x, y)
        broken[draws] = np.asarray(result.success)
        assert not broken[draws][linf > eps * 1.001].any()
    assert broken[20][linf < 0.95 * eps].all() and broken[20].sum() >= 20
    assert broken[1].sum() < broken[20].sum() / 4
    with pytest.raises(ValueError, match="draws >= 1"):
        attacks.apgd_run(randomized, x, y, eps, eot=attacks.Eot(0, jax.random.key(0)))
