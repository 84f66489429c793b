"""`spectra`: the mean radial power spectrum of the successful perturbations (x_adv - x of
images right when clean and wrong when attacked) of every attack that ran beside it
(robustness's, band's), per eps where the attack runs at every eps. Where in the spectrum
do successful attacks put their energy? One row per model variant.

Files: spectra.json and spectra.png (at the largest eps, one line per rho).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List

import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import frequency, plots, reports
from hfcjax.evaluators import common
from hfcjax.errors import UserError


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = True  # needs robustness or band enabled: it reads their attacks
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    del c  # nothing to check beyond `enabled`


@dataclasses.dataclass(frozen=True)
class Row:
    """{attack: mean spectrum [R], or one per eps [E][R]; None where none succeeded}."""

    name: str
    rho: float
    bn_reestimated: bool
    spectra: Dict[str, object]


class Evaluator(common.BatchEvaluator):
    name = "spectra"
    Row = Row
    reads_attacks = True

    def batch_sums(self, ctx: common.BatchContext, args):
        if not ctx.attacks:
            raise UserError("config.evals.spectra needs attacks to look at: enable config.evals.robustness or "
                             "config.evals.band too (or set config.evals.spectra.enabled=False).")
        out = {}
        for name, (adv, ok) in ctx.attacks.items():
            success = (ctx.clean_ok & ~ok) * ctx.mask  # [B] or [E, B]
            spectrum = frequency.radial_spectrum(adv - ctx.x)  # [..., B, R]
            out[name] = (jnp.sum(spectrum * success[..., None], axis=-2), jnp.sum(success, axis=-1))
        return out

    def row(self, variant: common.ModelVariant, sums, n: int, seconds: float) -> Row:
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated,
                   spectra={k: _mean_spectrum(s, c) for k, (s, c) in sums.items()})

    def markdown(self, rows: List[Row]) -> str:
        return f"Radial spectra of the successful perturbations of {', '.join(rows[0].spectra)}: spectra.png"

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        out_dir = Path(out_dir)
        reports.write_json(out_dir / "spectra.json", {"num_examples": len(inputs.images),
                                                      "rows": [common.to_json(r) for r in rows]})
        plots.perturbation_spectra([common.to_json(r) for r in rows if not r.bn_reestimated],
                                   out_dir / "spectra.png")


def _mean_spectrum(sums: np.ndarray, counts: np.ndarray):
    """Mean spectrum per eps (or one), None where no perturbation succeeded."""
    if sums.ndim == 1:
        return (sums / counts).tolist() if counts > 0 else None
    return [(s / c).tolist() if c > 0 else None for s, c in zip(sums, counts)]
