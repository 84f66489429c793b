"""The figures are real PNGs with the expected panels; writes are atomic."""

import numpy as np
from PIL import Image

from hfcjax import plots

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)


def size(path):
    with Image.open(path) as im:
        return im.size


def test_split_examples_cli_on_real_cifar(tmp_path):
    out = tmp_path / "split.png"
    plots.main(["--dataset", "cifar10", "--out", str(out), "--count", "3"])
    width, height = size(out)
    assert width > 2 * height > 0  # 9 columns, 3 rows
    assert not list(tmp_path.glob("*.tmp"))


def test_compare_runs_and_curves(tmp_path):
    history = [{"epoch": e, "train_acc": 0.1 * e, "test_acc": 0.1 * e,
                **{f"{s}_{c}_r{r}": 0.05 * e for s in ("train", "test") for c in ("low", "high") for r in (4, 8)}}
               for e in (1, 2, 3)]
    plots.compare_runs({"a": history, "b": history, "c": history}, (4, 8), tmp_path / "cmp.png")
    plots.training_curves(history, (4, 8), tmp_path / "curves.png")
    assert size(tmp_path / "cmp.png")[0] > size(tmp_path / "curves.png")[0] * 0.8


def test_kernels_and_story(tmp_path):
    k = np.random.default_rng(0).normal(size=(3, 3, 3, 8))
    plots.kernels({"rho=0": k, "rho=1": k * 2}, tmp_path / "k.png")
    x = np.random.default_rng(1).uniform(size=(2, 8, 8, 3))
    rows = [{"label": 1, "original": (1, 0.9), "low": (2, 0.6), "high": (1, 0.7)}] * 2
    plots.hfc_story(x, x, x - 0.5, rows, tmp_path / "story.png", radius=12)
    for name in ("k.png", "story.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
