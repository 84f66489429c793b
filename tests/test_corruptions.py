"""The CIFAR-10-C corruptions against independent references (closed forms, stdlib colorsys,
explicit loops, the generator's literal scipy calls), and the `corruptions` evaluator on a
linear model: accuracies recomputed directly, mCE against itself exactly 1, the cache."""

import colorsys
import json

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from hfcjax import corruptions, data, evaluators, measure
from hfcjax.errors import UserError
from hfcjax.evaluators import common, variants

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)


@pytest.fixture(scope="module")
def cifar():
    images, labels = data.load("cifar10", "test")
    return images[:6], labels[:6].astype(np.int32)


def has_frost_pictures():
    try:
        corruptions.frost_pictures()
        return True
    except UserError:
        return False


def test_every_corruption_and_severity_is_uint8_of_the_same_shape_and_seeded(cifar):
    images, _ = cifar
    grey, _ = data.load("fashion_mnist", "test")
    for name in corruptions.NAMES:
        if name == "frost" and not has_frost_pictures():
            with pytest.raises(UserError, match="pip install --no-deps imagecorruptions"):
                corruptions.corrupt(images, name, 1)
            continue
        changes = []
        for severity in corruptions.SEVERITIES:
            out = corruptions.corrupt(images, name, severity, seed=3)
            assert out.dtype == np.uint8 and out.shape == images.shape, name
            np.testing.assert_array_equal(out, corruptions.corrupt(images, name, severity, seed=3))
            changes.append(np.abs(out.astype(float) - images).mean())
        assert changes[-1] > 0.5, (name, changes)  # severity 5 changes the images
        g = corruptions.corrupt(grey[:3], name, 3)
        assert g.shape == (3, 28, 28, 1) and g.dtype == np.uint8, name
    random = corruptions.corrupt(images, "gaussian_noise", 2, seed=1)
    assert not np.array_equal(random, corruptions.corrupt(images, "gaussian_noise", 2, seed=2))


def test_noise_statistics():
    grey = np.full((20, 32, 32, 3), 128, np.uint8)
    x = 128 / 255
    for severity, c in zip(corruptions.SEVERITIES, corruptions.PARAMETERS["gaussian_noise"]):
        delta = corruptions.corrupt(grey, "gaussian_noise", severity).astype(float) / 255 - x
        assert delta.std() == pytest.approx(c, rel=0.03) and abs(delta.mean()) < 0.01  # truncation: -0.5/255 on average
    for severity, lam in zip(corruptions.SEVERITIES, corruptions.PARAMETERS["shot_noise"]):
        values = corruptions.corrupt(grey, "shot_noise", severity).astype(float) / 255
        assert values.mean() == pytest.approx(x, abs=0.01)
        assert values.var() == pytest.approx(x / lam, rel=0.1)  # Poisson(x c) / c
    for severity, amount in zip(corruptions.SEVERITIES, corruptions.PARAMETERS["impulse_noise"]):
        out = corruptions.corrupt(grey, "impulse_noise", severity)
        flipped = (out == 0) | (out == 255)
        assert flipped.mean() == pytest.approx(amount, rel=0.15) and (out[~flipped] == 128).all()


def test_contrast_and_brightness_match_their_closed_forms(cifar):
    images, _ = cifar
    x = images.astype(np.float64) / 255
    for severity, c in zip(corruptions.SEVERITIES, corruptions.PARAMETERS["contrast"]):
        means = x.mean(axis=(1, 2), keepdims=True)
        expected = np.uint8(np.clip((x - means) * c + means, 0, 1) * 255)
        np.testing.assert_array_equal(corruptions.corrupt(images, "contrast", severity), expected)
    c = corruptions.PARAMETERS["brightness"][2]
    expected = np.empty(images.shape[:3] + (3,))
    for index in np.ndindex(*images.shape[:3]):
        h, s, v = colorsys.rgb_to_hsv(*x[index])
        expected[index] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
    out = corruptions.corrupt(images, "brightness", 3).astype(int)
    assert np.abs(out - np.uint8(np.clip(expected, 0, 1) * 255).astype(int)).max() <= 1  # float rounding at truncation


def test_defocus_blur_is_the_disk_kernel_with_reflect_101_borders(cifar):
    images, _ = cifar
    for severity in (1, 5):
        radius, alias = corruptions.PARAMETERS["defocus_blur"][severity - 1]
        kernel = corruptions.disk(radius, alias)
        assert kernel.shape == (17, 17) and kernel.sum() == pytest.approx(1.0)
        x = images[:2].astype(np.float64) / 255
        padded = np.pad(x, ((0, 0), (8, 8), (8, 8), (0, 0)), mode="reflect")  # numpy 'reflect' = cv2 REFLECT_101
        expected = np.zeros_like(x)
        for i in range(17):
            for j in range(17):
                expected += kernel[i, j] * padded[:, i:i + 32, j:j + 32]
        out = corruptions.corrupt(images[:2], "defocus_blur", severity).astype(int)
        assert np.abs(out - np.uint8(np.clip(expected, 0, 1) * 255)).max() <= 1


def test_zoom_blur_is_the_generators_scipy_zoom(cifar):
    images, _ = cifar
    severity = 4
    x = images.astype(np.float32) / 255

    def literal_clipped_zoom(img, factor):  # make_cifar_c.py's helper, on one image
        h = img.shape[0]
        ch = int(np.ceil(h / factor))
        top = (h - ch) // 2
        img = ndimage.zoom(img[top:top + ch, top:top + ch], (factor, factor, 1), order=1)
        trim = (img.shape[0] - h) // 2
        return img[trim:trim + h, trim:trim + h]

    factors = corruptions.PARAMETERS["zoom_blur"][severity - 1]
    expected = np.stack([(im + sum(literal_clipped_zoom(im, f) for f in factors)) / (len(factors) + 1) for im in x])
    out = corruptions.corrupt(images, "zoom_blur", severity).astype(int)
    assert np.abs(out - np.uint8(np.clip(expected, 0, 1) * 255)).max() <= 1


