"""`frequency`: Sections 3 and 8 on the model as given. Predictions on the original images,
their LFC and HFC at every radius and their SVD parts; accuracy per variant, Figure 2's
count (right on x and its HFC, wrong on its LFC) and the images behind Figure 2.

Files: frequency.json (accuracy by variant, counts), frequency.md and figure2.png.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import backend, data, frequency, measure, plots, reports
from hfcjax.evaluators import common
from hfcjax.errors import UserError


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.radii = ()  # radii of the split; () = the run's tracked radii (the paper's, scaled to the image size)
    c.svd_ranks = (4, 8, 12, 16)  # ranks of Section 8's SVD split (those beyond the image size are left out)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    validate_radii(c.radii)
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in c.svd_ranks):
        raise UserError(f"svd_ranks must be integers >= 0, got {list(c.svd_ranks)}.")


def validate_radii(radii) -> None:
    for r in radii:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not np.isfinite(r) or r < 0:
            raise UserError(f"radii must be >= 0 and finite, got {list(radii)}.")


def make_predictions(apply_fn: common.ApplyFn, inclusive: bool):
    """(variables, images_u8, radii[R], ranks) -> predicted class and confidence ``[V, B]``
    for `measure.tracked_variants(radii) + measure.svd_variants(ranks)`, in that order."""

    def predict(variables, images_u8, radii, ranks: Sequence[int]):
        x = measure.to_unit(images_u8)
        low, high = jax.vmap(lambda r: frequency.split(x, r, inclusive=inclusive))(radii)
        parts = [frequency.svd_split(x, k) for k in ranks]
        variants = [x[None], low, high]
        if parts:
            variants += [jnp.stack([p[0] for p in parts]), jnp.stack([p[1] for p in parts])]

        def one(v):
            probs = jax.nn.softmax(apply_fn(variables, v))
            return jnp.argmax(probs, -1), jnp.max(probs, -1)

        return measure.map_unrolled(one, jnp.concatenate(variants))

    return predict


@dataclasses.dataclass
class FrequencyReport:
    """Per variant (`measure.Variant`): each image's prediction, confidence and correctness."""

    radii: List[float]
    ranks: List[int]
    labels: np.ndarray
    predictions: Dict[measure.Variant, np.ndarray]
    confidences: Dict[measure.Variant, np.ndarray]

    @property
    def correct(self) -> Dict[measure.Variant, np.ndarray]:
        return {v: p == self.labels for v, p in self.predictions.items()}

    @property
    def accuracy(self) -> Dict[measure.Variant, float]:
        return {v: float(c.mean()) for v, c in self.correct.items()}

    def figure2_counts(self) -> Dict[float, int]:
        """Per radius: images right on x and its HFC, wrong on its LFC (Figure 2's pattern)."""
        return {r: int(measure.story_mask(self.correct, measure.high(r), measure.low(r)).sum()) for r in self.radii}

    def svd_counts(self) -> Dict[int, int]:
        """Per rank: right on x and the trailing part, wrong on the dominant part."""
        return {k: int(measure.story_mask(self.correct, measure.Variant("trailing", k),
                                          measure.Variant("dominant", k)).sum()) for k in self.ranks}

    def summary(self) -> Dict[str, Dict[str, Any]]:
        """JSON form: accuracy by variant name, Figure-2 counts by r<radius>, SVD counts by k<rank>."""
        return {"accuracy": {v.name: a for v, a in self.accuracy.items()},
                "figure2_count": {f"r{r:g}": c for r, c in self.figure2_counts().items()},
                "svd_count": {f"k{k}": c for k, c in self.svd_counts().items()}}

    def markdown(self) -> str:
        acc, story, svd = self.accuracy, self.figure2_counts(), self.svd_counts()
        parts = [reports.markdown_table(
            ["split", *(f"r={r:g}" for r in self.radii)],
            [["LFC accuracy", *(acc[measure.low(r)] for r in self.radii)],
             ["HFC accuracy", *(acc[measure.high(r)] for r in self.radii)],
             ["Figure-2 count (right on x and HFC, wrong on LFC)", *(str(story[r]) for r in self.radii)]])]
        if self.ranks:
            parts.append(reports.markdown_table(
                ["SVD split", *(f"k={k}" for k in self.ranks)],
                [["dominant accuracy", *(acc[measure.Variant("dominant", k)] for k in self.ranks)],
                 ["trailing accuracy", *(acc[measure.Variant("trailing", k)] for k in self.ranks)],
                 ["count (right on x and trailing, wrong on dominant)", *(str(svd[k]) for k in self.ranks)]]))
        parts.append(f"clean accuracy {acc[measure.ORIGINAL]:.3f} on {len(self.labels)} test images")
        return "\n\n".join(parts)

    def figure2_rows(self, indices: Sequence[int], radius: float) -> List[Dict]:
        """What `plots.figure2` prints under each image: label, and per original/low/high
        the predicted class and confidence."""
        keys = {"original": measure.ORIGINAL, "low": measure.low(radius), "high": measure.high(radius)}
        return [{"label": int(self.labels[i]),
                 **{k: (int(self.predictions[v][i]), float(self.confidences[v][i])) for k, v in keys.items()}}
                for i in indices]


class Evaluator(common.Evaluator):
    name = "frequency"
    stage = 3

    def __init__(self, apply_fn, cfg, shared=common.Shared()):
        super().__init__(apply_fn, cfg, shared)
        self._predict = {}  # inclusive -> compiled predictions

    def predict(self, inclusive: bool):
        if inclusive not in self._predict:
            self._predict[inclusive] = jax.jit(make_predictions(self.apply_fn, inclusive), static_argnums=3,
                                               compiler_options=backend.eval_compiler_options())
        return self._predict[inclusive]

    def radii(self, inputs: common.Inputs) -> List[float]:
        return [float(r) for r in (self.cfg.radii or inputs.radii)]

    def run(self, inputs: common.Inputs) -> FrequencyReport:
        """On the model as given (`inputs.variables`); ranks larger than the images allow are left out."""
        images, labels, radii = inputs.images, inputs.labels, self.radii(inputs)
        ranks = [int(k) for k in self.cfg.svd_ranks if k <= min(images.shape[1:3])]
        variants = measure.tracked_variants(radii) + measure.svd_variants(ranks)
        preds, confs, predict = [], [], self.predict(inputs.inclusive)
        for x, _, m in data.batches(images, labels, self.shared.batch_size, shuffle=False, drop_remainder=False):
            p, c = predict(inputs.variables, x, jnp.asarray(radii, jnp.float32), tuple(ranks))
            keep = m > 0
            preds.append(np.asarray(p)[:, keep])
            confs.append(np.asarray(c)[:, keep])
        preds, confs = np.concatenate(preds, 1), np.concatenate(confs, 1)
        return FrequencyReport(radii, ranks, np.asarray(labels), dict(zip(variants, preds)),
                               dict(zip(variants, confs)))

    def markdown(self, report: FrequencyReport) -> str:
        return report.markdown()

    def write(self, report: FrequencyReport, out_dir, inputs: common.Inputs) -> None:
        out_dir = Path(out_dir)
        reports.write_json(out_dir / "frequency.json", {"num_examples": len(report.labels), **report.summary()})
        reports.atomic_write(out_dir / "frequency.md", report.markdown() + "\n")
        radius, idx = measure.figure2_examples(report.correct, report.radii)
        if radius is not None:
            plots.figure2(inputs.images[idx], radius, report.figure2_rows(idx, radius), out_dir / "figure2.png",
                          inclusive=inputs.inclusive, class_names=inputs.class_names or None)
