"""Robustness and frequency report of a trained run (Section 6, Table 2, Figures 2 and 7).

    python -m hfcjax.evaluate --workdir DIR [--rho 0,0.1,0.25,0.5,1] [--eps 0.03,0.06,0.09]

Restores only the model variables and the saved config from DIR/checkpoints (never the
optimizer state), smooths the first-layer kernels for every rho as a transform of the
parameter tree, attacks the test images with FGSM, PGD, a stronger PGD (more steps,
random restarts) and the gradient-free Square attack, and writes everything under
DIR/eval/. Parameters are arguments of the compiled attack, so the whole rho grid
compiles once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from hfcjax import attacks, data, frequency, measure, models, plots, sharding, smoothing

EVAL_DIR = "eval"
CHECKPOINT_DIR = "checkpoints"  # the layout written by hfcjax.train


class EvaluationError(RuntimeError):
    """The run cannot be evaluated as asked; the message says what to do."""


# --------------------------------------------------------------------------- restoring


def restore(workdir, step: str = "latest"):
    """(config, model, variables, step) from a training run's checkpoints: the model
    variables and the saved config only."""
    directory = (Path(workdir) / CHECKPOINT_DIR).absolute()
    if not directory.is_dir():
        raise EvaluationError(f"no checkpoints in {directory}: train first with "
                              f"`python -m hfcjax.main --config ... --workdir {workdir}`.")
    manager = ocp.CheckpointManager(directory, item_names=("model", "config"),
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    if step == "latest":
        chosen = manager.latest_step()
    elif step == "best":
        chosen = manager.best_step()
    else:
        chosen = int(step)
        if chosen not in manager.all_steps():
            raise EvaluationError(f"no checkpoint of epoch {chosen} in {directory}; have {manager.all_steps()}.")
    if chosen is None:
        raise EvaluationError(f"{directory} holds no finished checkpoint: train at least one epoch first.")
    config = ml_collections.ConfigDict(manager.restore(chosen, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"])
    spec = data.get_spec(config.dataset)
    model = models.from_config(config, spec.num_classes)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *spec.shape)), train=False))
    target = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
    restored = manager.restore(chosen, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))["model"]
    manager.close()
    variables = {"params": restored["params"]}
    if restored["batch_stats"]:
        variables["batch_stats"] = restored["batch_stats"]
    return config, model, variables, chosen


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
        raise EvaluationError(f"need at least {batch_size} training images to re-estimate BatchNorm statistics.")
    return {**variables, "batch_stats": jax.tree.map(lambda v: v / n, total)}


# --------------------------------------------------------------------------- compiled measurements


def make_attack_counts(model, *, pgd_steps: int, pgd_step_fraction: float, strong_restarts: int,
                       square_queries: int, unroll: int | bool | None = None):
    """Jitted (variables, images_u8, labels, mask, eps[E], key) -> correct counts:
    clean, FGSM[E], PGD[E], strong PGD at max eps, Square at max eps."""

    def counts(variables, images_u8, labels, mask, eps, key):
        logits_fn = lambda z: model.apply(variables, z, train=False)
        x = measure.to_unit(images_u8)

        def correct(images):
            return jnp.argmax(logits_fn(images), -1) == labels

        def per_eps(e):
            adv_fgsm = attacks.fgsm(logits_fn, x, labels, e)
            adv_pgd = attacks.pgd(logits_fn, x, labels, e, step_size=e * pgd_step_fraction, steps=pgd_steps,
                                  unroll=unroll)
            return correct(adv_fgsm), correct(adv_pgd)

        fgsm_ok, pgd_ok = jax.vmap(per_eps)(eps)  # [E, B]
        e_max = eps[-1]
        strong_key, square_key = jax.random.split(key)
        strong_ok = correct(attacks.pgd(logits_fn, x, labels, e_max, step_size=e_max * pgd_step_fraction,
                                        steps=2 * pgd_steps, random_start=True, key=strong_key,
                                        restarts=strong_restarts, unroll=unroll))
        square_ok = (correct(attacks.square(logits_fn, x, labels, e_max, key=square_key, queries=square_queries))
                     if square_queries > 0 else jnp.ones_like(strong_ok))
        # Worst case per example at the largest eps: robust only if every attack failed.
        survived = fgsm_ok[-1] & pgd_ok[-1] & strong_ok & square_ok
        count = lambda ok: jnp.sum(ok * mask, axis=-1)
        return {"clean": count(correct(x)), "fgsm": count(fgsm_ok), "pgd": count(pgd_ok),
                "pgd_strong": count(strong_ok), "square": count(square_ok), "worst_case": count(survived)}

    return counts


def make_predictions(model, inclusive: bool):
    """Jitted (variables, images_u8, radii[R], ranks) -> predicted class and confidence for
    the original, LFC/HFC at every radius and dominant/trailing SVD parts at every rank."""

    def predict(variables, images_u8, radii, ranks: Sequence[int]):
        x = measure.to_unit(images_u8)
        low, high = jax.vmap(lambda r: frequency.split(x, r, inclusive=inclusive))(radii)
        parts = [frequency.svd_split(x, k) for k in ranks]
        variants = jnp.concatenate([x[None], low, high, jnp.stack([p[0] for p in parts]),
                                    jnp.stack([p[1] for p in parts])])

        def one(v):
            probs = jax.nn.softmax(model.apply(variables, v, train=False))
            return jnp.argmax(probs, -1), jnp.max(probs, -1)

        return measure.map_unrolled(one, variants)

    return predict


# --------------------------------------------------------------------------- the report


def _parse_floats(text: str, what: str, low: float = 0.0, high: float = float("inf")) -> List[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise EvaluationError(f"--{what} must be comma-separated numbers, got {text!r}.") from None
    if not values or any(not low <= v <= high for v in values):
        raise EvaluationError(f"--{what} values must lie in [{low}, {high}], got {text!r}.")
    return values


def sanity_warnings(row: Dict, eps: Sequence[float], n: int) -> List[str]:
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


def markdown_table(rows: Sequence[Dict], eps: Sequence[float], square: bool) -> str:
    head = (["model", "clean"] + [f"FGSM {e:g}" for e in eps] + [f"PGD {e:g}" for e in eps]
            + [f"PGD-strong {eps[-1]:g}"] + ([f"Square {eps[-1]:g}"] if square else [])
            + [f"worst case {eps[-1]:g}", "roughness"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["name"], f"{r['clean']:.3f}"] + [f"{v:.3f}" for v in r["fgsm"]] + [f"{v:.3f}" for v in r["pgd"]]
                 + [f"{r['pgd_strong']:.3f}"] + ([f"{r['square']:.3f}"] if square else [])
                 + [f"{r['worst_case']:.3f}", f"{r['roughness']:.3f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def evaluate(workdir, *, rhos=(0.0, 0.1, 0.25, 0.5, 1.0), eps=(0.03, 0.06, 0.09), num_examples: int = 0,
             batch_size: int = 200, pgd_steps: int = 20, pgd_step_fraction: float = 0.125, strong_restarts: int = 3,
             square_queries: int = 300, layers: Sequence[str] = smoothing.DEFAULT_LAYERS,
             recalibrate_bn: Optional[bool] = None, recalibrate_examples: int = 2000, step: str = "latest",
             svd_ranks=(4, 8, 12, 16), seed: int = 0, data_dir: Optional[str] = None) -> Dict:
    """Computes the Table-2 grid and the frequency report; writes them under DIR/eval/."""
    if any(not 0 <= e <= 1 for e in eps) or not eps:
        raise EvaluationError(f"eps values must lie in [0, 1] (pixels are in [0, 1]), got {list(eps)}.")
    if any(r < 0 for r in rhos) or not rhos:
        raise EvaluationError(f"rho values must be >= 0, got {list(rhos)}.")
    if pgd_steps < 1 or strong_restarts < 1 or batch_size < 1 or square_queries < 0:
        raise EvaluationError("need pgd_steps >= 1, restarts >= 1, batch_size >= 1, square_queries >= 0.")
    config, model, variables, chosen = restore(workdir, step)
    try:
        smoothing.selected_paths(variables["params"], layers)
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    spec = data.get_spec(config.dataset)
    kw = dict(source=config.data_source, data_dir=data_dir or config.data_dir or None)
    images, labels = data.load(config.dataset, "test", **kw)
    if num_examples:
        images, labels = data.subset(images, labels, min(num_examples, len(images)))
    has_bn = "batch_stats" in variables
    recalibrate_bn = has_bn if recalibrate_bn is None else (recalibrate_bn and has_bn)
    train_images = data.load(config.dataset, "train", **kw)[0][:recalibrate_examples] if recalibrate_bn else None

    mesh = sharding.make_mesh()
    batch_size = -(-batch_size // mesh.size) * mesh.size
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    attack_counts = jax.jit(make_attack_counts(model, pgd_steps=pgd_steps, pgd_step_fraction=pgd_step_fraction,
                                               strong_restarts=strong_restarts, square_queries=square_queries),
                            in_shardings=(repl, batch_sh, batch_sh, batch_sh, repl, repl), out_shardings=repl,
                            compiler_options=measure.compiler_options())
    eps_arr = jnp.asarray(np.asarray(eps, np.float32))
    n = len(images)
    out_dir = Path(workdir) / EVAL_DIR
    log = lambda msg: print(msg, flush=True)
    log(f"evaluating {config.model} on {n} {config.dataset} test images (checkpoint of epoch {chosen}); "
        f"rho {list(rhos)}, eps {list(eps)}, PGD-{pgd_steps} step eps*{pgd_step_fraction:g}, "
        f"strong PGD-{2 * pgd_steps} x{strong_restarts} random restarts, Square {square_queries} queries")

    stats_fn = make_batch_stats_fn(model) if recalibrate_bn else None
    variants = [(rho, False) for rho in rhos] + ([(rho, True) for rho in rhos] if recalibrate_bn else [])
    rows, kernel_sets = [], {}
    stem_path = smoothing.selected_paths(variables["params"], layers)[0]
    for rho, recal in variants:
        params = smoothing.smooth_params(variables["params"], rho, layers=layers)
        current = {**variables, "params": params}
        if recal:
            current = recalibrate_batch_stats(model, current, train_images, stats_fn=stats_fn)
        name = f"rho={rho:g}" + (" (BN re-estimated)" if recal else "")
        start, total = time.time(), None
        for b, (x, y, m) in enumerate(data.batches(images, labels, batch_size, shuffle=False, drop_remainder=False)):
            xs, ys, ms = sharding.global_batch(batch_sh, x, y, m)
            counts = attack_counts(current, xs, ys, ms, eps_arr, jax.random.PRNGKey(seed + b))
            total = jax.block_until_ready(counts if total is None else jax.tree.map(jnp.add, total, counts))
            done = min((b + 1) * batch_size, n)
            rate = done / (time.time() - start)
            log(f"  {name}: {done}/{n} images | {rate:,.1f} img/s | ETA {(n - done) / max(rate, 1e-9):.0f}s")
        total = jax.tree.map(lambda v: np.asarray(v, np.float64) / n, jax.device_get(total))
        kernel = jax.device_get(_get_path(params, stem_path))
        row = {"name": name, "rho": rho, "bn_reestimated": recal, "clean": float(total["clean"]),
               "fgsm": total["fgsm"].tolist(), "pgd": total["pgd"].tolist(),
               "pgd_strong": float(total["pgd_strong"]),
               "square": float(total["square"]) if square_queries else None,
               "worst_case": float(total["worst_case"]),
               "roughness": float(smoothing.roughness(kernel)), "seconds": round(time.time() - start, 2)}
        row["warnings"] = sanity_warnings(row, eps, n)
        rows.append(row)
        if not recal:
            kernel_sets[name] = kernel
        for w in row["warnings"]:
            log(f"  warning [{name}]: {w}")

    freq = frequency_report(model, variables, images, labels, config, svd_ranks, batch_size, spec)
    table = markdown_table(rows, eps, square_queries > 0)
    # Everything is computed: now write, each file atomically.
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"workdir": str(workdir), "checkpoint_epoch": chosen, "num_examples": n, "eps": list(eps),
              "pgd": {"steps": pgd_steps, "step_fraction": pgd_step_fraction, "strong_steps": 2 * pgd_steps,
                      "strong_restarts": strong_restarts}, "square_queries": square_queries,
              "layers": list(layers), "rows": rows, "frequency": freq["summary"]}
    _atomic_write(out_dir / "robustness.json", json.dumps(result, indent=2))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "rho", "bn_reestimated", "clean"] + [f"fgsm_{e:g}" for e in eps]
                    + [f"pgd_{e:g}" for e in eps] + ["pgd_strong", "square", "worst_case", "roughness"])
    for r in rows:
        writer.writerow([r["name"], r["rho"], r["bn_reestimated"], r["clean"], *r["fgsm"], *r["pgd"],
                         r["pgd_strong"], r["square"], r["worst_case"], r["roughness"]])
    _atomic_write(out_dir / "robustness.csv", buf.getvalue())
    _atomic_write(out_dir / "robustness.md", table + "\n")
    _atomic_write(out_dir / "frequency.md", freq["markdown"] + "\n")
    plots.kernels(kernel_sets, out_dir / "kernels.png")
    plots.robustness_curves([r for r in rows if not r["bn_reestimated"]], eps, out_dir / "robustness.png")
    if freq["story"]:
        plots.hfc_story(*freq["story"], out_dir / "figure2.png", radius=freq["story_radius"],
                        class_names=spec.class_names)
    log("\n" + table + "\n\n" + freq["markdown"] + f"\n\nwritten to {out_dir}/")
    return result


def _get_path(tree, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def frequency_report(model, variables, images, labels, config, svd_ranks, batch_size, spec) -> Dict:
    """Test accuracy on LFC/HFC at the tracked radii and on the SVD split, plus Figure 2's
    count (right on the original and the HFC, wrong on the LFC) and its SVD counterpart."""
    radii = list(config.track_radii)
    ranks = [k for k in svd_ranks if k <= min(spec.shape[:2])]
    predict = jax.jit(make_predictions(model, config.inclusive), static_argnums=3,
                      compiler_options=measure.compiler_options())
    preds, confs = [], []
    for x, _, m in data.batches(images, labels, batch_size, shuffle=False, drop_remainder=False):
        p, c = predict(variables, x, jnp.asarray(radii, jnp.float32), tuple(ranks))
        keep = m > 0
        preds.append(np.asarray(p)[:, keep])
        confs.append(np.asarray(c)[:, keep])
    preds, confs = np.concatenate(preds, 1), np.concatenate(confs, 1)
    correct = preds == labels[None]
    names = measure.variant_names(radii) + measure.svd_names(ranks)
    accuracy = dict(zip(names, correct.mean(1).tolist()))
    R, K = len(radii), len(ranks)
    orig = correct[0]
    story = {f"r{r:g}": int((orig & correct[1 + R + i] & ~correct[1 + i]).sum()) for i, r in enumerate(radii)}
    svd_story = {f"k{k}": int((orig & correct[1 + 2 * R + K + i] & ~correct[1 + 2 * R + i]).sum())
                 for i, k in enumerate(ranks)}
    lines = ["| split | " + " | ".join(f"r={r:g}" for r in radii) + " |", "|---|" + "---|" * R,
             "| LFC accuracy | " + " | ".join(f"{accuracy[f'low_r{r:g}']:.3f}" for r in radii) + " |",
             "| HFC accuracy | " + " | ".join(f"{accuracy[f'high_r{r:g}']:.3f}" for r in radii) + " |",
             "| Figure-2 count (right on x and HFC, wrong on LFC) | " + " | ".join(str(v) for v in story.values()) + " |",
             "", "| SVD split | " + " | ".join(f"k={k}" for k in ranks) + " |", "|---|" + "---|" * K,
             "| dominant accuracy | " + " | ".join(f"{accuracy[f'dominant_k{k}']:.3f}" for k in ranks) + " |",
             "| trailing accuracy | " + " | ".join(f"{accuracy[f'trailing_k{k}']:.3f}" for k in ranks) + " |",
             "| count (right on x and trailing, wrong on dominant) | " + " | ".join(str(v) for v in svd_story.values())
             + " |", "", f"clean accuracy {accuracy['orig']:.3f} on {len(labels)} test images"]
    # Figure 2 at r = 12 (the paper's choice) when it has examples, else at the radius with most.
    counts = list(story.values())
    ri = radii.index(12.0) if 12.0 in radii and counts[radii.index(12.0)] else int(np.argmax(counts))
    idx = np.nonzero(orig & correct[1 + R + ri] & ~correct[1 + ri])[0][:8]
    story_arrays = None
    if len(idx):
        x = measure.to_unit(images[idx])
        low, high = frequency.split(x, radii[ri], inclusive=config.inclusive)
        rows = [{"label": int(labels[i]), "orig": (int(preds[0, i]), float(confs[0, i])),
                 "low": (int(preds[1 + ri, i]), float(confs[1 + ri, i])),
                 "high": (int(preds[1 + R + ri, i]), float(confs[1 + R + ri, i]))} for i in idx]
        story_arrays = (np.asarray(x), np.asarray(low), np.asarray(high), rows)
    summary = {"accuracy": accuracy, "figure2_count": story, "svd_count": svd_story}
    return {"summary": summary, "markdown": "\n".join(lines), "story": story_arrays, "story_radius": radii[ri]}


# --------------------------------------------------------------------------- command line


def main(argv=None):
    from absl import app, flags, logging

    flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/).", required=True)
    flags.DEFINE_string("rho", "0,0.1,0.25,0.5,1.0", "Comma-separated smoothing strengths (Eq. 3).")
    flags.DEFINE_string("eps", "0.03,0.06,0.09", "Comma-separated L-inf budgets (pixels in [0, 1]).")
    flags.DEFINE_integer("num_examples", 0, "Evaluate the first N test images (0 = all).")
    flags.DEFINE_integer("batch_size", 200, "Images per compiled attack call.")
    flags.DEFINE_integer("pgd_steps", 20, "PGD steps; the strong PGD uses twice as many.")
    flags.DEFINE_float("pgd_step_fraction", 0.125, "PGD step size as a fraction of eps (eps/8).")
    flags.DEFINE_integer("restarts", 3, "Random restarts of the strong PGD at the largest eps.")
    flags.DEFINE_integer("square_queries", 300, "Queries of the Square attack at the largest eps (0 = off).")
    flags.DEFINE_string("layers", smoothing.DEFAULT_LAYERS[0], "Regex on parameter paths of kernels to smooth.")
    flags.DEFINE_enum("recalibrate_bn", "auto", ["auto", "yes", "no"],
                      "Also report rows with BatchNorm statistics re-estimated after smoothing (auto: when BN).")
    flags.DEFINE_string("step", "latest", "Checkpoint to evaluate: latest, best or an epoch number.")
    flags.DEFINE_string("data_dir", None, "Override the data directory saved in the config.")
    flags.DEFINE_integer("seed", 0, "Seed of the random attacks.")

    def run(argv):
        logging.set_verbosity(logging.WARNING)
        from hfcjax import cli

        F = flags.FLAGS
        with cli.clear_errors():
            evaluate(F.workdir, rhos=_parse_floats(F.rho, "rho"), eps=_parse_floats(F.eps, "eps", 0.0, 1.0),
                     num_examples=F.num_examples, batch_size=F.batch_size, pgd_steps=F.pgd_steps,
                     pgd_step_fraction=F.pgd_step_fraction, strong_restarts=F.restarts,
                     square_queries=F.square_queries, layers=(F.layers,),
                     recalibrate_bn={"auto": None, "yes": True, "no": False}[F.recalibrate_bn],
                     step=F.step, data_dir=F.data_dir, seed=F.seed)

    app.run(run, argv)


if __name__ == "__main__":
    from hfcjax import cli

    cli.use_huge_pages()
    main()
