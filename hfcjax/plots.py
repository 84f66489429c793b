"""Matplotlib figures (PNG) from arrays and metrics; numerics never import this module."""

from __future__ import annotations

import functools
import importlib
from typing import Dict, Optional, Sequence

import numpy as np

from hfcjax import data, frequency, measure, reports
from hfcjax.errors import UserError


def pyplot():
    """matplotlib.pyplot with the Agg backend, for the evaluators' own figures."""
    return _mpl()


def palette(count: int, cmap: str = "plasma", low: float = 0.0, high: float = 0.85) -> np.ndarray:
    """`count` RGBA colours of a matplotlib colormap, evenly spaced from `low` to `high`
    (plasma for rows of models, viridis for an ordered series)."""
    return getattr(_mpl().cm, cmap)(np.linspace(low, high, max(count, 1)))


def _mpl(submodule: str = "pyplot"):
    """matplotlib.`submodule` (pyplot with the Agg backend), imported on first use: a process
    that draws no figure (a run with config.draw_figures off, an evaluation without plots)
    does not pay matplotlib's import, 0.5-0.7 s per process (docs/benchmarks.md)."""
    _agg()
    return importlib.import_module(f"matplotlib.{submodule}")


@functools.cache
def _agg() -> None:
    """Figures are files: the Agg backend, chosen once (a notebook shows the PNGs it writes)."""
    import matplotlib

    matplotlib.use("Agg")


def save(fig, path) -> str:
    """Writes atomically (temp file + rename) so a crash never leaves half a PNG."""
    try:
        with reports.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        _mpl().close(fig)
    return str(path)


def show(ax, image, title=None, symmetric=False):
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
    fig, axes = _mpl().subplots(n, cols, figsize=(1.2 * cols, 1.25 * n), squeeze=False)
    parts = [frequency.split(images, r) for r in radii]
    for i in range(n):
        name = ""
        if labels is not None:
            name = class_names[labels[i]] if class_names else str(labels[i])
        show(axes[i, 0], images[i], f"original {name}".strip() if i == 0 or name else None)
        for k, r in enumerate(radii):
            low, high = parts[k]
            show(axes[i, 1 + 2 * k], low[i], f"LFC r={r:g}" if i == 0 else None)
            show(axes[i, 2 + 2 * k], high[i], f"HFC r={r:g}" if i == 0 else None, symmetric=True)
    fig.suptitle("Low/high-frequency split (Wang et al. 2020, Sec. 3.1); HFC stretched for display", fontsize=8)
    return save(fig, path)


def _accuracy_lines(ax, records: Sequence[Dict], split: str, radii: Sequence[float], label: str) -> None:
    """`split`'s accuracy along epochs: x in black, LFC solid and HFC dashed per radius."""
    epochs = [r["epoch"] for r in records]
    variants = measure.recorded(records, split, measure.tracked_variants(radii))
    radii = [r for r in radii if measure.low(r) in variants and measure.high(r) in variants]
    curves = measure.series(records, split, variants)
    colours = palette(len(radii), "viridis", high=0.9)
    ax.plot(epochs, curves[measure.ORIGINAL], "k-", lw=2, label=label)
    for c, radius in zip(colours, radii):
        for variant, style in ((measure.low(radius), "-"), (measure.high(radius), "--")):
            ax.plot(epochs, curves[variant], style, color=c, label=variant.label)


