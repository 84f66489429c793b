"""`accuracy`: accuracy on the original images and on their LFC and HFC at every radius of
the paper's split, summed over batches. It is what a training run tracks each epoch
(Figure 1's curves: models learn the LFC first; ``every_epochs = 1`` by default), and at
evaluation it is off by default (the `frequency` report holds the same accuracies).

Files (when enabled at evaluation): accuracy.{json,csv,md}.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List

import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import measure, reports
from hfcjax.evaluators import common
from hfcjax.evaluators.frequency import validate_radii


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False  # at evaluation the frequency report has these accuracies
    c.every_epochs = 1  # training: train and test accuracy of x, LFC and HFC every epoch (0 = never)
    c.radii = ()  # () = the run's tracked radii (config.track_radii)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    validate_radii(c.radii)


@dataclasses.dataclass(frozen=True)
class Row:
    """Accuracy on the original images (`clean`) and on their LFC / HFC at each of `radii`."""

    name: str
    rho: float
    bn_reestimated: bool
    radii: List[float]
    clean: float
    low: List[float]
    high: List[float]

    def by_variant(self) -> Dict[measure.Variant, float]:
        """{Variant: accuracy} in `measure.tracked_variants(radii)` order."""
        return dict(zip(measure.tracked_variants(self.radii), [self.clean, *self.low, *self.high]))


class Evaluator(common.BatchEvaluator):
    name = "accuracy"
    Row = Row

    def radii(self, inputs: common.Inputs) -> List[float]:
        return [float(r) for r in (self.cfg.radii or inputs.radii)]

    def args(self, inputs: common.Inputs):
        self._radii = self.radii(inputs)  # the rows that follow are of these radii
        return {"radii": jnp.asarray(np.asarray(self._radii, np.float32))}

    def batch_sums(self, ctx: common.BatchContext, args):
        return measure.variant_counts_unit(ctx.logits_fn, ctx.x, ctx.labels, ctx.mask, args["radii"],
                                           inclusive=ctx.inclusive)

    def row(self, variant: common.ModelVariant, sums, n: int, seconds: float) -> Row:
        acc = (sums / n).tolist()
        r = (len(acc) - 1) // 2
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated, radii=self._radii,
                   clean=acc[0], low=acc[1:1 + r], high=acc[1 + r:])

    def scalars(self, row: Row, split: str) -> Dict[str, float]:
        """The names training has always written: ``train_acc``, ``test_low_r4`` ..."""
        return measure.flat_metrics({split: row.by_variant()})

    def columns(self, rows=()) -> List[reports.Column]:
        radii = rows[0].radii if rows else []
        return (common.variant_columns() + [reports.field("clean", "clean")]
                + [reports.field(kind, f"{label} r={r:g}", f"{kind}_r{r:g}", index=i)
                   for kind, label in (("low", "LFC"), ("high", "HFC")) for i, r in enumerate(radii)])

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        value = {"num_examples": len(inputs.images), "rows": [common.to_json(r) for r in rows]}
        reports.write_table(Path(out_dir), self.name, rows, self.columns(rows), value)
