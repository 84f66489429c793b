"""What every evaluator shares: the interface, the inputs of an evaluation, what one batch of
the fused per-batch pass sees (`BatchContext`; the pass itself is `evaluators.fused`), and the
progress of a grid.

An evaluator is built from its config section (``config.evals.NAME``) and the model's
``apply_fn(variables, images) -> logits``; ``run(inputs)`` returns a structured result
(row dataclasses, a report dataclass, arrays), ``markdown(result)`` its Markdown and
``write(result, out_dir, inputs)`` the files named after it. Nothing here knows a run
directory or a config file.

`BatchEvaluator`s are sums over batches of images (robustness, band, spectra): the ones
enabled together run fused in one compiled call per batch (the variables are arguments, so
a whole rho grid compiles once), and share what they compute in a `BatchContext`: the
clean predictions and the adversarial examples of every attack, so the spectra of the
robustness attacks cost no second attack.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import data, measure, reports, writers
from hfcjax.errors import UserError

ApplyFn = Callable[[Any, jnp.ndarray], jnp.ndarray]
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ModelVariant:
    """One version of the model an evaluation scores: the first-layer kernels smoothed with
    `rho` (Eq. 3; 0 = as trained), BatchNorm statistics re-estimated or not. `kernel` is the
    first smoothed kernel (None for a model without parameters)."""

    name: str
    rho: float
    bn_reestimated: bool
    variables: Any
    kernel: Optional[np.ndarray] = None
    roughness: Optional[float] = None


@dataclasses.dataclass
class Inputs:
    """What an evaluation runs on: the model as given (`variables`), its `variants`, uint8
    images ``[N, H, W, C]`` with integer labels, the radii of the paper's split for this
    image size, and where finished pieces are kept (`partial`, None: nowhere)."""

    variables: Any
    variants: List[ModelVariant]
    images: np.ndarray
    labels: np.ndarray
    radii: Tuple[float, ...]
    inclusive: bool = True
    class_names: Sequence[str] = ()
    partial: Optional[reports.PartialResults] = None


@dataclasses.dataclass(frozen=True)
class Shared:
    """Settings every evaluator of one evaluation shares (``config.evaluation``)."""

    batch_size: int = 200
    seed: int = 0
    log: Log = print


class Evaluator:
    """The interface. Subclasses set `name` (their config section) and `stage` (the order of
    an evaluation: model checks, per-batch attacks, heat maps, frequency report)."""

    name: ClassVar[str] = ""
    stage: ClassVar[int] = 1
    caption: ClassVar[str] = ""  # a row evaluator's line above its table
    figure_note: ClassVar[str] = ""  # what its figure (NAME.png) shows, named below the table

    def __init__(self, apply_fn: ApplyFn, cfg: ml_collections.ConfigDict, shared: Shared = Shared()):
        self.apply_fn, self.cfg, self.shared, self.log = apply_fn, cfg, shared, shared.log

    def run(self, inputs: Inputs) -> Any:
        raise NotImplementedError

    def markdown(self, result: Any) -> str:
        """The result as Markdown: for rows, the table of the evaluator's `columns(rows)`, with
        `caption` above and the figure named below; other results override this."""
        parts = [f"{self.caption}:" if self.caption else "", reports.render_markdown(result, self.columns(result)),
                 f"{self.figure_note}: {self.name}.png" if self.figure_note else ""]
        return "\n\n".join(part for part in parts if part)

    def write(self, result: Any, out_dir, inputs: Inputs) -> None:
        """Writes this evaluator's files (named after it) into `out_dir`."""
        raise NotImplementedError


def check_finite(apply_fn: ApplyFn, variables, images: np.ndarray, batch_size: int) -> None:
    """Raises UserError naming the first image whose logits are NaN or inf: no accuracy is
    ever computed from them (argmax of NaN is class 0, which would look like a number)."""
    finite_rows = jax.jit(lambda v, x: jnp.all(jnp.isfinite(apply_fn(v, measure.to_unit(x))), axis=-1))
    labels = np.zeros(len(images), np.int32)
    for b, (x, _, mask) in enumerate(data.batches(images, labels, batch_size, shuffle=False, drop_remainder=False)):
        ok = np.asarray(finite_rows(variables, x)) | (mask == 0)  # fixed-shape batches: one compilation
        if not ok.all():
            index = b * batch_size + int(np.argmin(ok))
            raise UserError(f"the model's logits are not finite (NaN or inf) on image {index} (and maybe others): "
                            "no accuracy is computed from them. Check the weights (a diverged run?), the "
                            "preprocessing (mean/std, a division by zero) and the images.")