def training_curves(records: Sequence[Dict], radii: Sequence[float], path, title: Optional[str] = None) -> str:
    """Figure-3/5-style panels: accuracy along epochs of train/test on the original images
    and on their LFC and HFC at every radius in `radii` (metrics.jsonl records)."""
    if not records:
        raise UserError("no metrics to plot: metrics.jsonl is empty.")
    fig, axes = _mpl().subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, split in zip(axes, measure.SPLITS):
        _accuracy_lines(ax, records, split, radii, f"{split} (original)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_mpl("ticker").MaxNLocator(integer=True))
        ax.set_title(f"{split} set")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def kernels(kernel_sets: Dict[str, np.ndarray], path, max_kernels: int = 16) -> str:
    """Figure-7-style grid of first-layer HWIO kernels: one row block per model/rho,
    one column per output kernel, one row per input channel (shared colour scale per block)."""
    names = list(kernel_sets)
    first = np.asarray(kernel_sets[names[0]])
    channels, count = first.shape[2], min(first.shape[3], max_kernels)
    fig, axes = _mpl().subplots(len(names) * channels, count, figsize=(0.55 * count, 0.6 * channels * len(names) + 0.4),
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
    return save(fig, path)


def hfc_story(images, lows, highs, rows: Sequence[Dict], path, radius: float, class_names=None) -> str:
    """Figure 2: images predicted right on the original and on the HFC but wrong on the LFC.

    `rows[i]` holds 'label' and, for 'original'/'low'/'high', the predicted class and confidence.
    """
    n = len(images)
    if n == 0:
        raise UserError("no examples to draw")
    fig, axes = _mpl().subplots(n, 3, figsize=(4.2, 1.45 * n), squeeze=False)
    name = (lambda k: class_names[k]) if class_names else str
    for i in range(n):
        for j, (key, image) in enumerate((("original", images[i]), ("low", lows[i]), ("high", highs[i]))):
            pred, conf = rows[i][key]
            show(axes[i, j], image, symmetric=(key == "high"))
            ok = pred == rows[i]["label"]
            axes[i, j].set_title(f"{name(pred)} {conf:.2f}", fontsize=7, color="green" if ok else "red")
        axes[i, 0].set_ylabel(f"true: {name(rows[i]['label'])}", fontsize=7)
    fig.suptitle(f"original | LFC | HFC (r={radius:g}): prediction and confidence", fontsize=8)
    return save(fig, path)


def figure2(images_u8, radius: float, rows: Sequence[Dict], path, *, inclusive: bool = True,
            class_names=None) -> str:
    """`hfc_story` for uint8 (or [0, 1] float) images: splits them at `radius` first (rows from
    `evaluators.FrequencyReport.figure2_rows`)."""
    x = np.asarray(measure.to_unit(np.asarray(images_u8)))
    low, high = frequency.split(x, radius, inclusive=inclusive)
    return hfc_story(x, np.asarray(low), np.asarray(high), rows, path, radius=radius, class_names=class_names)


def robustness_curves(rows: Sequence[Dict], eps: Sequence[float], path) -> str:
    """Accuracy under FGSM and PGD along eps, one line per rho (Table 2 as a picture)."""
    fig, axes = _mpl().subplots(1, 2, figsize=(9, 3.4), sharey=True)
    colours = palette(len(rows))
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
    return save(fig, path)


def filtering_curves(rows: Sequence[Dict], path) -> str:
    """Accuracy under low- and high-pass filtering along the radius, and per band-pass ring
    the accuracy with only the ring kept and with it removed; one colour per rho."""
    fig, axes = _mpl().subplots(1, 3, figsize=(12, 3.4), sharey=True)
    colours = palette(len(rows))
    for c, row in zip(colours, rows):
        axes[0].plot(row["radii"], row["low"], "o-", color=c, ms=3, label=row["name"])
        axes[0].plot(row["radii"], row["high"], "s--", color=c, ms=3)
        centres = np.asarray(row["ring_starts"]) + row["ring_width"] / 2
        axes[1].plot(centres, row["ring_only"], "o-", color=c, ms=3)
        axes[2].plot(centres, row["ring_removed"], "o-", color=c, ms=3)
        axes[2].axvline(row["critical_band"] + row["ring_width"] / 2, color=c, alpha=0.4, lw=1)
    for ax, title in zip(axes, ("low-pass (solid) / high-pass (dashed)", "only the ring kept", "the ring removed")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("radius (frequency distance)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[2].legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save(fig, path)


def heatmaps(maps: Dict[str, np.ndarray], path, eps: Optional[float] = None, radii: Sequence[float] = ()) -> str:
    """Fourier heat maps side by side (error rate per frequency, zero frequency in the centre,
    one colour scale shared by all maps, from their lowest to their highest error), with the
    LFC/HFC circles of `radii`."""
    names = list(maps)
    fig, axes = _mpl().subplots(1, len(names), figsize=(3.0 * len(names) + 0.8, 3.0), squeeze=False)
    low = min(float(np.min(m)) for m in maps.values())
    high = max(float(np.max(m)) for m in maps.values())
    image = None
    for ax, name in zip(axes[0], names):
        error = np.asarray(maps[name])
        h, w = error.shape
        image = ax.imshow(error, cmap="magma", vmin=low, vmax=max(high, low + 1e-6), interpolation="nearest")
        for r in radii:
            ax.add_patch(_mpl("patches").Circle((w // 2, h // 2), r, fill=False, color="cyan", lw=0.6, ls="--"))
        ax.set_title(name, fontsize=8)
        ax.set_xticks([0, w // 2, w - 1], [f"{-(w // 2)}", "0", f"{w - 1 - w // 2}"], fontsize=6)
        ax.set_yticks([0, h // 2, h - 1], [f"{-(h // 2)}", "0", f"{h - 1 - h // 2}"], fontsize=6)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, label="error rate")
    norm = f" (L2 eps={eps:g})" if eps is not None else ""
    fig.suptitle(f"Fourier heat maps{norm}; dashed circles: radii {', '.join(f'{r:g}' for r in radii)}", fontsize=8)
    return save(fig, path)


def perturbation_spectra(rows: Sequence[Dict], path) -> str:
    """Mean radial power spectrum of the successful perturbations (x_adv - x) of each attack
    at its largest eps, one line per row (rho), log scale."""
    attacks = [a for a in rows[0]["spectra"]]
    fig, axes = _mpl().subplots(1, len(attacks), figsize=(3.0 * len(attacks), 3.0), sharey=True, squeeze=False)
    colours = palette(len(rows))
    for ax, attack in zip(axes[0], attacks):
        for c, row in zip(colours, rows):
            spectrum = row["spectra"][attack]
            if spectrum and not isinstance(spectrum[0], float):
                spectrum = spectrum[-1]  # one spectrum per eps: the largest
            if spectrum:
                ax.semilogy(np.arange(len(spectrum)), np.maximum(spectrum, 1e-12), color=c, label=row["name"])
        ax.set_title(f"{attack} (largest eps)", fontsize=8)
        ax.set_xlabel("radius (frequency)", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mean power of successful perturbations", fontsize=7)
    fullest = max(axes[0], key=lambda ax: len(ax.get_lines()))  # a panel may have no successful attack
    if fullest.get_lines():
        fig.legend(*fullest.get_legend_handles_labels(), fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save(fig, path)


def compare_runs(histories: Dict[str, Sequence[Dict]], radii: Sequence[float], path, split: str = "train",
                 title: Optional[str] = None) -> str:
    """Figures 3-6: one panel per run with the `split` accuracy of x (black), of its LFC (solid)
    and HFC (dashed) at every radius in `radii`, along epochs; shared y axis."""
    names = list(histories)
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig, axes = _mpl().subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names):
        _accuracy_lines(ax, histories[name], split, radii, f"{split} x")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(_mpl("ticker").MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("accuracy")
    axes.flat[len(names) - 1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def main(argv=None):
    """python -m hfcjax.plots --dataset cifar10 --radii 4,8,12,16 --out split.png [--count 4]:
    the Figure-2-style split of the first test images of a dataset."""
    import sys

    from absl import flags

    from hfcjax import cli

    fv = flags.FlagValues()
    flags.DEFINE_enum("dataset", "cifar10", sorted(data.DATASETS), "Dataset whose test images to split.",
                      flag_values=fv)
    flags.DEFINE_list("radii", ["4", "8", "12", "16"], "Comma-separated radii.", flag_values=fv)
    flags.DEFINE_integer("count", 4, "Number of images (rows).", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("out", None, "PNG file to write.", required=True, flag_values=fv)
    cli.parse_flags([sys.argv[0], *(sys.argv[1:] if argv is None else argv)], fv)
    with cli.clear_errors():
        radii = cli.floats(fv.radii, "radii")
        images, labels = data.load(fv.dataset, "test")
        path = split_examples(images[: fv.count], radii, fv.out, labels=labels[: fv.count],
                              class_names=data.get_spec(fv.dataset).class_names)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
