"""`band`: PGD confined to the LFC or the HFC of one radius (the paper's split as a
constraint on the perturbation), at every eps, and the energy fraction of its
perturbations that leaks out of the band: does the model's vulnerability live in the high
frequencies? One row per model variant.

Files: band.{json,csv,md}.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List

import jax
import ml_collections

from hfcjax import attacks, reports
from hfcjax.evaluators import common


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.radius = 8.0  # the band's radius: LFC is d <= radius (inclusive split), HFC the rest
    c.eps = (0.03, 0.06, 0.09)  # L-inf budgets, pixels in [0, 1]
    c.pgd_steps = 20
    c.pgd_step_fraction = 0.125  # step size as a fraction of eps
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    common.check_number(c, "radius", 0.0, strict=True)
    common.check_eps(c, "eps")
    common.check_int(c, "pgd_steps", 1)
    common.check_fraction(c, "pgd_step_fraction")


@dataclasses.dataclass(frozen=True)
class Row:
    """Per eps: accuracy under PGD confined to the LFC / HFC of `radius`, and the mean
    energy fraction of its perturbations outside the band."""

    name: str
    rho: float
    bn_reestimated: bool
    radius: float
    pgd_low: List[float]
    pgd_high: List[float]
    leak_low: List[float]
    leak_high: List[float]


class Evaluator(common.BatchEvaluator):
    name = "band"
    Row = Row

    def batch_sums(self, ctx: common.BatchContext, args):
        c = self.cfg

        def per_eps(e):
            advs = {kind: attacks.pgd(ctx.logits_fn, ctx.x, ctx.labels, e, step_size=e * c.pgd_step_fraction,
                                      steps=c.pgd_steps, band=(kind, c.radius)) for kind in attacks.BANDS}
            return advs, {kind: ctx.correct(adv) for kind, adv in advs.items()}

        advs, oks = jax.vmap(per_eps)(args["eps"])  # [E, B, ...]
        out = {}
        for kind in attacks.BANDS:
            ctx.add_attack(f"pgd_{kind}", advs[kind], oks[kind])
            leak = jax.vmap(lambda d: attacks.band_leak(d, (kind, c.radius)))(advs[kind] - ctx.x)
            out[f"pgd_{kind}"], out[f"leak_{kind}"] = ctx.count(oks[kind]), ctx.count(leak)
        return out

    def row(self, variant: common.ModelVariant, sums, n: int, seconds: float) -> Row:
        acc = {k: (v / n).tolist() for k, v in sums.items()}
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated,
                   radius=float(self.cfg.radius), **acc)

    def scalars(self, row: Row, split: str):
        return common.row_scalars(row, split, self.name, ("pgd_low", "pgd_high", "leak_low", "leak_high"),
                                  self.cfg.eps)

    def columns(self, rows=()) -> List[reports.Column]:
        eps, r = list(self.cfg.eps), f"{self.cfg.radius:g}"
        return (common.variant_columns()
                + common.per_eps_columns("pgd_low", eps, f"PGD-LFC r={r}", f"pgd_low_r{r}")
                + common.per_eps_columns("pgd_high", eps, f"PGD-HFC r={r}", f"pgd_high_r{r}")
                + common.per_eps_columns("leak_low", eps, None, f"leak_low_r{r}")
                + common.per_eps_columns("leak_high", eps, None, f"leak_high_r{r}"))

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        value = {"num_examples": len(inputs.images), "settings": self.cfg.to_dict(),
                 "rows": [common.to_json(r) for r in rows]}
        reports.write_table(Path(out_dir), self.name, rows, self.columns(rows), value)
