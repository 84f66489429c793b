"""Analysing a model hfcjax did not train: a Flax model defined here (NCHW input, mean/std
normalisation), a plain logits_fn, the --model/--data/--out command line and its errors."""

import json
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfcjax import data, evaluate, external
from hfcjax.errors import UserError

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)

MEAN, STD = (0.3,), (0.35,)
USER_MODULE = textwrap.dedent("""
    import flax.linen as nn, jax, jax.numpy as jnp

    class ChannelsFirstNet(nn.Module):
        '''Takes normalised NCHW images, like a PyTorch-style model.'''
        @nn.compact
        def __call__(self, x):
            assert x.shape[1] == 1, f"expected NCHW, got {x.shape}"
            x = jnp.transpose(x, (0, 2, 3, 1))
            x = nn.relu(nn.Conv(8, (5, 5), name="conv1")(x))
            x = nn.max_pool(x, (4, 4), (4, 4))
            return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))

    def factory():
        model = ChannelsFirstNet()
        return model, model.init(jax.random.key(0), jnp.zeros((1, 1, 28, 28)))

    def not_a_model():
        return 42
""")


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "usermodel.py").write_text(USER_MODULE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def fashion(data_dir):
    images, labels = data.load("fashion_mnist", "test")
    return images[:40], labels[:40]


FAST = dict(robustness=dict(eps=(0.05, 0.1), pgd_steps=2, strong_restarts=1, square_queries=5),
            evaluation=dict(batch_size=20), frequency=dict(svd_ranks=(4,)))


def fast(**evaluation):
    return {**FAST, "evaluation": {**FAST["evaluation"], **evaluation}}


def test_a_flax_model_with_nchw_and_normalisation_gets_the_whole_report(user_module, fashion, tmp_path):
    images, labels = fashion
    module, variables = external.load_factory("usermodel:factory")
    pre = external.Preprocess(MEAN, STD, "NCHW")
    result = evaluate.analyse_model((module, variables), images, labels, tmp_path, preprocess=pre,
                                    **fast(rhos=(0.0, 1.0), layers=("conv1/kernel",)))
    # Clean accuracy equals the model applied by hand to normalised channels-first pixels.
    x = (images.astype(np.float32) / 255 - MEAN[0]) / STD[0]
    direct = np.argmax(np.asarray(module.apply(variables, np.transpose(x, (0, 3, 1, 2)))), -1)
    rows = result["robustness"]
    assert rows[0].clean == pytest.approx(float(np.mean(direct == labels)))
    assert [r.name for r in rows] == ["rho=0", "rho=1"]
    assert rows[1].roughness < rows[0].roughness  # conv1 was smoothed
    assert set(result["frequency"].summary()["accuracy"]) >= {"original", "low_r3.5", "high_r14"}  # radii for 28x28
    for name in ("robustness.json", "robustness.csv", "robustness.md", "frequency.md", "frequency.json",
                 "kernels.png", "robustness.png", "report.md"):
        assert (tmp_path / name).exists(), name


def test_a_plain_logits_fn_and_float_images(fashion):
    images, labels = fashion
    weights = np.random.default_rng(0).normal(size=(28 * 28, 10)).astype(np.float32)
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weights
    floats = images.astype(np.float32) / 255
    result = evaluate.analyse_model(logits_fn, floats, labels, **fast(rhos=(0.0, 1.0)))
    assert [r.name for r in result["robustness"]] == ["rho=0"]  # nothing to smooth
    expected = np.mean(np.argmax(floats.reshape(40, -1) @ weights, -1) == labels)
    assert result["robustness"][0].clean == pytest.approx(float(expected))


def test_bad_models_and_data_are_one_line(user_module, fashion, tmp_path):
    images, labels = fashion
    with pytest.raises(ValueError, match="cannot import nowhere"):
        external.load_factory("nowhere:factory")
    with pytest.raises(ValueError, match="must look like package.module:factory"):
        external.load_factory("usermodel")
    with pytest.raises(ValueError, match=r"must be a logits_fn\(images\) or a \(flax module, variables\) pair, got int"):
        evaluate.analyse_model(external.load_factory("usermodel:not_a_model"), images, labels, **FAST)
    model = external.load_factory("usermodel:factory")
    with pytest.raises(ValueError, match="the model does not accept images of shape .N, 28, 28, 1. .given to it as "
                                         "NHWC.: AssertionError: expected NCHW"):
        evaluate.analyse_model(model, images, labels, **FAST)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        evaluate.analyse_model(model, images, labels + 5, preprocess=external.Preprocess(layout="NCHW"), **FAST)
    with pytest.raises(ValueError, match="--mean has 3 values but the images have 1 channels"):
        evaluate.analyse_model(model, images, labels, preprocess=external.Preprocess((0.1,) * 3, (0.2,) * 3), **FAST)
    cases = {"lengths": dict(images=images, labels=labels[:5]),
             "range": dict(images=images.astype(np.float32), labels=labels),
             "layout": dict(images=np.transpose(images, (0, 3, 1, 2)), labels=labels)}
    messages = {"lengths": "has 40 images but 5 labels", "range": r"float images must lie in \[0, 1\]",
                "layout": "look channels-first"}
    cases["empty"] = dict(images=images[:0], labels=labels[:0])
    messages["empty"] = "holds no images"
    for name, arrays in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(UserError, match=messages[name]):
            external.load_images(str(tmp_path / f"{name}.npz"))
    (tmp_path / "pickle.npz").write_bytes(__import__("pickle").dumps({"images": 1}))
    with pytest.raises(UserError, match="cannot be read as an .npz of arrays with keys images and labels"):
        external.load_images(str(tmp_path / "pickle.npz"))


def test_command_line_with_your_own_model(user_module, fashion, tmp_path, run_cli):
    images, labels = fashion
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    base = ["--model", "usermodel:factory", "--data", tmp_path / "data.npz", "--out", tmp_path / "report",
            "--config.evals.robustness.eps=(0.1,)", "--config.evals.robustness.pgd_steps=2",
            "--config.evals.robustness.strong_restarts=1", "--config.evals.robustness.square_queries=0",
            "--config.evaluation.batch_size=20", "--config.evaluation.rhos=(0,0.5)",
            "--config.evaluation.layers=('conv1/kernel',)"]
    code, out, err = run_cli(evaluate.main, *base, "--mean", "0.3", "--std", "0.35", "--layout", "NCHW")
    assert code == 0, err[-2000:]
    saved = json.loads((tmp_path / "report" / "robustness.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["rho=0", "rho=0.5"]
    code, _, err = run_cli(evaluate.main, *base)  # no --layout NCHW
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "expected NCHW" in errors[0], err[-2000:]
    code, _, err = run_cli(evaluate.main, *base, "--workdir", tmp_path)
    assert code == 2 and "give either --workdir DIR" in err


def test_default_radii_scale_with_small_images():
    assert external.default_radii(32, 32) == (4.0, 8.0, 12.0, 16.0) == external.default_radii(224, 224)
    assert external.default_radii(16, 20) == (2.0, 4.0, 6.0, 8.0)


def test_preprocess_is_inside_the_model():
    pre = external.Preprocess((0.5, 0.4), (0.1, 0.2), "NCHW")
    x = jnp.ones((1, 3, 4, 2)) * jnp.asarray([0.6, 0.8])
    out = pre(x)
    assert out.shape == (1, 2, 3, 4)
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 2.0], rtol=1e-6)


def test_a_model_with_non_finite_logits_is_refused_naming_the_image(fashion, tmp_path):
    """No accuracy from NaN (argmax of NaN is class 0): one line naming the first bad image,
    and no report written."""
    images, labels = fashion

    def logits_fn(x):
        flat = x.reshape(x.shape[0], -1)[:, :10]
        return jnp.where(jnp.mean(x, axis=(1, 2, 3))[:, None] > 0.99, jnp.nan, flat)  # NaN on white images

    images = images.copy()
    images[[27, 33]] = 255
    with pytest.raises(UserError, match=r"logits are not finite \(NaN or inf\) on image 27 "):
        evaluate.analyse_model(logits_fn, images, labels, tmp_path, **FAST)
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "robustness.json").exists()


