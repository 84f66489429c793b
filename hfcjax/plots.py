"""Matplotlib figures (PNG) from arrays and metrics; numerics never import this module."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hfcjax import frequency  # noqa: E402


def _save(fig, path) -> str:
    """Writes atomically (temp file + rename) so a crash never leaves half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)


def _show(ax, image, title=None, symmetric=False):
    image = np.asarray(image, np.float32)
    if symmetric:  # HFC: zero-centred, stretch for visibility
        scale = max(np.abs(image).max(), 1e-8)
        image = 0.5 + 0.5 * image / scale
    image = np.clip(image, 0, 1)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def split_examples(images_u8, radii: Sequence[float], path, labels=None, class_names=None) -> str:
    """Figure-2-style grid: per image, the original then LFC and HFC at every radius.

    HFC images are zero-centred; they are shown stretched to [0, 1] around mid-grey.
    """
    images = np.asarray(images_u8, np.float32) / 255.0
    n, cols = len(images), 1 + 2 * len(radii)
    fig, axes = plt.subplots(n, cols, figsize=(1.2 * cols, 1.25 * n), squeeze=False)
    parts = [frequency.split(images, r) for r in radii]
    for i in range(n):
        name = ""
        if labels is not None:
            name = class_names[labels[i]] if class_names else str(labels[i])
        _show(axes[i, 0], images[i], f"original {name}".strip() if i == 0 or name else None)
        for k, r in enumerate(radii):
            low, high = parts[k]
            _show(axes[i, 1 + 2 * k], low[i], f"LFC r={r:g}" if i == 0 else None)
            _show(axes[i, 2 + 2 * k], high[i], f"HFC r={r:g}" if i == 0 else None, symmetric=True)
    fig.suptitle("Low/high-frequency split (Wang et al. 2020, Sec. 3.1); HFC stretched for display", fontsize=8)
    return _save(fig, path)


def read_metrics(path) -> List[Dict]:
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    return records


def training_curves(records: Sequence[Dict], path, title: Optional[str] = None) -> str:
    """Figure-3/5-style panels: accuracy along epochs of train/test on the original images
    and on their LFC and HFC at every tracked radius."""
    if not records:
        raise ValueError("no metrics to plot: metrics.jsonl is empty.")
    epochs = [r["epoch"] for r in records]
    radii = sorted({k.split("_r")[1] for k in records[0] if "_low_r" in k}, key=float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(radii), 1)))
    for ax, split in zip(axes, ("train", "test")):
        ax.plot(epochs, [r[f"{split}_acc"] for r in records], "k-", lw=2, label=f"{split} (original)")
        for c, radius in zip(colours, radii):
            ax.plot(epochs, [r[f"{split}_low_r{radius}"] for r in records], "-", color=c, label=f"LFC r={radius}")
            ax.plot(epochs, [r[f"{split}_high_r{radius}"] for r in records], "--", color=c, label=f"HFC r={radius}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(f"{split} set")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def kernels(kernel_sets: Dict[str, np.ndarray], path, max_kernels: int = 16) -> str:
    """Figure-7-style grid of first-layer HWIO kernels: one row block per model/rho,
    one column per output kernel, one row per input channel (shared colour scale per block)."""
    names = list(kernel_sets)
    first = np.asarray(kernel_sets[names[0]])
    channels, count = first.shape[2], min(first.shape[3], max_kernels)
    fig, axes = plt.subplots(len(names) * channels, count, figsize=(0.55 * count, 0.6 * channels * len(names) + 0.4),
                             squeeze=False)
    for b, name in enumerate(names):
        k = np.asarray(kernel_sets[name], np.float32)
        scale = max(np.abs(k[..., :count]).max(), 1e-8)
        for c in range(channels):
            for o in range(count):
                ax = axes[b * channels + c, o]
                ax.imshow(k[:, :, c, o], cmap="coolwarm", vmin=-scale, vmax=scale, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[b * channels + c, 0].set_ylabel(f"{name}\nch{c}" if c == 0 else f"ch{c}", fontsize=6,
                                                  rotation=0, ha="right", va="center")
    fig.suptitle("First-layer kernels (blue < 0 < red)", fontsize=8)
    return _save(fig, path)


def hfc_story(images, lows, highs, rows: Sequence[Dict], path, radius: float, class_names=None) -> str:
    """Figure 2: images predicted right on the original and on the HFC but wrong on the LFC.

    `rows[i]` holds 'label' and, for 'orig'/'low'/'high', the predicted class and confidence.
    """
    n = len(images)
    if n == 0:
        raise ValueError("no examples to draw")
    fig, axes = plt.subplots(n, 3, figsize=(4.2, 1.45 * n), squeeze=False)
    name = (lambda k: class_names[k]) if class_names else str
    for i in range(n):
        for j, (key, image) in enumerate((("orig", images[i]), ("low", lows[i]), ("high", highs[i]))):
            pred, conf = rows[i][key]
            _show(axes[i, j], image, symmetric=(key == "high"))
            ok = pred == rows[i]["label"]
            axes[i, j].set_title(f"{name(pred)} {conf:.2f}", fontsize=7, color="green" if ok else "red")
        axes[i, 0].set_ylabel(f"true: {name(rows[i]['label'])}", fontsize=7)
    fig.suptitle(f"original | LFC | HFC (r={radius:g}): prediction and confidence", fontsize=8)
    return _save(fig, path)


def robustness_curves(rows: Sequence[Dict], eps: Sequence[float], path) -> str:
    """Accuracy under FGSM and PGD along eps, one line per rho (Table 2 as a picture)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    colours = plt.cm.plasma(np.linspace(0, 0.85, len(rows)))
    xs = [0.0, *eps]
    for c, row in zip(colours, rows):
        for ax, attack in zip(axes, ("fgsm", "pgd")):
            ax.plot(xs, [row["clean"], *row[attack]], "o-", color=c, label=row["name"], ms=3)
    for ax, attack in zip(axes, ("FGSM", "PGD")):
        ax.set_title(attack)
        ax.set_xlabel("eps (L-inf, pixels in [0, 1])")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def compare_runs(histories: Dict[str, Sequence[Dict]], path, split: str = "train", title: Optional[str] = None) -> str:
    """Figures 3-6: one panel per run with the `split` accuracy of x (black), of its LFC (solid)
    and HFC (dashed) at every tracked radius, along epochs; shared y axis."""
    names = list(histories)
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names):
        records = histories[name]
        epochs = [r["epoch"] for r in records]
        radii = sorted({k.split("_r")[1] for k in records[0] if k.startswith(f"{split}_low_r")}, key=float)
        colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(radii), 1)))
        ax.plot(epochs, [r[f"{split}_acc"] for r in records], "k-", lw=2, label=f"{split} x")
        for c, radius in zip(colours, radii):
            ax.plot(epochs, [r[f"{split}_low_r{radius}"] for r in records], "-", color=c, label=f"LFC r={radius}")
            ax.plot(epochs, [r[f"{split}_high_r{radius}"] for r in records], "--", color=c, label=f"HFC r={radius}")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("accuracy")
    axes.flat[len(names) - 1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def main(argv=None):
    """python -m hfcjax.plots --dataset cifar10 --radii 4,8,12,16 --out split.png [--count 4]:
    the Figure-2-style split of the first test images of a dataset."""
    import argparse

    from hfcjax import data

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--radii", default="4,8,12,16")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    images, labels = data.load(args.dataset, "test")
    radii = [float(r) for r in args.radii.split(",")]
    path = split_examples(images[: args.count], radii, args.out, labels=labels[: args.count],
                          class_names=data.get_spec(args.dataset).class_names)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
