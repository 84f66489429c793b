"""`margins`: how far is the decision boundary along each band of frequencies? Ortiz-Jimenez
et al. 2020 ("Hold me tight!"): the minimal L2 perturbation that changes the prediction when
it may only use the orthonormal 2-D DCT basis images of one diagonal block
(s <= u, v < s + block, s = 0, stride, 2 stride, ..., low to high), found by DeepFool
restricted to that subspace (`attacks.deepfool`, towards the `candidates` classes ranked
highest after the true one), per image; beside them the margin in the
whole input space. A small margin in a band: the model is sensitive there; a large one: it
is (nearly) invariant along it. Images the model gets wrong are left out (their margin is
0); an image DeepFool does not move across the boundary within `steps` has no margin in that
band (infinite: the band may hold nothing the model reads). Margins are distances, not
images: no [0, 1] box. One row per model variant.

Files: margins.{json,csv,md} (per band the median and quartiles, every image's margins in
the JSON) and margins.png (median margin per band, one line per rho; the distribution of the
model as given).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import attacks, backend, data, frequency, measure, plots, reports
from hfcjax.evaluators import common


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.block = 8  # side of the diagonal DCT blocks (Ortiz-Jimenez et al.: 8 on CIFAR-10)
    c.stride = 4  # between the blocks' starts
    c.steps = 10  # DeepFool linearisations per image and band at most (the loop ends once every image crossed)
    c.overshoot = 0.02
    c.candidates = 4  # boundaries looked at: the classes the clean logits rank highest after the true one
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    for key in ("block", "stride", "steps", "candidates"):
        common.check_int(c, key, 1)
    common.check_number(c, "overshoot")


@dataclasses.dataclass(frozen=True)
class Row:
    """Over the `images` the model classifies correctly, per band (`band_starts`, then the
    whole space as `full_*`): the median margin and its quartiles among the images with a
    margin, and the fraction with one (`found`). `per_image[i][j]`: image i's margin in band
    j (the last: the whole space), None where there is none; the images in order."""

    name: str
    rho: float
    bn_reestimated: bool
    block: int
    band_starts: List[int]
    images: int
    median: List[Optional[float]]
    q25: List[Optional[float]]
    q75: List[Optional[float]]
    found: List[float]
    full_median: Optional[float]
    per_image: List[List[Optional[float]]]


def summarise(margins: np.ndarray):
    """(median, q25, q75, found) per column of ``[images, bands]`` margins (inf: none)."""
    out = ([], [], [], [])
    for column in margins.T:
        finite = column[np.isfinite(column)]
        quantiles = np.quantile(finite, [0.5, 0.25, 0.75]).tolist() if len(finite) else [None] * 3
        for target, value in zip(out, quantiles + [float(len(finite) / max(len(column), 1))]):
            target.append(value)
    return out


class Evaluator(common.Evaluator):
    name = "margins"
    stage = 2
    caption = "Median L2 margin per diagonal DCT block (low to high frequency), images the model gets right"
    figure_note = "Margins per band"

    def margins_fn(self, starts: Sequence[int]):
        """Jitted (variables, uint8 images, labels) -> ([B, bands + 1] margins, [B] correct): the
        DCT blocks starting at `starts`, then the whole space."""
        block, c = int(self.cfg.block), self.cfg

        def run(variables, images_u8, labels):
            x = measure.to_unit(images_u8)
            fn = lambda z: self.apply_fn(variables, z)
            fool = functools.partial(attacks.deepfool, fn, x, labels, steps=c.steps, overshoot=c.overshoot,
                                     candidates=c.candidates)

            def band(start):
                return fool(project=lambda v: frequency.dct_block_project(v, start, block)).norm

            per_band = jax.vmap(band)(jnp.asarray(starts, jnp.int32))  # [bands, B]: one loop for all bands
            return jnp.concatenate([per_band, fool().norm[None]]).T, jnp.argmax(fn(x), -1) == labels

        return jax.jit(run, compiler_options=backend.eval_compiler_options())

    def margins(self, fn, starts: Sequence[int], variant: common.ModelVariant, inputs: common.Inputs,
                progress: common.GridProgress) -> Row:
        images, labels = inputs.images, np.asarray(inputs.labels)
        kept, right = [], []
        for b, (x, y, m) in enumerate(data.batches(images, labels, self.shared.batch_size, shuffle=False,
                                                   drop_remainder=False)):
            margins, correct = fn(variant.variables, x, y)
            kept.append(np.asarray(margins, np.float64)[m > 0])
            right.append(np.asarray(correct)[m > 0])
            progress.advance(int(m.sum()), f"{variant.name}: batch {b + 1}")
        margins = np.concatenate(kept)[np.concatenate(right)]
        median, q25, q75, found = summarise(margins)
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated, block=self.cfg.block,
                   band_starts=list(starts), images=len(margins), median=median[:-1], q25=q25[:-1], q75=q75[:-1],
                   found=found[:-1], full_median=median[-1],
                   per_image=[[float(v) if np.isfinite(v) else None for v in image] for image in margins])

    def run(self, inputs: common.Inputs) -> List[Row]:
        starts = frequency.dct_bands(*inputs.images.shape[1:3], self.cfg.block, self.cfg.stride)  # bad block: one line
        fn = self.margins_fn(starts)
        progress = common.GridProgress(len(inputs.variants), len(inputs.images), self.log, what="margins grid")
        rows = []
        for variant in inputs.variants:
            start = time.time()
            kept = progress.kept_or_run(f"margins {variant.name}", inputs.partial, functools.partial(
                lambda v: common.to_json(self.margins(fn, starts, v, inputs, progress)), variant))
            rows.append(Row(**kept))
            self.log(f"  {variant.name}: margins in {time.time() - start:.1f} s")
        return rows

    def columns(self, rows: List[Row]) -> List[reports.Column]:
        starts, block = (rows[0].band_starts, rows[0].block) if rows else ([], 0)
        return (common.variant_columns() + [reports.field("images", "images", fmt=str),
                                            reports.field("full_median", "whole space")]
                + [reports.field("median", f"DCT {s}-{s + block - 1}", f"median_dct{s}", index=i)
                   for i, s in enumerate(starts)]
                + [reports.field(key, None, f"{key}_dct{s}", index=i) for key in ("q25", "q75", "found")
                   for i, s in enumerate(starts)])

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        common.write_rows(self, rows, out_dir, inputs, figure)


def figure(rows: Sequence[Dict], path) -> str:
    """Left: the median L2 margin per diagonal DCT block (quartiles shaded), one line per row
    (rho), the whole space's median dashed. Right: every image's margin per block for the
    first row (the model as given)."""
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(11, 3.4))
    colours = plots.palette(len(rows))
    as_float = lambda values: np.array([np.nan if v is None else v for v in values], np.float64)
    for c, row in zip(colours, rows):
        xs = np.asarray(row["band_starts"]) + (row["block"] - 1) / 2
        axes[0].plot(xs, as_float(row["median"]), "o-", color=c, ms=3, label=row["name"])
        axes[0].fill_between(xs, as_float(row["q25"]), as_float(row["q75"]), color=c, alpha=0.15)
        if row["full_median"] is not None:
            axes[0].axhline(row["full_median"], color=c, ls="--", lw=0.8)
    if rows:
        first = rows[0]
        per_band = [[m for m in (image[j] for image in first["per_image"]) if m is not None]
                    for j in range(len(first["band_starts"]))]
        positions = [j for j, values in enumerate(per_band) if values]
        if positions:
            axes[1].boxplot([per_band[j] for j in positions], positions=positions, widths=0.6, showfliers=True,
                            flierprops={"markersize": 2})
        axes[1].set_xticks(range(len(first["band_starts"])),
                           [f"{s}-{s + first['block'] - 1}" for s in first["band_starts"]], fontsize=7)
        axes[1].set_title(f"{first['name']}: every image's margin", fontsize=9)
    shown = [v for row in rows for image in row["per_image"] for v in image if v is not None and v > 0]
    for ax in axes:
        if shown:  # none when no image was classified right (a model at chance)
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no correctly classified image: no margins", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_ylabel("L2 margin (pixels in [0, 1])", fontsize=8)
    axes[0].set_xlabel("diagonal DCT block (centre index; low -> high frequency)", fontsize=8)
    axes[1].set_xlabel("diagonal DCT block", fontsize=8)
    axes[0].set_title("median margin per band (dashed: whole space)", fontsize=9)
    axes[0].legend(fontsize=6)
    return plots.save(fig, path)