def test_an_evaluation_folder_in_use_is_refused_in_one_line(fashion, tmp_path):
    """Two evaluations of one folder at once would remove each other's kept rows."""
    images, labels = fashion
    (tmp_path / evaluate.LOCK).write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": 1,
                                                      "started": "now"}))
    with pytest.raises(UserError, match=r"^the evaluation folder .* is in use by pid 1 .* choose another --out"):
        evaluate.analyse_model(lambda x: x.reshape(x.shape[0], -1)[:, :10], images, labels, tmp_path, **FAST)
    assert not (tmp_path / ".partial").exists()


def test_rho_0_needs_no_selected_kernel_and_rho_above_names_the_kernels_found(user_module, fashion):
    """Smoothing at rho 0 is the identity: a model whose first conv is not 'stem' is evaluated
    as given; for rho > 0 the error lists its kernels and the key that selects them."""
    images, labels = fashion
    model = external.load_factory("usermodel:factory")
    pre = external.Preprocess(MEAN, STD, "NCHW")
    only = {**fast(rhos=(0.0,)), "spectra": {"enabled": False}, "robustness": {**FAST["robustness"], "eps": (0.05,)}}
    result = evaluate.analyse_model(model, images, labels, preprocess=pre, **only)
    assert [r.name for r in result["robustness"]] == ["rho=0"] and result["robustness"][0].roughness is None
    with pytest.raises(UserError, match=r"no convolution kernel matches \['\^stem/kernel\$'\]; kernels in this "
                                        r"model: \['conv1/kernel'\]; select them with config.evaluation.layers"):
        evaluate.analyse_model(model, images, labels, preprocess=pre, **fast(rhos=(0.0, 0.5)))


