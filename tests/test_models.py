"""Shapes, parameter counts and options of every model in hfcjax.models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfcjax import models

FAST_COMPILE = True  # compilation is most of this module's time (conftest._fast_compile)

# Parameter counts with 10 classes (ResNet-18 CIFAR form: the well-known 11.17M).
EXPECTED = {
    ("resnet18", 3, True): 11_173_962,
    ("resnet50", 3, True): 23_520_842,
    ("cifar_resnet", 3, True): 466_714,
    ("preact_resnet18", 3, True): 11_172_170,  # pytorch-cifar's 11,171,146 + the final BatchNorm
    ("wrn28_10", 3, True): 36_479_194,
    ("lenet", 3, True): 62_028,
    ("vgg11", 3, False): 9_488_266,
    ("vgg16", 3, False): 14_982_474,
    ("mnist_cnn", 1, False): 3_274_634,
}


def count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_takes_grey_images(name):
    """Grey 28 x 28 images: the same layers as colour below but the first kernel's input
    channels, so shapes (traced, not compiled) say it all."""
    shape = (2, 28, 28, 1)
    model = models.create_model(name, 7, batch_norm=True, dropout_rate=0.5)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=False), variables)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert variables["params"][models.FIRST_CONV]["kernel"].shape[2] == 1
    _, updates = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=True, mutable=["batch_stats"],
                                                      rngs={"dropout": jax.random.key(2)}), variables)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_runs_on_colour(name):
    shape = (2, 32, 32, 3)
    model = models.create_model(name, 7, batch_norm=True, dropout_rate=0.5)
    variables = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
    logits = model.apply(variables, jnp.ones(shape) * 0.5, train=False)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    kernel = variables["params"][models.FIRST_CONV]["kernel"]
    assert kernel.ndim == 4 and kernel.shape[2] == 3
    # BatchNorm starts at scale 1, offset 0 (paper), and training mode updates its statistics.
    bn = variables["params"].get(f"{models.FIRST_CONV}_bn") or variables["params"]["stage1_block1"]["BatchNorm_0"]
    np.testing.assert_array_equal(bn["scale"], 1)
    np.testing.assert_array_equal(bn["bias"], 0)
    _, updates = model.apply(variables, jax.random.uniform(jax.random.key(1), shape), train=True,
                             mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(updates["batch_stats"]),
                                                      jax.tree.leaves(variables["batch_stats"])))


@pytest.mark.parametrize("key,expected", sorted(EXPECTED.items()))
def test_parameter_counts(key, expected):
    name, channels, batch_norm = key
    model = models.create_model(name, 10, batch_norm=batch_norm)
    size = 28 if channels == 1 else 32
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, channels))))
    assert count(shapes["params"]) == expected


def test_without_batch_norm_there_are_no_batch_stats_and_convs_have_bias():
    model = models.create_model("resnet18", 10, batch_norm=False)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert "batch_stats" not in variables
    assert "bias" in variables["params"][models.FIRST_CONV]


def test_xavier_initialisation():
    model = models.create_model("mnist_cnn", 10, batch_norm=False)
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    kernel = np.asarray(params["fc1"]["kernel"])
    limit = np.sqrt(6 / (kernel.shape[0] + kernel.shape[1]))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
    assert abs(kernel.std() - limit / np.sqrt(3)) < 0.01 * limit


def test_dropout_is_active_only_in_training():
    model = models.create_model("mnist_cnn", 10, batch_norm=False, dropout_rate=0.5)
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    variables = model.init(jax.random.key(1), x)
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


def test_bfloat16_compute_keeps_float32_params():
    model = models.create_model("resnet18", 10, dtype="bfloat16")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert model.apply(variables, jnp.zeros((2, 32, 32, 3))).dtype == jnp.float32


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        models.create_model("resnet19", 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.create_model("lenet", 1)
    with pytest.raises(ValueError, match="dropout_rate"):
        models.create_model("lenet", 10, dropout_rate=1.5)
    with pytest.raises(ValueError, match="unknown model options"):
        models.create_model("lenet", 10, batchnorm=True)
