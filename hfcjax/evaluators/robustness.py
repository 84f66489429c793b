"""`robustness`: Table 2. Accuracy under FGSM and PGD at every eps and, at the largest eps,
the masking referees: a stronger PGD with random restarts, the gradient-free Square
attack, APGD-CE / APGD-DLR (Croce & Hein 2020); the per-example worst case over all of
them, and gradient-masking warnings (Carlini et al. 2019). One row per model variant.

Files: robustness.{json,csv,md} and robustness.png (accuracy along eps, one line per rho).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from hfcjax import attacks, plots, reports
from hfcjax.evaluators import common


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.eps = (0.03, 0.06, 0.09)  # L-inf budgets, pixels in [0, 1]
    c.pgd_steps = 20  # PGD steps at every eps; the strong PGD uses twice as many
    c.pgd_step_fraction = 0.125  # PGD step size as a fraction of eps (eps / 8)
    c.strong_restarts = 3  # random restarts of the strong PGD at the largest eps
    c.square_queries = 300  # queries of the gradient-free Square attack at the largest eps (0 = off)
    c.apgd_steps = 0  # > 0: APGD-CE and APGD-DLR with this many steps at the largest eps
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    common.check_eps(c, "eps")
    for name, low in (("pgd_steps", 1), ("strong_restarts", 1), ("square_queries", 0), ("apgd_steps", 0)):
        common.check_int(c, name, low)
    common.check_fraction(c, "pgd_step_fraction")


@dataclasses.dataclass(frozen=True)
class Row:
    """Accuracies of one model variant: per eps (fgsm, pgd, worst_case_per_eps) and at the
    largest eps; None for an attack that was off."""

    name: str
    rho: float
    bn_reestimated: bool
    clean: float
    fgsm: List[float]
    pgd: List[float]
    pgd_strong: float
    square: Optional[float]
    apgd_ce: Optional[float]
    apgd_dlr: Optional[float]
    worst_case: float
    worst_case_per_eps: List[float]
    roughness: Optional[float]
    seconds: float
    warnings: List[str]


class Evaluator(common.BatchEvaluator):
    name = "robustness"
    Row = Row

    def batch_sums(self, ctx: common.BatchContext, args):
        c, x, y, fn = self.cfg, ctx.x, ctx.labels, ctx.logits_fn
        eps = args["eps"]
        pgd = lambda e, **kw: attacks.pgd(fn, x, y, e, step_size=e * c.pgd_step_fraction, **kw)

        def per_eps(e):
            out = {"fgsm": attacks.fgsm(fn, x, y, e), "pgd": pgd(e, steps=c.pgd_steps)}
            return out, {k: ctx.correct(v) for k, v in out.items()}

        advs, oks = jax.vmap(per_eps)(eps)  # [E, B, ...]
        per_eps_names = list(oks)
        e_max = eps[-1]
        strong_key, square_key = jax.random.split(ctx.key)
        advs["pgd_strong"] = attacks.restarts(attacks.pgd, c.strong_restarts)(
            fn, x, y, e_max, step_size=e_max * c.pgd_step_fraction, steps=2 * c.pgd_steps, key=strong_key)
        if c.square_queries > 0:
            advs["square"] = attacks.square(fn, x, y, e_max, key=square_key, queries=c.square_queries)
        if c.apgd_steps > 0:
            for loss in self.apgd_losses(ctx):
                advs[f"apgd_{loss}"] = attacks.apgd(fn, x, y, e_max, steps=c.apgd_steps, loss=loss)
        for name in advs.keys() - oks.keys():
            oks[name] = ctx.correct(advs[name])
        for name in advs:
            ctx.add_attack(name, advs[name], oks[name])
        # Worst case per example: robust only if every attack run at that eps failed.
        every_eps = jnp.all(jnp.stack([oks[k] for k in per_eps_names]), axis=0)  # [E, B]
        at_max = every_eps[-1]
        for name in oks.keys() - set(per_eps_names):
            at_max = at_max & oks[name]
        return {"clean": ctx.count(ctx.clean_ok), **{k: ctx.count(v) for k, v in oks.items()},
                "worst_case": ctx.count(at_max), "worst_case_per_eps": ctx.count(every_eps.at[-1].set(at_max))}

    def scalars(self, row: Row, split: str):
        keys = ("clean", "fgsm", "pgd", "pgd_strong", "square", "apgd_ce", "apgd_dlr", "worst_case")
        return common.row_scalars(row, split, self.name, keys, self.cfg.eps)

    @staticmethod
    def apgd_losses(ctx: common.BatchContext) -> Sequence[str]:
        """CE, and DLR where the model has the 3+ classes DLR needs."""
        return ("ce", "dlr") if jax.eval_shape(ctx.logits_fn, ctx.x).shape[-1] >= 3 else ("ce",)

    def row(self, variant: common.ModelVariant, sums, n: int, seconds: float) -> Row:
        acc = {k: v / n for k, v in sums.items()}
        opt = lambda k: float(acc[k]) if k in acc else None
        row = Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated,
                  clean=float(acc["clean"]), fgsm=acc["fgsm"].tolist(), pgd=acc["pgd"].tolist(),
                  pgd_strong=float(acc["pgd_strong"]), square=opt("square"), apgd_ce=opt("apgd_ce"),
                  apgd_dlr=opt("apgd_dlr"), worst_case=float(acc["worst_case"]),
                  worst_case_per_eps=acc["worst_case_per_eps"].tolist(),
                  roughness=variant.roughness, seconds=seconds,
                  warnings=[])
        row = dataclasses.replace(row, warnings=sanity_warnings(row, self.cfg.eps, n))
        for w in row.warnings:
            self.log(f"  warning [{variant.name}]: {w}")
        return row

    def columns(self, rows: Sequence[Row]) -> List[reports.Column]:
        """How the rows look in robustness.csv (every value) and robustness.md."""
        eps = list(self.cfg.eps)
        e = eps[-1]
        apgd = [loss for loss in attacks.LOSSES if rows and getattr(rows[0], f"apgd_{loss}") is not None]
        return (common.variant_columns() + [reports.field("clean", "clean")]
                + common.per_eps_columns("fgsm", eps, "FGSM", "fgsm") + common.per_eps_columns("pgd", eps, "PGD", "pgd")
                + [reports.field("pgd_strong", f"PGD-strong {e:g}"),
                   reports.field("square", f"Square {e:g}" if self.cfg.square_queries else None)]
                + [reports.field(f"apgd_{loss}", f"APGD-{loss.upper()} {e:g}") for loss in apgd]
                + [reports.field("worst_case", f"worst case {e:g}"), reports.field("roughness", "roughness")]
                + common.per_eps_columns("worst_case_per_eps", eps, None, "worst_case"))

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        out_dir = Path(out_dir)
        value = {"num_examples": len(inputs.images), "settings": self.cfg.to_dict(),
                 "rows": [common.to_json(r) for r in rows]}
        reports.write_table(out_dir, self.name, rows, self.columns(rows), value)
        plain = [common.to_json(r) for r in rows if not r.bn_reestimated]
        plots.robustness_curves(plain, list(self.cfg.eps), out_dir / "robustness.png")


def sanity_warnings(row: Row, eps: Sequence[float], n: int) -> List[str]:
    """Gradient-masking checks (Carlini et al. 2019): each failure is a warning."""
    tol = max(3.0 / n, 0.01)  # random starts move a few examples either way
    warn = []
    for e, f, p in zip(eps, row.fgsm, row.pgd):
        if p > f + tol:
            warn.append(f"PGD ({p:.3f}) is weaker than FGSM ({f:.3f}) at eps={e:g}")
    if any(b > a + tol for a, b in zip(row.pgd, row.pgd[1:])):
        warn.append("PGD accuracy rises with eps")
    if row.pgd[-1] > 0.1 and row.pgd[-1] >= 0.8 * row.pgd[0]:
        warn.append(f"PGD accuracy is almost flat in eps ({row.pgd[0]:.3f} -> {row.pgd[-1]:.3f}): "
                    "possible gradient masking")
    if row.pgd_strong > row.pgd[-1] + tol:
        warn.append("more PGD steps and restarts raised accuracy")
    if row.square is not None and row.square < min(row.pgd_strong, row.pgd[-1]) - tol:
        warn.append(f"the gradient-free Square attack ({row.square:.3f}) beats PGD ({row.pgd[-1]:.3f}): "
                    "PGD's gradients are masked, its accuracy overstates robustness")
    return warn