def test_a_randomized_flax_model_gets_autoattacks_rand_version(fashion, tmp_path):
    """`external.Randomized((module, variables), rng="noise")`: the module draws input noise from
    its "noise" rng; AutoAttack's rand version runs APGD-CE and APGD-DLR with EOT on it, and
    the other analyses see one fixed draw (same logits twice, so the model checks pass)."""
    images, labels = fashion

    class NoisyNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x + 0.05 * jax.random.normal(self.make_rng("noise"), x.shape)
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    module = NoisyNet()
    variables = module.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, jnp.zeros((1, 28, 28, 1)))
    model = external.Randomized((module, variables), rng="noise")
    apply_fn, _ = external.apply_fn_of(model)
    x = jnp.asarray(images[:4], jnp.float32) / 255
    np.testing.assert_array_equal(apply_fn(variables, x), apply_fn(variables, x))  # one fixed draw
    assert not np.allclose(apply_fn(variables, x, jax.random.key(5)), apply_fn(variables, x, jax.random.key(6)))
    result = evaluate.analyse_model(model, images, labels, tmp_path / "out", evaluation=dict(batch_size=20, rhos=(0.0,)),
                                    robustness=dict(enabled=False), frequency=dict(enabled=False),
                                    spectra=dict(enabled=False),
                                    autoattack=dict(enabled=True, version="rand", eps=0.03, apgd_steps=5, eot_draws=3))
    (row,) = result["autoattack"]
    assert [s["attack"] for s in row.per_attack] == ["apgd-ce", "apgd-dlr"] and row.robust <= row.clean
    saved = json.loads((tmp_path / "out" / "autoattack.json").read_text())
    assert saved["version"] == "rand" and saved["robust_accuracy"] == row.robust
    assert json.loads((tmp_path / "out" / "checks.json").read_text())["warnings"] == []
    with pytest.raises(ValueError, match="Randomized takes a logits_fn"):
        external.apply_fn_of(external.Randomized(42))
