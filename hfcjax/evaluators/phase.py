"""`phase`: does the model follow the phase spectrum (shape) or the amplitude spectrum
(texture)? Chen et al. 2021's amplitude-phase recombination: images 2k and 2k+1 of each
batch (an even batch size keeps the pairs independent of it) swap amplitude spectra, and
where their labels differ we count how often the model predicts the label of the image that
gave the phase and how often the one that gave the amplitude. Beside it, accuracy on
phase-only images (each image's phase with the mean amplitude of all evaluation images) and
amplitude-only images (each image's amplitude with one fixed random phase, the phase of a
uniform-noise image drawn from `seed`). Every recombined image is clipped to [0, 1] before
the model sees it. One row per model variant.

Files: phase.{json,csv,md} and phase.png (example recombinations and the rates per rho).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import frequency, measure, plots, reports
from hfcjax.evaluators import common

KINDS = ("follows_phase", "follows_amplitude", "phase_only", "amplitude_only")


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.seed = 0  # the fixed random phase of the amplitude-only images
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    common.check_int(c, "seed", 0)


def partners(batch: int) -> np.ndarray:
    """Image j's partner in a batch: j XOR 1 (0<->1, 2<->3, ...); an odd batch's last image
    has none (-1)."""
    p = np.arange(batch) ^ 1
    return np.where(p < batch, p, -1)


def mean_amplitude(images_u8: np.ndarray) -> np.ndarray:
    """The mean amplitude spectrum ``[H, W // 2 + 1, C]`` (rfft2's half) of uint8 images, in
    [0, 1] units (numpy, in float64, so it does not depend on a batch size)."""
    total = 0.0
    for start in range(0, len(images_u8), 1000):
        x = images_u8[start:start + 1000].astype(np.float64) / 255.0
        total = total + np.abs(np.fft.rfft2(x, axes=(-3, -2))).sum(axis=0)
    return total / len(images_u8)


def random_phase(shape, seed: int) -> np.ndarray:
    """The phase ``[H, W // 2 + 1, C]`` (rfft2's half) of a uniform-noise image of `shape`."""
    noise = np.random.default_rng(seed).uniform(size=shape)
    return np.angle(np.fft.rfft2(noise, axes=(-3, -2)))


def variants(x, amplitude_mean, phase_fixed):
    """(swapped, phase_only, amplitude_only) images of a batch `x` ``[B, H, W, C]``: image j
    with the amplitude of its partner (itself when it has none), clipped to [0, 1]."""
    amplitude, phasor = frequency.amplitude_phase(x, phasor=True)
    p = partners(x.shape[0])
    other = jnp.asarray(np.where(p >= 0, p, np.arange(x.shape[0])))
    amplitudes = jnp.stack([amplitude[other], jnp.broadcast_to(amplitude_mean, amplitude.shape), amplitude])
    phasors = jnp.stack([phasor, phasor, jnp.broadcast_to(jnp.exp(1j * phase_fixed), phasor.shape)])
    return tuple(jnp.clip(frequency.recombine(amplitudes, phasors, x.shape[-2]), 0.0, 1.0))  # one inverse transform


@dataclasses.dataclass(frozen=True)
class Row:
    """`pairs`: images whose partner has another label; of them, the fraction predicted as
    the label of their own phase (`follows_phase`) and as their partner's, whose amplitude
    they carry (`follows_amplitude`). Accuracy on the original, phase-only and
    amplitude-only images."""

    name: str
    rho: float
    bn_reestimated: bool
    clean: float
    pairs: int
    follows_phase: float
    follows_amplitude: float
    phase_only: float
    amplitude_only: float


class Evaluator(common.BatchEvaluator):
    name = "phase"
    figure_note = "Examples and rates"
    Row = Row

    def args(self, inputs: common.Inputs):
        shape = inputs.images.shape[1:]
        return {"amplitude": jnp.asarray(mean_amplitude(inputs.images), jnp.float32),
                "phase": jnp.asarray(random_phase(shape, int(self.cfg.seed)), jnp.float32)}

    def batch_sums(self, ctx: common.BatchContext, args):
        swapped, phase_only, amplitude_only = variants(ctx.x, args["amplitude"], args["phase"])
        p = partners(ctx.x.shape[0])
        has = jnp.asarray(p >= 0)
        other = jnp.asarray(np.where(p >= 0, p, 0))
        pair = has & (ctx.mask[other] > 0) & (ctx.labels[other] != ctx.labels)
        predicted, on_phase, on_amplitude = ctx.predictions(swapped, phase_only, amplitude_only)
        return {"clean": ctx.count(ctx.clean_ok), "pairs": ctx.count(pair),
                "follows_phase": ctx.count(pair & (predicted == ctx.labels)),
                "follows_amplitude": ctx.count(pair & (predicted == ctx.labels[other])),
                "phase_only": ctx.count(on_phase == ctx.labels),
                "amplitude_only": ctx.count(on_amplitude == ctx.labels)}

    def row(self, variant: common.ModelVariant, sums, n: int, seconds: float) -> Row:
        pairs = int(sums["pairs"])
        per_pair = lambda key: float(sums[key] / pairs) if pairs else 0.0
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated,
                   clean=float(sums["clean"] / n), pairs=pairs, follows_phase=per_pair("follows_phase"),
                   follows_amplitude=per_pair("follows_amplitude"), phase_only=float(sums["phase_only"] / n),
                   amplitude_only=float(sums["amplitude_only"] / n))

    def scalars(self, row: Row, split: str) -> Dict[str, float]:
        return common.row_scalars(row, split, self.name, KINDS, ())

    def columns(self, rows=()) -> List[reports.Column]:
        return common.variant_columns() + [
            reports.field("clean", "clean"), reports.field("pairs", "pairs", fmt=str),
            reports.field("follows_phase", "follows phase"), reports.field("follows_amplitude", "follows amplitude"),
            reports.field("phase_only", "phase-only acc"), reports.field("amplitude_only", "amplitude-only acc")]

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        common.write_rows(self, rows, out_dir, inputs)
        args = self.args(inputs)  # the same mean amplitude and random phase as the run
        x = measure.to_unit(inputs.images[:4])
        examples = [np.asarray(v) for v in jax.jit(variants)(x, args["amplitude"], args["phase"])]
        figure(np.asarray(x), examples, [common.to_json(r) for r in rows if not r.bn_reestimated],
               Path(out_dir) / "phase.png")


def figure(images, examples, rows: Sequence[Dict], path) -> str:
    """Left: per image, the original, its partner, the image with its own phase and the
    partner's amplitude, the phase-only and the amplitude-only image. Right: per model
    variant, the fraction of label-differing pairs that follow the phase or the amplitude,
    and the accuracy on clean, phase-only and amplitude-only images."""
    swapped, phase_only, amplitude_only = examples
    n = len(images)
    fig = plots.pyplot().figure(figsize=(12, max(2.2, 1.3 * n)))
    grid = fig.add_gridspec(n, 6, width_ratios=[1, 1, 1, 1, 1, 4.5], wspace=0.08)
    titles = ("image", "partner", "its phase +\npartner's amplitude", "phase only", "amplitude only")
    for i in range(n):
        partner = i ^ 1 if (i ^ 1) < n else i
        for j, image in enumerate((images[i], images[partner], swapped[i], phase_only[i], amplitude_only[i])):
            plots.show(fig.add_subplot(grid[i, j]), image, titles[j] if i == 0 else None)
    ax = fig.add_subplot(grid[:, 5])
    keys = ("clean", "follows_phase", "follows_amplitude", "phase_only", "amplitude_only")
    labels = ("clean acc", "follows phase", "follows amplitude", "phase-only acc", "amplitude-only acc")
    width = 0.8 / max(len(rows), 1)
    colours = plots.palette(len(rows))
    for k, (c, row) in enumerate(zip(colours, rows)):
        ax.bar(np.arange(len(keys)) + (k - (len(rows) - 1) / 2) * width, [row[key] for key in keys], width,
               color=c, label=row["name"])
    ax.set_xticks(np.arange(len(keys)), labels, fontsize=7, rotation=20)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.yaxis.tick_right()
    ax.legend(fontsize=6, loc="upper right")
    ax.set_title("pairs of different labels: whose label does the model predict?", fontsize=8)
    return plots.save(fig, path)
