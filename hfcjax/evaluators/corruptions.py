"""`corruptions`: accuracy under CIFAR-10-C's 15 common corruptions at 5 severities,
generated from the evaluation images with the generator's parameters for 32x32 images
(`hfcjax.corruptions`), and where each corruption's power lies in the spectrum (Yin et al.
2019, Fig. 4-5: is the error under a corruption tied to how much of it is high frequency?).

Per model variant: accuracy per corruption and severity, the mean error per corruption over
severities and the mean over all (`mean_error`); with ``baseline`` (the corruptions.json of
another evaluation, e.g. M_natural's) each corruption's error relative to the baseline's
first row, CE_c = sum_s E_c,s / sum_s E^base_c,s, their mean mCE, and the relative mCE
(errors minus clean error, Hendrycks & Dietterich's definition). Per corruption and severity
(the same for every variant), the spectral profile: the fraction of the power of the
corruption (corrupted minus clean image, [0, 1] units, summed over images and channels) at
distances d > r from the centre of the shifted spectrum, for r = 0, 1, ... .

The corrupted images are kept on disk (``$HFCJAX_CACHE_DIR/corruptions``, one .npz of images and
spectral profile per corruption and severity, keyed by the images, the settings and the definitions' version),
so a second evaluation of the same images generates nothing. One compiled prediction serves
every corruption, severity and variant.

Files: corruptions.{json,csv,md} and corruptions.png (error per corruption and severity;
error against the corruption's power beyond r = H/4).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfcjax import backend, corruptions as definitions, data, frequency, hashing, measure, plots, reports
from hfcjax.evaluators import common
from hfcjax.errors import UserError

VERSION = 1  # of the definitions: a change to hfcjax.corruptions bumps it, so old cached images are not read


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.corruptions = definitions.NAMES  # any of the 15, in this order in the report
    c.severities = definitions.SEVERITIES
    c.seed = 0  # the corruptions' random draws
    c.baseline = ""  # a baseline evaluation's corruptions.json: CE, mCE and relative mCE against its first row
    c.cache = True  # keep the corrupted images in $HFCJAX_CACHE_DIR/corruptions
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    names = list(c.corruptions)
    unknown = [n for n in names if n not in definitions.NAMES]
    if not names or unknown or len(set(names)) != len(names):
        raise UserError(f"corruptions must be distinct names among {list(definitions.NAMES)}, got {names}.")
    severities = list(c.severities)
    if not severities or any(s not in definitions.SEVERITIES for s in severities) or sorted(set(severities)) != severities:
        raise UserError(f"severities must be increasing values among {list(definitions.SEVERITIES)}, got {severities}.")
    common.check_int(c, "seed", 0)
    if not isinstance(c.cache, bool):
        raise UserError(f"cache must be True or False, got {c.cache!r}.")


@dataclasses.dataclass(frozen=True)
class Row:
    """`accuracy[i][j]`: accuracy under corruption i at severity j; `error[i]` its mean error
    over the severities; `ce`/`relative_ce` per corruption and `mce`/`relative_mce` against
    the baseline (None without one). `power_beyond[i][j][r]`: the corruption's power
    fraction at distances > r (r = 0..len-1)."""

    name: str
    rho: float
    bn_reestimated: bool
    clean: float
    corruptions: List[str]
    severities: List[int]
    accuracy: List[List[float]]
    error: List[float]
    mean_error: float
    ce: Optional[List[float]]
    mce: Optional[float]
    relative_ce: Optional[List[float]]
    relative_mce: Optional[float]
    power_beyond: List[List[List[float]]]


def power_beyond(clean_u8: np.ndarray, corrupted_u8: np.ndarray) -> List[float]:
    """Fraction of the power of (corrupted - clean) at centred-spectrum distances > r, for
    r = 0 .. the largest integer distance (numpy, float64)."""
    delta = (corrupted_u8.astype(np.float64) - clean_u8.astype(np.float64)) / 255.0
    power = (np.abs(np.fft.fft2(delta, axes=(1, 2))) ** 2).sum(axis=(0, 3))
    distance = np.sqrt(frequency.squared_distance(*power.shape).astype(np.float64))  # fft2's own layout
    total = power.sum()
    return [float(power[distance > r].sum() / total) if total > 0 else 0.0 for r in range(int(distance.max()) + 1)]


def read_baseline(path: str, names: Sequence[str], severities: Sequence[int]) -> Dict[str, np.ndarray]:
    """{'error': [corruption, severity], 'clean': scalar} of the baseline's first row, for `names`."""
    try:
        value = json.loads(Path(path).expanduser().read_text())
        row = value["rows"][0]
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise UserError(f"config.evals.corruptions.baseline: cannot read a corruptions.json with rows from {path} "
                        f"({e}); give the corruptions.json of a finished evaluation.") from None
    missing = [n for n in names if n not in row["corruptions"]] + [s for s in severities if s not in row["severities"]]
    if missing:
        raise UserError(f"config.evals.corruptions.baseline {path} lacks {missing}: evaluate the baseline with the "
                        f"same corruptions and severities.")
    acc = np.asarray(row["accuracy"], np.float64)
    pick = acc[[row["corruptions"].index(n) for n in names]][:, [row["severities"].index(s) for s in severities]]
    return {"error": 1 - pick, "clean": 1 - float(row["clean"])}


