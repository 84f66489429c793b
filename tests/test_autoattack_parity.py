"""hfcjax's AutoAttack against torchattacks' (3.5.1, the reference the issue names) on the same
small trained model and images: the same robust accuracy, to within 1% of the images; and its
Square attack, L-inf and L2 with AutoAttack's settings, against torchattacks' Square."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchattacks = pytest.importorskip("torchattacks")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import autoattack_parity  # noqa: E402
from hfcjax import attacks, evaluators  # noqa: E402
from hfcjax.evaluators import common, variants  # noqa: E402

EPS = 0.04
N = 100


@pytest.fixture(scope="module")
def trained(data_dir):
    """A 784-64-10 MLP trained for two epochs on 6,000 Fashion-MNIST images, and 100 test images
    (the model of `python -m benchmarks.autoattack_parity`)."""
    return autoattack_parity.trained_mlp(N)


def as_jax(model):
    """The MLP's logits in jax: fn(variables, images NHWC in [0, 1])."""
    logits = autoattack_parity.jax_logits(model)
    return lambda variables, z: logits(z)


def test_standard_autoattack_matches_torchattacks_within_one_percent(trained):
    model, images, labels = trained
    x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)
    adv = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0)(
        x, torch.from_numpy(labels.astype(np.int64)))
    with torch.no_grad():
        theirs = float((model(adv).argmax(1).numpy() == labels).mean())
        clean = float((model(x).argmax(1).numpy() == labels).mean())

    fn = as_jax(model)
    cfg = evaluators.section_defaults("autoattack")
    cfg.update(enabled=True, eps=EPS)  # standard: APGD-CE, APGD-T, FAB-T, Square 5000, AutoAttack's settings
    inputs = common.Inputs({}, variants.model_variants({}, rhos=(0.0,)), images, labels, (4.0,))
    (row,) = evaluators.module("autoattack").Evaluator(fn, cfg, common.Shared(batch_size=N, log=lambda m: None)
                                                       ).run(inputs)
    assert row.clean == pytest.approx(clean)
    assert 0.05 < theirs < clean - 0.1  # a regime where the attacks matter
    assert abs(row.robust - theirs) <= 1 / N + 1e-9, (row.robust, theirs, row.per_attack)


@pytest.mark.parametrize("norm, eps", [("linf", 0.08), ("l2", 1.5)])
def test_square_matches_torchattacks_square(trained, norm, eps):
    """1,000 queries, p_init 0.8, the schedule not rescaled (AutoAttack's Square): the two random
    searches break the same share of the images to within 4% (measured: 0-2% over seeds)."""
    model, images, labels = trained
    x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
    adv = torchattacks.Square(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, n_queries=1000, p_init=0.8,
                              resc_schedule=False, seed=0)(x, torch.from_numpy(labels.astype(np.int64)))
    with torch.no_grad():
        theirs = float((model(adv).argmax(1).numpy() == labels).mean())
        clean = float((model(x).argmax(1).numpy() == labels).mean())
    fn = as_jax(model)
    ours_adv = jax.jit(lambda z, y: attacks.square(lambda q: fn({}, q), z, y, eps, key=jax.random.key(0), queries=1000,
                                                   norm=norm, p_init=0.8, rescale_schedule=False)
                       )(jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels))
    ours = float((np.asarray(fn({}, ours_adv)).argmax(-1) == labels).mean())
    assert theirs < clean - 0.1  # the attack matters here
    assert abs(ours - theirs) <= 0.04, (ours, theirs)
