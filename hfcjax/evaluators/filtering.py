"""`filtering`: where along the spectrum does the model's accuracy live? Accuracy on the
images low-pass and high-pass filtered at every radius of a sweep (the paper's split as a
filter; the radius is traced, so the whole curve is one compiled call), and on band-pass
rings: the images with only the ring r < d <= r + w kept, and with that ring removed. The
ring whose removal costs most accuracy is the critical band (Subramanian et al. 2023's
critical-band masking, with the paper's radial bands). One row per model variant.

Files: filtering.{json,csv,md} and filtering.png (the curves of every rho on one figure).
"""

from __future__ import annotations

import dataclasses
from typing import List

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import frequency, plots, reports
from hfcjax.evaluators import common
from hfcjax.evaluators.frequency import validate_radii
from hfcjax.errors import UserError


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.radii = ()  # the sweep; () = `points` radii evenly from 0 to the image's largest radius
    c.points = 17
    c.ring_width = 2.0  # band-pass rings r < d <= r + ring_width, r = 0, w, 2w, ... up to the largest radius
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    common.check_int(c, "points", 2)
    common.check_number(c, "ring_width", 0.0, strict=True)
    validate_radii(c.radii)


def largest_radius(height: int, width: int) -> float:
    """The distance of the farthest frequency from the centre of the shifted spectrum."""
    return float(np.hypot(height // 2, width // 2))


@dataclasses.dataclass(frozen=True)
class Row:
    """Accuracy on the original images (`clean`), low- and high-pass filtered at each of
    `radii`, with only each ring kept and with it removed; the critical band's start."""

    name: str
    rho: float
    bn_reestimated: bool
    clean: float
    radii: List[float]
    low: List[float]
    high: List[float]
    ring_width: float
    ring_starts: List[float]
    ring_only: List[float]
    ring_removed: List[float]
    critical_band: float


class Evaluator(common.BatchEvaluator):
    name = "filtering"
    figure_note = "Curves and rings"
    Row = Row

    def args(self, inputs: common.Inputs):
        height, width = inputs.images.shape[1:3]
        top = largest_radius(height, width)
        radii = [float(r) for r in self.cfg.radii] or np.linspace(0.0, top, self.cfg.points).tolist()
        if max(radii) > top:
            raise UserError(f"config.evals.filtering.radii: {max(radii):g} lies beyond the largest radius of "
                            f"{height}x{width} images ({top:.2f}); the spectrum ends there.")
        self._radii, self._starts = radii, np.arange(0.0, top, float(self.cfg.ring_width)).tolist()
        return {"radii": jnp.asarray(radii, jnp.float32), "starts": jnp.asarray(self._starts, jnp.float32)}

    def batch_sums(self, ctx: common.BatchContext, args):
        w = float(self.cfg.ring_width)
        low_of = lambda r: frequency.split(ctx.x, r, inclusive=ctx.inclusive)[0]
        count = lambda images: ctx.count(ctx.correct(images))

        def curve(r):
            low = low_of(r)
            return count(low), count(ctx.x - low)

        def ring(start):
            band = low_of(start + w) - low_of(start)
            return count(band), count(ctx.x - band)

        low, high = jax.lax.map(curve, args["radii"])
        only, removed = jax.lax.map(ring, args["starts"])
        return {"clean": ctx.count(ctx.clean_ok), "low": low, "high": high, "ring_only": only,
                "ring_removed": removed}

    def row(self, variant: common.ModelVariant, sums, n: int, seconds: float) -> Row:
        acc = {k: np.asarray(v) / n for k, v in sums.items()}
        drop = float(acc["clean"]) - acc["ring_removed"]
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated,
                   clean=float(acc["clean"]), radii=self._radii, low=acc["low"].tolist(), high=acc["high"].tolist(),
                   ring_width=float(self.cfg.ring_width), ring_starts=self._starts,
                   ring_only=acc["ring_only"].tolist(), ring_removed=acc["ring_removed"].tolist(),
                   critical_band=float(self._starts[int(np.argmax(drop))]))

    def columns(self, rows: List[Row]) -> List[reports.Column]:
        radii = rows[0].radii if rows else []
        return (common.variant_columns() + [reports.field("clean", "clean"),
                                            reports.field("critical_band", "critical band (ring start)")]
                + [reports.field(kind, f"{label} r={r:.3g}" if i in (0, len(radii) // 2) else None,
                                 f"{kind}_r{r:.4g}", index=i)
                   for kind, label in (("low", "low-pass"), ("high", "high-pass")) for i, r in enumerate(radii)])

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        common.write_rows(self, rows, out_dir, inputs, plots.filtering_curves)