# --------------------------------------------------------------------------- one batch of the fused pass


class BatchContext:
    """One traced batch: the model's logits function, the images in [0, 1], labels, the 0/1
    mask of padded rows, this batch's key and the split's convention; the clean predictions, and every attack's
    adversarial examples with their per-example correctness (`attacks`, in the order added)."""

    def __init__(self, logits_fn, x, labels, mask, key, inclusive: bool = True):
        self.logits_fn, self.x, self.labels, self.mask, self.key = logits_fn, x, labels, mask, key
        self.inclusive = inclusive  # the split's convention (d <= r, or d < r)
        self.attacks: Dict[str, Tuple[jnp.ndarray, jnp.ndarray]] = {}
        self._clean_ok = None

    def correct(self, images) -> jnp.ndarray:
        return jnp.argmax(self.logits_fn(images), -1) == self.labels

    def predictions(self, *image_sets) -> List[jnp.ndarray]:
        """The predicted labels of each set of B images, from one model call on all of them
        stacked along the batch (on a CPU a call of 3 B images runs faster than three of B)."""
        return jnp.split(jnp.argmax(self.logits_fn(jnp.concatenate(image_sets)), -1), len(image_sets))

    @property
    def clean_ok(self) -> jnp.ndarray:
        if self._clean_ok is None:
            self._clean_ok = self.correct(self.x)
        return self._clean_ok

    def count(self, ok) -> jnp.ndarray:
        """Sum over the batch's real rows (the last axis)."""
        return jnp.sum(ok * self.mask, axis=-1)

    def add_attack(self, name: str, adv, ok) -> None:
        self.attacks[name] = (adv, ok)


class BatchEvaluator(Evaluator):
    """Numbers that are sums over batches. `args(inputs)` are its arrays for the compiled
    call (e.g. eps, so a new eps never changes the program); `batch_sums(ctx, args)` the sums
    of one batch; `row(variant, sums, n, seconds)` the finished row of one model variant.
    `reads_attacks`: it reads other evaluators' attacks from the context, so it runs after them.

    Per-epoch tracking: an evaluator that defines `scalars(row, split)` (its row as flat
    metrics.jsonl names) can run during training, every ``every_epochs`` of its section."""

    reads_attacks: ClassVar[bool] = False

    def args(self, inputs: Inputs) -> Dict[str, Any]:
        """The section's `eps` as an array (when it has one): an argument, not a constant."""
        del inputs
        return {"eps": jnp.asarray(np.asarray(self.cfg.eps, np.float32))} if "eps" in self.cfg else {}

    def scalars(self, row: Any, split: str) -> Dict[str, float]:
        """`row` as metrics.jsonl values named ``{split}_{name}_{key}`` (`tracks` says whether
        this evaluator defines them)."""
        raise NotImplementedError

    @classmethod
    def tracks(cls) -> bool:
        """Whether it can run during training (it defines `scalars`)."""
        return cls.scalars is not BatchEvaluator.scalars

    def batch_sums(self, ctx: BatchContext, args) -> Any:
        raise NotImplementedError

    def row(self, variant: ModelVariant, sums: Dict[str, np.ndarray], n: int, seconds: float) -> Any:
        raise NotImplementedError

    def run(self, inputs: Inputs) -> List[Any]:
        """This evaluator alone through the fused pass (`evaluators.fused`, which builds on this module)."""
        from hfcjax.evaluators import fused

        return fused.run_fused([self], inputs)[self.name]


def to_json(row) -> Dict:
    return dataclasses.asdict(row)


