"""`gradients`: where in the spectrum does the model's input gradient (its saliency) put
its energy, and where do the sign patterns that break it? Per image, the gradient of the
cross-entropy with respect to the image, scaled to unit L2 norm (so a confident image's
tiny gradient counts as much as a doubtful one's), its mean radial power spectrum
(`frequency.radial_spectrum`) and the fraction of its energy beyond each radius of the
paper's split; the same for the FGSM sign pattern ``sign(gradient)`` of the images that
FGSM at `eps` turns from right to wrong (the successful perturbations' sign patterns).
One row per model variant. An image the model is certain of in float32 (softmax exactly 1)
has a zero gradient and is left out (`images` counts the rest); for nearly certain ones the
gradient's direction is partly rounding, as in any float32 saliency map.

Files: gradients.{json,csv,md} and gradients.png (the spectra, one line per rho).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import attacks, frequency, plots, reports
from hfcjax.evaluators import common


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.eps = 0.03  # the FGSM step (L-inf, pixels in [0, 1]) whose successful sign patterns are analysed
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    common.check_number(c, "eps", 0.0, strict=True)
    if c.eps > 1:
        raise ValueError(f"eps must lie in (0, 1] (pixels are in [0, 1]), got {c.eps!r}.")


def high_fraction(unit, radii, inclusive: bool):
    """Per image of unit-norm `unit` ``[B, H, W, C]``, the fraction of its energy beyond each
    radius ``[R, B]`` (the split is an orthogonal projection, so the energies add up)."""
    def beyond(r):
        high = frequency.split(unit, r, inclusive=inclusive)[1]
        return jnp.sum(high ** 2, axis=(1, 2, 3))
    return jax.lax.map(beyond, radii)


def unit_norm(v):
    norm = jnp.sqrt(jnp.sum(v ** 2, axis=(1, 2, 3), keepdims=True))
    return v / jnp.maximum(norm, 1e-30), norm[:, 0, 0, 0] > 0


@dataclasses.dataclass(frozen=True)
class Row:
    """Means over the images with a non-zero gradient (`images`; None when there were none, as
    for a model whose output does not depend on its input): the radial power spectrum of the
    unit-norm gradient and its energy fraction beyond each of `radii`; the same for the sign
    patterns of FGSM's successes (`fgsm_successes` images; None when there were none);
    accuracy under FGSM at `eps`."""

    name: str
    rho: float
    bn_reestimated: bool
    radii: List[float]
    images: int
    gradient_spectrum: Optional[List[float]]
    gradient_high: Optional[List[float]]
    fgsm: float
    fgsm_successes: int
    sign_spectrum: Optional[List[float]]
    sign_high: Optional[List[float]]


class Evaluator(common.BatchEvaluator):
    name = "gradients"
    figure_note = "Spectra"
    Row = Row

    def args(self, inputs: common.Inputs):
        self._radii = [float(r) for r in inputs.radii]
        return {"eps": jnp.float32(self.cfg.eps), "radii": jnp.asarray(self._radii, jnp.float32)}

    def batch_sums(self, ctx: common.BatchContext, args):
        gradient = attacks.input_gradient(ctx.logits_fn, ctx.x, ctx.labels)
        unit, nonzero = unit_norm(gradient)
        sign = jnp.sign(gradient)
        adv = jnp.clip(ctx.x + args["eps"] * sign, 0.0, 1.0)
        success = ctx.clean_ok & ~ctx.correct(adv)
        keep, won = nonzero * ctx.mask, success * ctx.mask
        sign_unit = unit_norm(sign)[0]
        total = lambda values, weights: jnp.sum(values * weights, axis=-1)
        return {"images": jnp.sum(keep), "fgsm": ctx.count(~success & ctx.clean_ok), "successes": jnp.sum(won),
                "gradient_spectrum": total(frequency.radial_spectrum(unit).T, keep),
                "gradient_high": total(high_fraction(unit, args["radii"], ctx.inclusive), keep),
                "sign_spectrum": total(frequency.radial_spectrum(sign_unit).T, won),
                "sign_high": total(high_fraction(sign_unit, args["radii"], ctx.inclusive), won)}

    def row(self, variant: common.ModelVariant, sums, n: int, seconds: float) -> Row:
        images, successes = int(sums["images"]), int(sums["successes"])
        mean = lambda key, count: (sums[key] / count).tolist() if count else None
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated, radii=self._radii,
                   images=images, gradient_spectrum=mean("gradient_spectrum", images),
                   gradient_high=mean("gradient_high", images), fgsm=float(sums["fgsm"] / n),
                   fgsm_successes=successes, sign_spectrum=mean("sign_spectrum", successes),
                   sign_high=mean("sign_high", successes))

    def columns(self, rows=()) -> List[reports.Column]:
        radii = rows[0].radii if rows else []
        return (common.variant_columns() + [reports.field("images", "images", fmt=str),
                                            reports.field("fgsm", f"FGSM acc (eps {self.cfg.eps:g})", "fgsm"),
                                            reports.field("fgsm_successes", "FGSM successes", fmt=str)]
                + [reports.field(key, f"{label} beyond r={r:g}", f"{key}_r{r:g}", index=i)
                   for key, label in (("gradient_high", "gradient energy"), ("sign_high", "sign-pattern energy"))
                   for i, r in enumerate(radii)])

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        common.write_rows(self, rows, out_dir, inputs, figure)


def figure(rows: Sequence[Dict], path) -> str:
    """Mean radial power spectrum (log scale) of the unit-norm input gradients and of the
    sign patterns of FGSM's successes, one line per row (rho); dotted: the paper's radii."""
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(9, 3.2), sharey=True)
    colours = plots.palette(len(rows))
    for c, row in zip(colours, rows):
        for ax, key in zip(axes, ("gradient_spectrum", "sign_spectrum")):
            if row[key]:
                ax.semilogy(np.arange(len(row[key])), np.maximum(row[key], 1e-12), color=c, label=row["name"])
    for ax, title in zip(axes, ("input gradients (unit norm)", "sign patterns of FGSM's successes")):
        for r in rows[0]["radii"] if rows else ():
            ax.axvline(r, color="grey", ls=":", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("radius (frequency)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean power", fontsize=8)
    if axes[0].get_lines():
        axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=6, loc="center left",
                       bbox_to_anchor=(1.0, 0.5))
    return plots.save(fig, path)
