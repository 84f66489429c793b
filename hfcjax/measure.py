"""Accuracy measurements shared by training (per-epoch tracking) and evaluation, and the
names of what they measure.

A `Variant` says which version of the images was scored: the original, its LFC or HFC at
a radius, or its dominant or trailing SVD part at a rank. Results travel keyed by
`Variant`; the flat names of metrics.jsonl (``train_acc``, ``test_low_r4``) are derived
here and only here, by `metric_name`, and read back by lookup with `series` (never by
parsing a name).

`variant_counts` scores the original images and their LFC and HFC at every radius in one
compiled pass, from uint8 batches and a 0/1 mask for padded rows.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import frequency

KINDS = ("original", "low", "high", "dominant", "trailing")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One version of the images: `kind` in KINDS and its radius (low/high) or rank
    (dominant/trailing); the original has none."""

    kind: str
    param: Optional[Union[float, int]] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown variant kind {self.kind!r}; choose one of {KINDS}.")
        if (self.kind == "original") != (self.param is None):
            raise ValueError(f"variant {self.kind!r} {'takes no' if self.kind == 'original' else 'needs a'} "
                             "radius or rank.")

    @property
    def name(self) -> str:
        """Stable key in JSON files: original, low_r4, high_r4, dominant_k8, trailing_k8."""
        if self.kind == "original":
            return "original"
        return f"{self.kind}_{'r' if self.kind in ('low', 'high') else 'k'}{self.param:g}"

    @property
    def label(self) -> str:
        """For figures and tables: x, LFC r=4, HFC r=4, dominant k=8, trailing k=8."""
        if self.kind == "original":
            return "x"
        short = {"low": "LFC r", "high": "HFC r", "dominant": "dominant k", "trailing": "trailing k"}[self.kind]
        return f"{short}={self.param:g}"


ORIGINAL = Variant("original")


def low(radius: float) -> Variant:
    return Variant("low", float(radius))


def high(radius: float) -> Variant:
    return Variant("high", float(radius))


def tracked_variants(radii: Sequence[float]) -> Tuple[Variant, ...]:
    """The variants `variant_counts` scores, in its output order: x, LFC at each radius, HFC at each."""
    return (ORIGINAL, *(low(r) for r in radii), *(high(r) for r in radii))


def svd_variants(ranks: Sequence[int]) -> Tuple[Variant, ...]:
    """Section 8's split: dominant part at each rank, then trailing part at each rank."""
    return (*(Variant("dominant", int(k)) for k in ranks), *(Variant("trailing", int(k)) for k in ranks))


def metric_name(split: str, variant: Variant) -> str:
    """The flat metrics.jsonl / tensorboard name of `split`'s accuracy on `variant`
    (``train_acc`` for the original images, ``test_high_r4`` ...)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")
    return f"{split}_acc" if variant == ORIGINAL else f"{split}_{variant.name}"


def evaluator_metric(split: str, evaluator: str, key: str, eps: Optional[float] = None) -> str:
    """The metrics.jsonl name of an evaluator's value tracked during training, e.g.
    ``test_robustness_pgd_eps0.03`` or ``test_robustness_worst_case``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")
    return f"{split}_{evaluator}_{key}" + ("" if eps is None else f"_eps{eps:g}")


def flat_metrics(accuracy: Mapping[str, Mapping[Variant, float]]) -> Dict[str, float]:
    """{split: {Variant: value}} -> the flat names of metrics.jsonl."""
    return {metric_name(split, v): value for split, values in accuracy.items() for v, value in values.items()}


def accuracies(record: Mapping, split: str, variants: Sequence[Variant]) -> Dict[Variant, float]:
    """Per variant, `split`'s accuracy in one metrics.jsonl record, by lookup."""
    return {v: record[metric_name(split, v)] for v in variants}


def recorded(records: Sequence[Mapping], split: str, variants: Sequence[Variant]) -> Tuple[Variant, ...]:
    """The `variants` every record has a `split` accuracy for (a run resumed with other
    `track_radii` has some radii only in later epochs)."""
    return tuple(v for v in variants if all(metric_name(split, v) in r for r in records))


def series(records: Sequence[Mapping], split: str, variants: Sequence[Variant]) -> Dict[Variant, list]:
    """Per variant, `split`'s accuracy along `records` (metrics.jsonl lines), by lookup."""
    per_record = [accuracies(r, split, variants) for r in records]
    return {v: [a[v] for a in per_record] for v in variants}


def story_mask(correct: Mapping[Variant, np.ndarray], kept: Variant, dropped: Variant) -> np.ndarray:
    """Figure 2's selection: right on the original and on `kept`, wrong on `dropped`
    (HFC kept, LFC dropped; or trailing kept, dominant dropped)."""
    return np.asarray(correct[ORIGINAL]) & np.asarray(correct[kept]) & ~np.asarray(correct[dropped])


def figure2_examples(correct: Mapping[Variant, np.ndarray], radii: Sequence[float], preferred: float = 12.0,
                     count: int = 8) -> Tuple[Optional[float], np.ndarray]:
    """(radius, indices) of up to `count` images for Figure 2: at `preferred` (the paper's
    r = 12) when any image fits there, else at the radius where most fit; (None, []) if none do."""
    fits = {r: np.nonzero(story_mask(correct, high(r), low(r)))[0] for r in radii}
    if not fits or not any(len(v) for v in fits.values()):
        return None, np.zeros(0, np.int64)
    radius = float(preferred) if len(fits.get(float(preferred), ())) else max(fits, key=lambda r: len(fits[r]))
    return radius, fits[radius][:count]


# --------------------------------------------------------------------------- compiled counts


def to_unit(images):
    """uint8 pixels -> float32 in [0, 1]; float images (already in [0, 1]) -> float32 as they are."""
    if images.dtype == np.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def variant_counts(logits_fn, images_u8, labels, mask, radii, *, inclusive: bool = True):
    """Correct counts ``[1 + 2R]`` in the order of `tracked_variants(radii)`. `radii` is an
    array, so new radii never recompile."""
    return variant_counts_unit(logits_fn, to_unit(images_u8), labels, mask, radii, inclusive=inclusive)


def variant_counts_unit(logits_fn, x, labels, mask, radii, *, inclusive: bool = True):
    """`variant_counts` of images already in [0, 1]."""
    lows, highs = jax.vmap(lambda r: frequency.split(x, r, inclusive=inclusive))(radii)

    def correct(v):
        return jnp.sum((jnp.argmax(logits_fn(v), -1) == labels) * mask)

    return map_unrolled(correct, jnp.concatenate([x[None], lows, highs]))


def map_unrolled(fn, stacked):
    """``lax.map(fn, stacked)`` with the loop unrolled: a handful of model passes (one per
    variant) run faster unrolled on a CPU (docs/benchmarks.md) and cost only compile time."""
    return jax.lax.scan(lambda carry, v: (carry, fn(v)), None, stacked, unroll=True)[1]