def write_rows(evaluator: Evaluator, rows: Sequence[Any], out_dir, inputs: Inputs, figure=None) -> None:
    """A row evaluator's files: OUT/NAME.{json,csv,md} (rows, settings, number of images) and, with
    `figure(rows as dicts without BN-re-estimated ones, path)`, OUT/NAME.png."""
    value = {"num_examples": len(inputs.images), "settings": evaluator.cfg.to_dict(), "rows": [to_json(r) for r in rows]}
    reports.write_table(out_dir, evaluator.name, rows, evaluator.columns(rows), value)
    if figure is not None:
        figure([to_json(r) for r in rows if not r.bn_reestimated], os.path.join(out_dir, f"{evaluator.name}.png"))


# --------------------------------------------------------------------------- progress


class GridProgress:
    """Progress of a grid of evaluations (every row over the same images): one line per
    batch with the images done over the whole grid and the ETA of the whole grid. The rate
    is measured from the end of the first batch on, so compilation does not skew it."""

    def __init__(self, rows: int, images: int, log: Log = print, what: str = "grid"):
        self.total, self.done, self.images, self.log, self.what = rows * images, 0, images, log, what
        self.throughput, self.steady = writers.Throughput(), False  # steady: measured after the first batch

    def skip(self, images: int) -> None:
        """A row read back from an earlier run: it leaves the work to do."""
        self.total -= images

    def kept_or_run(self, name: str, partial: Optional[reports.PartialResults], run: Callable[[], Any]) -> Any:
        """Row `name`: read back from `partial` when an interrupted run kept it (said, and left
        out of the ETA), else `run()`, kept in `partial` as soon as it is done."""
        value = partial.get(name) if partial else None
        if value is not None:
            self.log(f"  {name}: read back from the interrupted run ({partial.folder})")
            self.skip(self.images)
            return value
        value = run()
        if partial:
            partial.put(name, value)
        return value

    def advance(self, images: int, label: str) -> None:
        now, self.done = time.time(), self.done + images
        rate = self.throughput.rate(self.done, now)
        eta = self.throughput.seconds_left(self.total - self.done, rate)
        note = "" if self.steady else " (first batch, compilation included)"
        if not self.steady:
            self.throughput.restart(self.done, now)
            self.steady = True
        self.log(f"  {label} | {self.what} {self.done}/{self.total} images | {rate:,.1f} img/s{note} | "
                 f"ETA {writers.format_seconds(eta)} for the whole {self.what}")


def row_scalars(row: Any, split: str, name: str, keys: Sequence[str], eps: Sequence[float]) -> Dict[str, float]:
    """`keys` of a row as metrics.jsonl values (`measure.evaluator_metric` names): a list is
    one value per eps, None (an attack that was off) is left out."""
    out = {}
    for key in keys:
        value = getattr(row, key)
        if isinstance(value, (list, tuple)):
            out.update({measure.evaluator_metric(split, name, key, e): float(v) for e, v in zip(eps, value)})
        elif value is not None:
            out[measure.evaluator_metric(split, name, key)] = float(value)
    return out


def per_eps_columns(key: str, eps: Sequence[float], markdown: Optional[str], csv_name: str) -> List[reports.Column]:
    """One column per eps of a list-valued field: Markdown 'MD eps', CSV 'CSV_eps'."""
    return [reports.field(key, markdown and f"{markdown} {v:g}", f"{csv_name}_{v:g}", index=i)
            for i, v in enumerate(eps)]


# Checks of a section's values: each message starts with the key; the registry puts
# 'config.evals.NAME.' in front.


def check_int(section, key: str, low: int) -> None:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}.")


def check_eps(section, key: str) -> None:
    eps = list(section[key])
    if not eps or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in eps):
        raise UserError(f"{key}: eps values must lie in [0.0, 1.0] (pixels are in [0, 1]), got {eps}.")


def check_fraction(section, key: str) -> None:
    if not 0 < section[key] <= 1:
        raise UserError(f"{key} must be in (0, 1], got {section[key]!r}.")


def check_number(section, key: str, low: float = 0.0, strict: bool = False) -> None:
    value = section[key]
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if strict else value >= low))
    if not ok:
        raise UserError(f"{key} must be a finite number {'>' if strict else '>='} {low:g}, "
                         f"got {value!r}.")


def variant_columns() -> List[reports.Column]:
    """The columns that name a row's model variant."""
    return [reports.field("name", "model", "model", fmt=str), reports.field("rho"), reports.field("bn_reestimated")]