def test_line_blur_is_a_one_sided_gaussian_line_with_repeated_edges():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(9, 12, 2))
    radius, sigma = 3, 1.5
    weights = np.exp(-np.arange(7) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    expected = sum(w * image[:, np.minimum(np.arange(12) + i, 11)] for i, w in enumerate(weights))  # angle 0
    np.testing.assert_allclose(corruptions.line_blur(image, radius, sigma, 0.0), expected, atol=1e-12)
    np.testing.assert_allclose(corruptions.line_blur(np.full((8, 8, 1), 0.3), 4, 2.0, 37.0), 0.3, atol=1e-12)


def test_power_beyond_is_a_cosines_ring():
    """A corruption that adds one cosine of frequency (0, k): all its power at distance k."""
    k = 5
    clean = np.full((2, 32, 32, 1), 100, np.uint8)
    wave = np.cos(2 * np.pi * k * np.arange(32) / 32)[None, None, :, None] * 40
    corrupted = np.uint8(clean + np.round(wave) * np.ones((2, 32, 1, 1)))
    from hfcjax.evaluators import corruptions as evaluator

    profile = np.asarray(evaluator.power_beyond(clean, corrupted))
    assert profile[:k - 1].min() > 0.97 and profile[k + 1:].max() < 0.03


def linear_model(images, labels):
    """A linear classifier fitted by least squares on the images: a real, deterministic model."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255
    w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], np.eye(10)[labels], rcond=None)[0].astype(np.float32)
    return lambda variables, z: jnp.c_[z.reshape(z.shape[0], -1), jnp.ones(z.shape[0])] @ w


def test_evaluator_accuracies_mce_against_itself_and_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HFCJAX_CACHE_DIR", str(tmp_path / "cache"))
    train, train_labels = data.load("fashion_mnist", "train")
    images, labels = data.load("fashion_mnist", "test")
    images, labels = images[:60], labels[:60].astype(np.int32)
    fn = linear_model(train[:3000], train_labels[:3000])
    cfg = evaluators.section_defaults("corruptions")
    cfg.update(enabled=True, corruptions=("contrast", "gaussian_noise"), severities=(1, 5))
    inputs = common.Inputs({}, variants.model_variants({}, rhos=(0.0,)), images, labels, (4.0,))
    lines = []
    evaluator = evaluators.module("corruptions").Evaluator(fn, cfg, common.Shared(batch_size=25, log=lines.append))
    (row,) = evaluator.run(inputs)
    for i, name in enumerate(cfg.corruptions):
        for j, severity in enumerate(cfg.severities):
            corrupted = corruptions.corrupt(images, name, severity)
            direct = float((np.argmax(fn({}, measure.to_unit(corrupted)), -1) == labels).mean())
            assert row.accuracy[i][j] == pytest.approx(direct)
    assert row.mean_error == pytest.approx(1 - np.mean(row.accuracy)) and row.mce is None
    assert any("ETA" in line for line in lines)
    cached = sorted((tmp_path / "cache" / "corruptions").iterdir())
    assert len(cached) == 4
    evaluator.write([row], tmp_path / "out", inputs)
    saved = json.loads((tmp_path / "out" / "corruptions.json").read_text())
    assert (tmp_path / "out" / "corruptions.png").read_bytes()[:4] == b"\x89PNG"
    cfg.baseline = str(tmp_path / "out" / "corruptions.json")
    stamps = [p.stat().st_mtime_ns for p in cached]
    (again,) = evaluators.module("corruptions").Evaluator(fn, cfg, common.Shared(batch_size=25, log=print)).run(inputs)
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # read back, not generated again
    assert again.accuracy == saved["rows"][0]["accuracy"]
    assert again.mce == pytest.approx(1.0) and again.ce == pytest.approx([1.0, 1.0])
    cfg.update(corruptions=("fog",))
    with pytest.raises(UserError, match="lacks \\['fog'\\]"):
        evaluators.module("corruptions").Evaluator(fn, cfg, common.Shared(batch_size=25, log=print)).run(inputs)


@pytest.mark.parametrize("key,value,message", [
    ("corruptions", ("fog", "rain"), "corruptions must be distinct names among"),
    ("corruptions", (), "corruptions must be distinct names among"),
    ("severities", (2, 1), "severities must be increasing values among"),
    ("severities", (6,), "severities must be increasing values among"),
    ("seed", -1, "seed must be an integer >= 0")])
def test_bad_settings_are_one_line(key, value, message):
    evals = evaluators.default_config()
    evals.corruptions[key] = value
    with pytest.raises(UserError, match=f"config.evals.corruptions.{message}"):
        evaluators.validate(evals)


def test_bad_corruption_calls_are_one_line(cifar):
    images, _ = cifar
    with pytest.raises(UserError, match="unknown corruption 'rain'"):
        corruptions.corrupt(images, "rain", 1)
    with pytest.raises(UserError, match="severity must be one of"):
        corruptions.corrupt(images, "fog", 0)
    with pytest.raises(UserError, match="uint8 images"):
        corruptions.corrupt(images.astype(np.float32), "fog", 1)
