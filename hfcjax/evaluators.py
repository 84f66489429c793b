"""Evaluators in big_vision's sense: built from settings around an ``apply_fn(variables,
images) -> logits``, each `run(variables, images, labels)` returns structured results.

* `RobustnessEvaluator`: clean, FGSM and PGD at every eps, a stronger PGD with random
  restarts and the gradient-free Square attack at the largest eps, and the per-example
  worst case, with gradient-masking warnings. `smoothing_grid` runs it for every rho of
  Eq. 3 (and with BatchNorm statistics re-estimated) and gives the Table-2 rows;
  `robustness_columns` says how those rows look as JSON, CSV and Markdown.
* `FrequencyEvaluator`: accuracy on the LFC/HFC at every radius and on Section 8's SVD
  parts, and the predictions behind Figure 2, as a `FrequencyReport`.

Nothing here knows a run directory or a config file: `apply_fn` may wrap any model (the
variables are jit arguments, so a rho grid compiles once; pass ``{}`` for a closed-over
model), and images are uint8 ``[N, H, W, C]`` arrays with integer labels.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from hfcjax import (attacks, backend, data, frequency, heatmap, measure, models, reports, sharding, smoothing,
                    writers)

ApplyFn = Callable[[Any, jnp.ndarray], jnp.ndarray]
Log = Callable[[str], None]


def _batched(images, labels, batch_size, mesh_sharding):
    """Padded, sharded batches of an evaluation set: (index, images, labels, mask)."""
    for b, (x, y, m) in enumerate(data.batches(images, labels, batch_size, shuffle=False, drop_remainder=False)):
        yield (b, *sharding.global_batch(mesh_sharding, x, y, m))


# --------------------------------------------------------------------------- robustness


def make_attack_counts(apply_fn: ApplyFn, *, pgd_steps: int, pgd_step_fraction: float, strong_restarts: int,
                       square_queries: int, band_radius: float = 0.0, spectra: bool = False,
                       apgd_steps: int = 0, unroll: int | bool | None = None):
    """(variables, images_u8, labels, mask, eps[E], key) -> sums over the batch: correct
    counts clean, FGSM[E], PGD[E], strong PGD and Square at max eps, the worst case at max eps
    and at every eps ([E]: every attack run at that eps failed); with `band_radius` > 0 also
    PGD confined to the LFC / HFC of that radius at every eps and the energy fraction its
    perturbations leak out of the band; with `apgd_steps` > 0 APGD-CE and (3+ classes)
    APGD-DLR at max eps, also in the worst case; with `spectra` the radial spectrum of successful
    perturbations (clean right, attacked wrong) per attack, and how many there were."""

    def counts(variables, images_u8, labels, mask, eps, key):
        logits_fn = lambda z: apply_fn(variables, z)
        x = measure.to_unit(images_u8)
        count = lambda ok: jnp.sum(ok * mask, axis=-1)
        clean_ok = jnp.argmax(logits_fn(x), -1) == labels
        advs, oks = {}, {}

        def correct(images):
            return jnp.argmax(logits_fn(images), -1) == labels

        def per_eps(e):
            out = {"fgsm": attacks.fgsm(logits_fn, x, labels, e),
                   "pgd": attacks.pgd(logits_fn, x, labels, e, step_size=e * pgd_step_fraction, steps=pgd_steps,
                                      unroll=unroll)}
            if band_radius > 0:
                for kind in attacks.BANDS:
                    out[f"pgd_{kind}"] = attacks.pgd(logits_fn, x, labels, e, step_size=e * pgd_step_fraction,
                                                     steps=pgd_steps, unroll=unroll, band=(kind, band_radius))
            return out, {k: correct(v) for k, v in out.items()}

        per, per_ok = jax.vmap(per_eps)(eps)  # [E, B, ...]
        advs.update(per)
        oks.update(per_ok)
        e_max = eps[-1]
        strong_key, square_key = jax.random.split(key)
        advs["pgd_strong"] = attacks.pgd(logits_fn, x, labels, e_max, step_size=e_max * pgd_step_fraction,
                                         steps=2 * pgd_steps, random_start=True, key=strong_key,
                                         restarts=strong_restarts, unroll=unroll)
        oks["pgd_strong"] = correct(advs["pgd_strong"])
        if square_queries > 0:
            advs["square"] = attacks.square(logits_fn, x, labels, e_max, key=square_key, queries=square_queries)
            oks["square"] = correct(advs["square"])
        if apgd_steps > 0:
            losses = ("ce", "dlr") if jax.eval_shape(logits_fn, x).shape[-1] >= 3 else ("ce",)
            for loss in losses:
                advs[f"apgd_{loss}"] = attacks.apgd(logits_fn, x, labels, e_max, steps=apgd_steps, loss=loss,
                                                    unroll=unroll)
                oks[f"apgd_{loss}"] = correct(advs[f"apgd_{loss}"])
        # Worst case per example: robust only if every attack run at that eps failed.
        every_eps = jnp.all(jnp.stack([v for k, v in oks.items() if k in per_ok]), axis=0)  # [E, B]
        at_max = every_eps[-1]
        for name in oks.keys() - per_ok.keys():
            at_max = at_max & oks[name]
        out = {"clean": count(clean_ok), **{k: count(v) for k, v in oks.items()},
               "worst_case": count(at_max), "worst_case_per_eps": count(every_eps.at[-1].set(at_max))}
        if "square" not in oks:
            out["square"] = count(jnp.ones_like(clean_ok))
        if band_radius > 0:
            for kind in attacks.BANDS:
                leak = jax.vmap(lambda d: attacks.band_leak(d, (kind, band_radius)))(per[f"pgd_{kind}"] - x)
                out[f"leak_{kind}"] = jnp.sum(leak * mask, axis=-1)
        if spectra:  # {attack: (summed spectrum [..., R], number of successful perturbations [...])}
            out["spectra"] = {}
            for name, adv in advs.items():
                success = (clean_ok & ~oks[name]) * mask  # [B] or [E, B]
                spectrum = frequency.radial_spectrum(adv - x)  # [..., B, R]
                out["spectra"][name] = (jnp.sum(spectrum * success[..., None], axis=-2), jnp.sum(success, axis=-1))
        return out

    return counts


def sanity_warnings(row: Mapping, eps: Sequence[float], n: int) -> List[str]:
    """Gradient-masking checks (Carlini et al. 2019): each failure is a warning."""
    tol = max(3.0 / n, 0.01)  # random starts move a few examples either way
    warn = []
    for e, f, p in zip(eps, row["fgsm"], row["pgd"]):
        if p > f + tol:
            warn.append(f"PGD ({p:.3f}) is weaker than FGSM ({f:.3f}) at eps={e:g}")
    if any(b > a + tol for a, b in zip(row["pgd"], row["pgd"][1:])):
        warn.append("PGD accuracy rises with eps")
    if row["pgd"][-1] > 0.1 and row["pgd"][-1] >= 0.8 * row["pgd"][0]:
        warn.append(f"PGD accuracy is almost flat in eps ({row['pgd'][0]:.3f} -> {row['pgd'][-1]:.3f}): "
                    "possible gradient masking")
    if row["pgd_strong"] > row["pgd"][-1] + tol:
        warn.append("more PGD steps and restarts raised accuracy")
    if row["square"] is not None and row["square"] < min(row["pgd_strong"], row["pgd"][-1]) - tol:
        warn.append(f"the gradient-free Square attack ({row['square']:.3f}) beats PGD ({row['pgd'][-1]:.3f}): "
                    "PGD's gradients are masked, its accuracy overstates robustness")
    return warn


def model_checks(apply_fn: ApplyFn, variables, images_u8: np.ndarray, labels: np.ndarray, *,
                 key: jax.Array = None) -> List[str]:
    """AutoAttack's sanity checks of the model itself, on one batch: an output that changes
    between two identical passes (randomness), an output that looks like probabilities (a
    softmax layer), and images whose input gradient is exactly zero. Each finding is a warning."""
    x = measure.to_unit(jnp.asarray(images_u8))
    first, second = apply_fn(variables, x), apply_fn(variables, x)
    warn = []
    if not np.allclose(np.asarray(first), np.asarray(second)):
        warn.append("the model's output changes between two identical passes (randomness at inference): attacks "
                    "and accuracies are unreliable; evaluate it deterministically")
    out = np.asarray(first, np.float64)
    if out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(-1), 1, atol=1e-4):
        warn.append("the model's outputs look like probabilities (a softmax output layer?): attacks expect "
                    "logits; gradients through a second softmax vanish")
    grad = attacks.input_gradient(lambda z: apply_fn(variables, z), x, jnp.asarray(labels))
    zero = int(np.sum(np.all(np.asarray(grad).reshape(len(x), -1) == 0, axis=1)))
    if zero:
        warn.append(f"{zero} of {len(x)} images have an input gradient of exactly zero: gradient-based attacks "
                    "cannot move them (gradient masking); trust the gradient-free attacks there")
    return warn


class GridProgress:
    """Progress of a grid of evaluations (every row over the same images): one line per
    batch with the images done over the whole grid and the ETA of the whole grid. The rate
    is measured from the end of the first batch on, so compilation does not skew it."""

    def __init__(self, rows: int, images: int, log: Log = print, what: str = "grid"):
        self.total, self.done, self.images, self.log, self.what = rows * images, 0, images, log, what
        self.steady: Optional[Tuple[float, int]] = None  # (time, done) after the first batch
        self.start = time.time()

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
        now = time.time()
        self.done += images
        if self.steady is None:
            self.steady = (now, self.done)
            rate, note = self.done / max(now - self.start, 1e-9), " (first batch, compilation included)"
        else:
            rate, note = (self.done - self.steady[1]) / max(now - self.steady[0], 1e-9), ""
        eta = (self.total - self.done) / max(rate, 1e-9)
        self.log(f"  {label} | {self.what} {self.done}/{self.total} images | {rate:,.1f} img/s{note} | "
                 f"ETA {writers.format_seconds(eta)} for the whole {self.what}")


class RobustnessEvaluator:
    """Accuracy under FGSM/PGD at every eps and the masking referees at the largest eps.

    One compiled function serves every call: variables and eps are its arguments.
    """

    def __init__(self, apply_fn: ApplyFn, *, eps: Sequence[float], pgd_steps: int = 20,
                 pgd_step_fraction: float = 0.125, strong_restarts: int = 3, square_queries: int = 300,
                 band_radius: float = 0.0, spectra: bool = False, apgd_steps: int = 0, batch_size: int = 200,
                 seed: int = 0, log: Log = print):
        self.eps, self.square_queries, self.seed, self.log = list(eps), square_queries, seed, log
        self.band_radius, self.spectra, self.apgd_steps = band_radius, spectra, apgd_steps
        self.mesh = sharding.make_mesh()
        self.batch_size = -(-batch_size // self.mesh.size) * self.mesh.size
        repl, self.batch_sh = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
        self.counts = jax.jit(
            make_attack_counts(apply_fn, pgd_steps=pgd_steps, pgd_step_fraction=pgd_step_fraction,
                               strong_restarts=strong_restarts, square_queries=square_queries,
                               band_radius=band_radius, spectra=spectra, apgd_steps=apgd_steps),
            in_shardings=(repl, self.batch_sh, self.batch_sh, self.batch_sh, repl, repl), out_shardings=repl,
            compiler_options=backend.eval_compiler_options())
        self.compiled = False

    def run(self, variables, images_u8: np.ndarray, labels: np.ndarray, name: str = "model",
            progress: Optional[GridProgress] = None) -> Dict[str, Any]:
        """{clean, fgsm[E], pgd[E], pgd_strong, square (None when off), worst_case,
        worst_case_per_eps[E], seconds, warnings}, with `band_radius` also pgd_low[E],
        pgd_high[E], leak_low[E], leak_high[E] (mean energy fraction out of the band), and with
        `apgd_steps` apgd_ce (and apgd_dlr) at max eps, with `spectra` a "spectra" dict {attack: mean radial spectrum of its successful
        perturbations, [E][R] or [R] (None where none succeeded)}: accuracies over `images_u8`,
        progress logged with an ETA (of the whole grid when `progress` is the grid's)."""
        eps = jnp.asarray(np.asarray(self.eps, np.float32))
        n, start, total = len(images_u8), time.time(), None
        progress = progress or GridProgress(1, n, self.log, what="row")
        if not self.compiled:
            self.log("  compiling the attacks (once for every row; the first batch waits for it)")
            self.compiled = True
        for b, x, y, m in _batched(images_u8, labels, self.batch_size, self.batch_sh):
            counts = self.counts(variables, x, y, m, eps, jax.random.PRNGKey(self.seed + b))
            total = jax.block_until_ready(counts if total is None else jax.tree.map(jnp.add, total, counts))
            progress.advance(min((b + 1) * self.batch_size, n) - min(b * self.batch_size, n), f"{name}: batch {b + 1}")
        total = jax.tree.map(lambda v: np.asarray(v, np.float64), jax.device_get(total))
        spectra = total.pop("spectra", {})
        acc = {k: v / n for k, v in total.items()}
        row = {"clean": float(acc["clean"]), "fgsm": acc["fgsm"].tolist(), "pgd": acc["pgd"].tolist(),
               "pgd_strong": float(acc["pgd_strong"]),
               "square": float(acc["square"]) if self.square_queries else None,
               "worst_case": float(acc["worst_case"]), "worst_case_per_eps": acc["worst_case_per_eps"].tolist()}
        for loss in ("ce", "dlr"):
            if f"apgd_{loss}" in acc:
                row[f"apgd_{loss}"] = float(acc[f"apgd_{loss}"])
        if self.band_radius > 0:
            for kind in attacks.BANDS:
                row[f"pgd_{kind}"] = acc[f"pgd_{kind}"].tolist()
                row[f"leak_{kind}"] = acc[f"leak_{kind}"].tolist()
        if self.spectra:
            row["spectra"] = {name: _mean_spectrum(sums, successes) for name, (sums, successes) in spectra.items()}
        row["seconds"] = round(time.time() - start, 2)
        row["warnings"] = sanity_warnings(row, self.eps, n)
        for w in row["warnings"]:
            self.log(f"  warning [{name}]: {w}")
        return row


def _mean_spectrum(sums: np.ndarray, counts: np.ndarray):
    """Mean spectrum per eps (or one), None where no perturbation succeeded."""
    if sums.ndim == 1:
        return (sums / counts).tolist() if counts > 0 else None
    return [(s / c).tolist() if c > 0 else None for s, c in zip(sums, counts)]


def smoothed_variants(variables, *, rhos: Sequence[float], layers: Sequence[str] = smoothing.DEFAULT_LAYERS,
                      recalibrate: Optional[Callable[[Dict], Dict]] = None):
    """Yields (name, rho, bn_reestimated, variables) for the first-layer kernels smoothed with
    every rho (Eq. 3), then, with `recalibrate` (variables -> variables with re-estimated
    BatchNorm statistics), the same after re-estimation."""
    smoothing.selected_paths(variables["params"], layers)  # a clear error before any work
    for recal in (False, True) if recalibrate else (False,):
        for rho in rhos:
            current = {**variables, "params": smoothing.smooth_params(variables["params"], rho, layers=layers)}
            if recal:
                current = recalibrate(current)
            yield f"rho={rho:g}" + (" (BN re-estimated)" if recal else ""), rho, recal, current


def smoothing_grid(evaluator: RobustnessEvaluator, variables, images_u8, labels, *, rhos: Sequence[float],
                   layers: Sequence[str] = smoothing.DEFAULT_LAYERS,
                   recalibrate: Optional[Callable[[Dict], Dict]] = None,
                   partial: Optional[reports.PartialResults] = None) -> Tuple[List[Dict], Dict[str, np.ndarray]]:
    """Table 2: the evaluator's row for every `smoothed_variants` entry. Returns (rows,
    {name: kernel}) where each row adds name, rho, bn_reestimated and the kernel's roughness.
    With `partial`, every finished row is saved as it completes and rows saved by an
    interrupted earlier run are read back instead of recomputed."""
    rows, kernels = [], {}
    progress = GridProgress(len(rhos) * (2 if recalibrate else 1), len(images_u8), evaluator.log)
    for name, rho, recal, current in smoothed_variants(variables, rhos=rhos, layers=layers, recalibrate=recalibrate):
        kernel = np.asarray(jax.device_get(smoothing.first_kernel(current["params"], layers)))
        rows.append(progress.kept_or_run(name, partial, lambda: {
            "name": name, "rho": rho, "bn_reestimated": recal,
            **evaluator.run(current, images_u8, labels, name, progress),
            "roughness": float(smoothing.roughness(kernel))}))
        if not recal:
            kernels[name] = kernel
    return rows, kernels


class HeatmapEvaluator:
    """The Fourier heat map (`hfcjax.heatmap`) of a model over a set of images: error rate
    per frequency, centred. Bases go through in groups of `backend.heatmap_group` per
    compiled call (one compilation: variables, eps and the group's basis ids are arguments)."""

    def __init__(self, apply_fn: ApplyFn, *, eps: float, batch_size: int = 200, seed: int = 0,
                 basis_chunk: int = 8, log: Log = print):
        if not eps > 0:
            raise ValueError(f"the heat map's eps must be > 0 (the L2 norm of each Fourier basis), got {eps!r}.")
        self.eps, self.batch_size, self.seed, self.chunk, self.log = eps, batch_size, seed, basis_chunk, log
        self.counts = jax.jit(lambda variables, x_u8, y, m, e, ids, key: heatmap.basis_counts(
            lambda z: apply_fn(variables, z), measure.to_unit(x_u8), y, e, ids, key=key, mask=m,
            basis_chunk=basis_chunk))
        self.compiled = False

    def run(self, variables, images_u8: np.ndarray, labels: np.ndarray, name: str = "model",
            progress: Optional[GridProgress] = None) -> np.ndarray:
        """[H, W] error rates (1 - accuracy) with zero frequency at (H // 2, W // 2)."""
        n, height, width = len(images_u8), *images_u8.shape[1:3]
        num_bases = len(heatmap.basis_frequencies(height, width)[0])
        group = -(-backend.heatmap_group(num_bases) // self.chunk) * self.chunk
        ids = heatmap.padded_ids(num_bases, group).reshape(-1, group)
        total, done = np.zeros(num_bases), 0
        progress = progress or GridProgress(1, n, self.log, what="heat map")
        if not self.compiled:
            self.log("  compiling the heat map (once for every rho; the first batch waits for it)")
            self.compiled = True
        for b, (x, y, m) in enumerate(data.batches(images_u8, labels, self.batch_size, shuffle=False,
                                                   drop_remainder=False)):
            key = jax.random.PRNGKey(self.seed + b)
            counts = np.concatenate([np.asarray(self.counts(variables, x, y, m, jnp.float32(self.eps), jnp.asarray(g),
                                                            key)) for g in ids])
            total += counts[:num_bases]
            progress.advance(min((b + 1) * self.batch_size, n) - done, f"heat map {name}: batch {b + 1}")
            done = min((b + 1) * self.batch_size, n)
        return 1.0 - heatmap.to_map(total, height, width) / n


def robustness_columns(eps: Sequence[float], square: bool, band_radius: float = 0.0,
                       apgd: Sequence[str] = ()) -> List[reports.Column]:
    """How Table-2 rows look in robustness.csv (every value) and robustness.md; `apgd` names
    the APGD losses the rows have."""
    e = eps[-1]
    per_eps = lambda key, md, csv_name: [reports.field(key, md and f"{md} {v:g}", f"{csv_name}_{v:g}", index=i)
                                         for i, v in enumerate(eps)]
    band = []
    if band_radius > 0:
        r = f"{band_radius:g}"
        band = (per_eps("pgd_low", f"PGD-LFC r={r}", f"pgd_low_r{r}") + per_eps("pgd_high", f"PGD-HFC r={r}",
                                                                                   f"pgd_high_r{r}")
                + per_eps("leak_low", None, f"leak_low_r{r}") + per_eps("leak_high", None, f"leak_high_r{r}"))
    return ([reports.field("name", "model", "model", fmt=str), reports.field("rho"), reports.field("bn_reestimated"),
             reports.field("clean", "clean")]
            + per_eps("fgsm", "FGSM", "fgsm") + per_eps("pgd", "PGD", "pgd") + band
            + [reports.field("pgd_strong", f"PGD-strong {e:g}"),
               reports.field("square", f"Square {e:g}" if square else None)]
            + [reports.field(f"apgd_{loss}", f"APGD-{loss.upper()} {e:g}") for loss in apgd]
            + [
               reports.field("worst_case", f"worst case {e:g}"), reports.field("roughness", "roughness")]
            + per_eps("worst_case_per_eps", None, "worst_case"))


# --------------------------------------------------------------------------- BatchNorm re-estimation


def make_batch_stats_fn(model):
    """Jitted (params, batch_stats, images_u8) -> this batch's BatchNorm means and variances."""

    @jax.jit
    def batch_stats_of(params, stats, x):
        zeros = jax.tree.map(jnp.zeros_like, stats)
        _, updates = model.apply({"params": params, "batch_stats": zeros}, measure.to_unit(x), train=True,
                                 mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return jax.tree.map(lambda v: v / (1.0 - models.BN_MOMENTUM), updates["batch_stats"])

    return batch_stats_of


def recalibrate_batch_stats(model, variables, images_u8: np.ndarray, batch_size: int = 200, stats_fn=None):
    """Re-estimates BatchNorm statistics on `images_u8` for (e.g. smoothed) parameters:
    the mean over batches of each batch's mean and variance, as used in training mode.
    Pass one `stats_fn` (make_batch_stats_fn) for many calls so it compiles once."""
    batch_stats_of = stats_fn or make_batch_stats_fn(model)
    total, n = None, 0
    for x, _, _ in data.batches(images_u8, np.zeros(len(images_u8), np.int32), batch_size, shuffle=False):
        stats = batch_stats_of(variables["params"], variables["batch_stats"], x)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    if n == 0:
        raise ValueError(f"need at least {batch_size} training images to re-estimate BatchNorm statistics.")
    return {**variables, "batch_stats": jax.tree.map(lambda v: v / n, total)}


# --------------------------------------------------------------------------- frequency


def make_predictions(apply_fn: ApplyFn, inclusive: bool):
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
        freq = reports.markdown_table(
            ["split", *(f"r={r:g}" for r in self.radii)],
            [["LFC accuracy", *(acc[measure.low(r)] for r in self.radii)],
             ["HFC accuracy", *(acc[measure.high(r)] for r in self.radii)],
             ["Figure-2 count (right on x and HFC, wrong on LFC)", *(str(story[r]) for r in self.radii)]])
        parts = [freq]
        if self.ranks:
            parts.append(reports.markdown_table(
                ["SVD split", *(f"k={k}" for k in self.ranks)],
                [["dominant accuracy", *(acc[measure.Variant("dominant", k)] for k in self.ranks)],
                 ["trailing accuracy", *(acc[measure.Variant("trailing", k)] for k in self.ranks)],
                 ["count (right on x and trailing, wrong on dominant)", *(str(svd[k]) for k in self.ranks)]]))
        parts.append(f"clean accuracy {acc[measure.ORIGINAL]:.3f} on {len(self.labels)} test images")
        return "\n\n".join(parts)

    def figure2_rows(self, indices: Sequence[int], radius: float) -> List[Dict]:
        """What `plots.hfc_story` prints under each image: label, and per original/low/high
        the predicted class and confidence."""
        keys = {"original": measure.ORIGINAL, "low": measure.low(radius), "high": measure.high(radius)}
        return [{"label": int(self.labels[i]),
                 **{k: (int(self.predictions[v][i]), float(self.confidences[v][i])) for k, v in keys.items()}}
                for i in indices]


class FrequencyEvaluator:
    """Predictions on the original images, their LFC/HFC at every radius and their SVD parts."""

    def __init__(self, apply_fn: ApplyFn, *, radii: Sequence[float], ranks: Sequence[int] = (),
                 inclusive: bool = True, batch_size: int = 200):
        self.radii, self.ranks, self.batch_size = [float(r) for r in radii], [int(k) for k in ranks], batch_size
        self.predict = jax.jit(make_predictions(apply_fn, inclusive), static_argnums=3,
                               compiler_options=backend.eval_compiler_options())

    def run(self, variables, images_u8: np.ndarray, labels: np.ndarray) -> FrequencyReport:
        """Ranks larger than the images allow are left out."""
        max_rank = min(images_u8.shape[1:3])
        ranks = [k for k in self.ranks if k <= max_rank]
        variants = measure.tracked_variants(self.radii) + measure.svd_variants(ranks)
        radii = jnp.asarray(self.radii, jnp.float32)
        preds, confs = [], []
        for x, _, m in data.batches(images_u8, labels, self.batch_size, shuffle=False, drop_remainder=False):
            p, c = self.predict(variables, x, radii, tuple(ranks))
            keep = m > 0
            preds.append(np.asarray(p)[:, keep])
            confs.append(np.asarray(c)[:, keep])
        preds, confs = np.concatenate(preds, 1), np.concatenate(confs, 1)
        return FrequencyReport(self.radii, ranks, np.asarray(labels), dict(zip(variants, preds)),
                               dict(zip(variants, confs)))