class Evaluator(common.Evaluator):
    name = "corruptions"
    stage = 2
    caption = "Error per corruption (mean over severities; mCE against the baseline when one is given)"
    figure_note = "Per severity and spectra"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # one compiled prediction for every run of this evaluator
        self.correct = jax.jit(lambda v, x, y: jnp.argmax(self.apply_fn(v, measure.to_unit(x)), -1) == y,
                               compiler_options=backend.eval_compiler_options())

    def corrupted(self, images: np.ndarray, name: str, severity: int):
        """(corrupted images, their spectral profile), from the cache when it holds them."""
        key = hashing.text_sha256(json.dumps([hashing.arrays_sha256([images]), name, severity, self.cfg.seed,
                                              VERSION]))[:24]
        path = data.cache_dir() / "corruptions" / f"{name}_s{severity}_{key}.npz"
        if self.cfg.cache and path.is_file():
            with np.load(path) as kept:
                return kept["images"], kept["power_beyond"].tolist()
        out = definitions.corrupt(images, name, severity, self.cfg.seed)
        profile = power_beyond(images, out)
        if self.cfg.cache:
            with reports.atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, images=out, power_beyond=np.asarray(profile))
        return out, profile

    def sets(self, inputs: common.Inputs):
        """[(corruption, severity, images, power profile)] of every pair, generated or read back."""
        out, start = [], time.time()
        pairs = [(n, s) for n in self.cfg.corruptions for s in self.cfg.severities]
        for k, (name, severity) in enumerate(pairs):
            out.append((name, severity, *self.corrupted(inputs.images, name, severity)))
            if k % len(self.cfg.severities) == len(self.cfg.severities) - 1:
                self.log(f"  corruptions: {name} ready ({k + 1}/{len(pairs)} sets, {time.time() - start:.1f} s)")
        return out

    def run(self, inputs: common.Inputs) -> List[Row]:
        sets = self.sets(inputs)
        progress = common.GridProgress(len(inputs.variants), len(inputs.images) * (len(sets) + 1), self.log,
                                       what="corruptions grid")
        baseline = read_baseline(self.cfg.baseline, self.cfg.corruptions, self.cfg.severities) \
            if self.cfg.baseline else None

        def accuracy(variant, images, label):
            right = 0  # summed on the device: no wait for each batch
            for x, y, m in data.batches(images, inputs.labels, self.shared.batch_size, shuffle=False,
                                        drop_remainder=False):
                right = right + jnp.sum(self.correct(variant.variables, x, y) * m)
                progress.advance(int(m.sum()), f"{variant.name}: {label}")
            return int(right) / len(images)

        def one(variant):
            clean = accuracy(variant, inputs.images, "clean")
            acc = np.array([accuracy(variant, images, f"{n} s{s}") for n, s, images, _ in sets])
            acc = acc.reshape(len(self.cfg.corruptions), len(self.cfg.severities))
            return common.to_json(self.row(variant, clean, acc, [p for *_, p in sets], baseline))

        return [Row(**progress.kept_or_run(f"corruptions {v.name}", inputs.partial, lambda v=v: one(v)))
                for v in inputs.variants]

    def row(self, variant, clean: float, acc: np.ndarray, profiles, baseline) -> Row:
        error = 1 - acc
        ce = mce = rce = rmce = None
        if baseline is not None:
            ratio = lambda num, den: [float(a / b) if b > 0 else None for a, b in zip(num, den)]
            ce = ratio(error.sum(1), baseline["error"].sum(1))
            rce = ratio((error - (1 - clean)).sum(1), (baseline["error"] - baseline["clean"]).sum(1))
            mean = lambda values: float(np.mean(values)) if all(v is not None for v in values) else None
            mce, rmce = mean(ce), mean(rce)
        n_sev = len(self.cfg.severities)
        return Row(name=variant.name, rho=variant.rho, bn_reestimated=variant.bn_reestimated, clean=clean,
                   corruptions=list(self.cfg.corruptions), severities=list(self.cfg.severities),
                   accuracy=acc.tolist(), error=error.mean(1).tolist(), mean_error=float(error.mean()), ce=ce, mce=mce,
                   relative_ce=rce, relative_mce=rmce,
                   power_beyond=[profiles[i * n_sev:(i + 1) * n_sev] for i in range(len(self.cfg.corruptions))])

    def columns(self, rows: List[Row]) -> List[reports.Column]:
        names = rows[0].corruptions if rows else []
        return (common.variant_columns() + [reports.field("clean", "clean"), reports.field("mean_error", "mean error"),
                                            reports.field("mce", "mCE"), reports.field("relative_mce", "rel. mCE")]
                + [reports.field("error", name.replace("_", " "), f"error_{name}", index=i)
                   for i, name in enumerate(names)])

    def write(self, rows: List[Row], out_dir, inputs: common.Inputs) -> None:
        common.write_rows(self, rows, out_dir, inputs, figure)


def figure(rows: Sequence[Dict], path) -> str:
    """Left: the first row's error per corruption (one bar per severity). Right: per row
    (rho), each corruption's mean error against the fraction of its power beyond r = H/4
    (mean over severities), Yin et al.'s question: are high-frequency corruptions the hard ones?"""
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1.6, 1]})
    if rows:
        first = rows[0]
        names, severities = first["corruptions"], first["severities"]
        error = 1 - np.asarray(first["accuracy"])
        width = 0.8 / len(severities)
        shades = plots.palette(len(severities), "viridis", 0.15, 0.9)
        for j, (s, colour) in enumerate(zip(severities, shades)):
            axes[0].bar(np.arange(len(names)) + (j - (len(severities) - 1) / 2) * width, error[:, j], width,
                        color=colour, label=f"severity {s}")
        axes[0].axhline(1 - first["clean"], color="k", ls="--", lw=0.8, label="clean error")
        axes[0].set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=6)
        axes[0].set_ylim(0, 1)
        axes[0].set_title(f"{first['name']}: error per corruption and severity", fontsize=9)
        axes[0].legend(fontsize=6, ncol=3)
        colours = plots.palette(len(rows))
        for colour, row in zip(colours, rows):
            profiles = np.asarray(row["power_beyond"])  # [corruption, severity, r]
            r = int(round((profiles.shape[-1] - 1) * np.sqrt(2) / 4))  # H/4 of square images: the last r is ~H/sqrt(2)
            x = profiles[:, :, r].mean(1)
            axes[1].scatter(x, row["error"], color=colour, s=18, label=row["name"])
            if row is rows[0]:
                for xi, yi, n in zip(x, row["error"], row["corruptions"]):
                    axes[1].annotate(n.replace("_", " "), (xi, yi), fontsize=5, xytext=(2, 2), textcoords="offset points")
        axes[1].set_xlabel(f"fraction of the corruption's power at distance > {r} (mean over severities)", fontsize=8)
        axes[1].set_ylabel("mean error over severities", fontsize=8)
        axes[1].set_xlim(0, 1)
        axes[1].set_ylim(0, 1)
        axes[1].legend(fontsize=6)
        axes[1].set_title("corruption error against its high-frequency power", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    return plots.save(fig, path)
