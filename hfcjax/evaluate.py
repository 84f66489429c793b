"""Robustness and frequency report of a trained run (Section 6, Table 2, Figures 2 and 7).

    python -m hfcjax.evaluate --workdir DIR [--rho 0,0.1,0.25,0.5,1] [--eps 0.03,0.06,0.09]
    python -m hfcjax.evaluate --model PACKAGE.MODULE:FACTORY --data FILE.npz --out DIR
        [--mean 0.49,0.48,0.45 --std 0.25,0.24,0.26] [--layout NCHW]
    python -m hfcjax.evaluate --torch_weights FILE.pt --arch wrn --data FILE.npz --out DIR [--mean ... --std ...]

A composition: the model variables and config come from `checkpoints.restore_model`
(never the optimizer state), the numbers from `evaluators.smoothing_grid` with a
`RobustnessEvaluator` and from a `FrequencyEvaluator`, and the files under DIR/eval/ from
`reports` and `plots`, written only after everything is computed. Settings and their
defaults are `config.eval_default()`.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Dict, Optional

import jax
import ml_collections
import numpy as np

from hfcjax import (checkpoints, config as config_lib, data, evaluators, external, heatmap, measure, plots, reports,
                    sharding, torch_weights)


def log(message: str) -> None:
    print(message, flush=True)


def evaluate(workdir, options: Optional[ml_collections.ConfigDict] = None, **overrides) -> Dict:
    """Computes the Table-2 grid and the frequency report of the run in `workdir`, writes
    them under DIR/eval/ and returns robustness.json's content. Settings: `options` or
    keyword overrides of `config.eval_default()` (rhos=, eps=, num_examples=, ...)."""
    o = options if options is not None else config_lib.eval_config(**overrides)
    config, model, variables, epoch = checkpoints.restore_model(workdir, o.epoch)
    images, labels = load_split(config, o, "test")
    recalibrate = None
    if "batch_stats" in variables and o.recalibrate_bn in ("auto", "yes"):
        train_images = load_split(config, o, "train")[0][:o.recalibrate_examples]
        recalibrate = partial(evaluators.recalibrate_batch_stats, model, images_u8=train_images,
                              stats_fn=evaluators.make_batch_stats_fn(model))
    log(f"evaluating {config.model} on {config.dataset} (checkpoint of epoch {epoch})")
    return analyse(lambda v, x: model.apply(v, x, train=False), variables, images, labels,
                   checkpoints.RunDir(workdir).eval, o, radii=config.track_radii, inclusive=config.inclusive,
                   class_names=data.get_spec(config.dataset).class_names, recalibrate=recalibrate,
                   about={"workdir": str(workdir), "checkpoint_epoch": epoch})


def analyse_model(model, images, labels, out_dir=None, *, variables=None, preprocess=None, radii=None,
                  class_names=(), options: Optional[ml_collections.ConfigDict] = None, **overrides) -> Dict:
    """The whole report for any model: `model` is a ``logits_fn(images)``, a Flax module
    (with `variables`) or a ``(module, variables)`` pair; `images` uint8 [N, H, W, C] (or
    floats in [0, 1]) and integer `labels`; `preprocess` (`external.Preprocess`: mean/std,
    NCHW) runs inside the model, after attacks and splits. Writes the same files as a
    workdir's evaluation into `out_dir` (when given) and returns robustness.json's content.
    Smoothing (rho > 0) needs parameters: a plain logits_fn is evaluated at rho = 0 only."""
    o = options if options is not None else config_lib.eval_config(**overrides)
    images, labels = np.asarray(images), np.asarray(labels)
    preprocess = preprocess or external.Preprocess()
    preprocess.check(images.shape[-1])
    apply_fn, variables = external.apply_fn_of(model, variables, preprocess)
    external.check_labels(labels, external.num_classes(apply_fn, variables, images.shape[1:], preprocess.layout))
    if "params" not in variables and list(o.rhos) != [0.0]:
        log("a plain logits_fn has no parameters to smooth: evaluating rho = 0 only")
        o = config_lib.eval_config(**{**o.to_dict(), "rhos": (0.0,)})
    return analyse(apply_fn, variables, images, labels, out_dir, o,
                   radii=radii or external.default_radii(*images.shape[1:3]), class_names=class_names)


def analyse(apply_fn, variables, images, labels, out_dir, o, *, radii, inclusive: bool = True, class_names=(),
            recalibrate=None, about: Optional[Dict] = None) -> Dict:
    """The evaluators on `apply_fn(variables, x)`: robustness grid over the rhos, heat maps,
    frequency report; files into `out_dir` (when given), only after everything is computed."""
    grid = {k: v for k, v in o.to_dict().items() if k != "data_dir"}  # a job's processes must run the same grid
    sharding.check_same_everywhere(options=json.dumps(grid, sort_keys=True, default=str), code=sharding.code_version())
    if o.num_examples:
        images, labels = images[:o.num_examples], labels[:o.num_examples]
    log(f"{len(images)} images; rho {list(o.rhos)}, eps {list(o.eps)}, PGD-{o.pgd_steps} step "
        f"eps*{o.pgd_step_fraction:g}, strong PGD-{2 * o.pgd_steps} x{o.strong_restarts} random restarts, "
        f"Square {o.square_queries} queries")
    checks = evaluators.model_checks(apply_fn, variables, images[:o.batch_size], labels[:o.batch_size])
    for warning in checks:
        log(f"  warning [model]: {warning}")
    robustness = evaluators.RobustnessEvaluator(
        apply_fn, eps=o.eps, pgd_steps=o.pgd_steps, pgd_step_fraction=o.pgd_step_fraction,
        strong_restarts=o.strong_restarts, square_queries=o.square_queries, band_radius=o.band_radius,
        spectra=o.spectra, apgd_steps=o.apgd_steps, batch_size=o.batch_size, seed=o.seed, log=log)
    writer = out_dir is not None and jax.process_index() == 0  # one writer in a multi-process job
    saved = None
    if out_dir is not None and jax.process_count() == 1:  # finished rows survive an interruption; a rerun skips them
        saved = reports.PartialResults(out_dir, {
            "options": grid, "radii": list(radii), "inclusive": inclusive, "about": about or {},
            "model": digest(variables), "images": digest((images, labels))})
        if saved.stale:
            log(f"settings, model or images changed since the interrupted run: its rows in {saved.folder} were removed")
    if "params" in variables:
        rows, kernels = evaluators.smoothing_grid(robustness, variables, images, labels, rhos=o.rhos,
                                                  layers=o.layers, recalibrate=recalibrate, partial=saved)
        variants = [(rho, v) for _, rho, _, v in evaluators.smoothed_variants(variables, rhos=o.rhos, layers=o.layers)]
    else:
        rows = [{"name": "rho=0", "rho": 0.0, "bn_reestimated": False, **robustness.run(variables, images, labels),
                 "roughness": None}]
        kernels, variants = {}, [(0.0, variables)]
    maps = heatmaps(apply_fn, variants, images, labels, o, saved) if o.heatmap_eps > 0 else {}
    freq = evaluators.FrequencyEvaluator(apply_fn, radii=radii, ranks=o.svd_ranks, inclusive=inclusive,
                                         batch_size=o.batch_size).run(variables, images, labels)
    result = {**(about or {}), "num_examples": len(images), "eps": list(o.eps),
              "pgd": {"steps": o.pgd_steps, "step_fraction": o.pgd_step_fraction, "strong_steps": 2 * o.pgd_steps,
                      "strong_restarts": o.strong_restarts}, "square_queries": o.square_queries,
              "layers": list(o.layers), "band_radius": o.band_radius, "apgd_steps": o.apgd_steps,
              "model_checks": checks, "rows": rows, "frequency": freq.summary()}
    if maps:  # the heat map in the paper's language: mean error inside / outside every radius
        bands = lambda m: {f"r{r:g}": dict(zip(("inside", "outside"), heatmap.band_means(m, r, inclusive=inclusive)))
                           for r in radii}
        result["heatmap"] = {"eps": o.heatmap_eps, "band_error": {f"rho={rho:g}": bands(m) for rho, m in maps.items()}}
    if writer:
        write_report(Path(out_dir), result, kernels, freq, images, maps, inclusive=inclusive, class_names=class_names)
    if saved:
        saved.finish()
    return result


def heatmaps(apply_fn, variants, images, labels, o, saved: Optional[reports.PartialResults]) -> Dict:
    """{rho: heat map} for every (rho, variables); with `saved`, each map is kept as it
    completes and maps of an interrupted run are read back."""
    heat = evaluators.HeatmapEvaluator(apply_fn, eps=o.heatmap_eps, batch_size=o.batch_size, seed=o.seed, log=log)
    progress = evaluators.GridProgress(len(variants), len(images), log, what="heat-map grid")
    return {rho: progress.kept_or_run(f"heatmap rho={rho:g}", saved,
                                      lambda v=v, rho=rho: heat.run(v, images, labels, f"rho={rho:g}", progress))
            for rho, v in variants}


def digest(tree) -> str:
    """sha256 of every array in `tree` (shapes, dtypes and bytes): what a rerun must match to
    reuse an interrupted run's rows."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        leaf = np.ascontiguousarray(leaf)
        h.update(f"{leaf.shape}{leaf.dtype}".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()


def columns_of(result: Dict):
    """The table columns of an evaluation's rows (what it ran decides which there are)."""
    apgd = [loss for loss in ("ce", "dlr") if f"apgd_{loss}" in result["rows"][0]]
    return evaluators.robustness_columns(result["eps"], result["square_queries"] > 0, result["band_radius"], apgd)


def load_split(config, o, split: str):
    return data.load(config.dataset, split, source=config.data_source, data_dir=o.data_dir or config.data_dir or None)


def write_report(out_dir: Path, result: Dict, kernels: Dict[str, np.ndarray], freq: evaluators.FrequencyReport,
                 images: np.ndarray, maps: Dict[float, np.ndarray], *, inclusive: bool, class_names=()) -> None:
    """robustness.{json,csv,md}, frequency.md, kernels.png, robustness.png, figure2.png; with
    spectra spectra.png; with heat maps heatmap.npy (the first rho), heatmap_rho<rho>.npy
    (the others) and heatmap.png."""
    columns = columns_of(result)
    table = reports.write_table(out_dir, "robustness", result["rows"], columns, result)
    reports.atomic_write(out_dir / "frequency.md", freq.markdown() + "\n")
    if kernels:
        plots.kernels(kernels, out_dir / "kernels.png")
    plots.robustness_curves([r for r in result["rows"] if not r["bn_reestimated"]], result["eps"],
                            out_dir / "robustness.png")
    plain = [r for r in result["rows"] if not r["bn_reestimated"]]
    if plain and plain[0].get("spectra"):
        plots.perturbation_spectra(plain, result["eps"], out_dir / "spectra.png")
    for i, (rho, error) in enumerate(maps.items()):
        with reports.atomic_path(out_dir / ("heatmap.npy" if i == 0 else f"heatmap_rho{rho:g}.npy")) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, error)
    if maps:
        plots.heatmaps({f"rho={rho:g}": m for rho, m in maps.items()}, out_dir / "heatmap.png",
                       eps=result["heatmap"]["eps"], radii=freq.radii)
    radius, idx = measure.figure2_examples(freq.correct, freq.radii)
    if radius is not None:
        plots.figure2(images[idx], radius, freq.figure2_rows(idx, radius), out_dir / "figure2.png",
                      inclusive=inclusive, class_names=class_names or None)
    log("\n" + table + "\n\n" + freq.markdown() + f"\n\nwritten to {out_dir}/")


# --------------------------------------------------------------------------- command line


def main(argv=None):
    from absl import app, flags, logging

    from hfcjax import cli

    d = config_lib.eval_default()
    flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/); or --model/--data/--out.")
    flags.DEFINE_string("model", None, "Your own model: package.module:factory, factory() returning a logits_fn "
                        "or a (flax module, variables) pair.")
    flags.DEFINE_string("torch_weights", None, "Instead of --model: a PyTorch state_dict file (torch.save) of --arch.")
    flags.DEFINE_enum("arch", None, list(torch_weights.ARCHS), "With --torch_weights: the architecture it holds.")
    flags.DEFINE_bool("shortcut_from_input", True, "With --arch preact_resnet18: blocks project the raw input "
                      "(RobustBench) rather than relu(bn1(x)) (pytorch-cifar).")
    flags.DEFINE_string("data", None, "With --model: .npz with images (uint8 [N,H,W,C] or floats in [0, 1]) and "
                        "integer labels [N].")
    flags.DEFINE_string("out", None, "With --model: the folder for the report (the files of DIR/eval/).")
    flags.DEFINE_list("mean", None, "With --model: per-channel mean the model subtracts (inside the model).")
    flags.DEFINE_list("std", None, "With --model: per-channel std the model divides by (inside the model).")
    flags.DEFINE_enum("layout", "NHWC", list(external.LAYOUTS), "With --model: the model's input layout.")
    flags.DEFINE_list("rho", [f"{v:g}" for v in d.rhos], "Comma-separated smoothing strengths (Eq. 3).")
    flags.DEFINE_list("eps", [f"{v:g}" for v in d.eps], "Comma-separated L-inf budgets (pixels in [0, 1]).")
    flags.DEFINE_integer("num_examples", d.num_examples, "Evaluate the first N test images (0 = all).")
    flags.DEFINE_integer("batch_size", d.batch_size, "Images per compiled attack call.")
    flags.DEFINE_integer("pgd_steps", d.pgd_steps, "PGD steps; the strong PGD uses twice as many.")
    flags.DEFINE_float("pgd_step_fraction", d.pgd_step_fraction, "PGD step size as a fraction of eps.")
    flags.DEFINE_integer("restarts", d.strong_restarts, "Random restarts of the strong PGD at the largest eps.")
    flags.DEFINE_integer("square_queries", d.square_queries, "Square attack queries at the largest eps (0 = off).")
    flags.DEFINE_multi_string("layers", list(d.layers), "Regex on parameter paths of kernels to smooth (repeatable).")
    flags.DEFINE_enum("recalibrate_bn", d.recalibrate_bn, list(config_lib.RECALIBRATE_BN),
                      "Also report rows with BatchNorm statistics re-estimated after smoothing (auto: when BN).")
    flags.DEFINE_string("epoch", d.epoch, "Checkpoint to evaluate: latest, best or an epoch number.")
    flags.DEFINE_string("data_dir", None, "Override the data directory saved in the config.")
    flags.DEFINE_integer("seed", d.seed, "Seed of the random attacks.")
    flags.DEFINE_float("heatmap_eps", d.heatmap_eps, "Fourier heat map at this L2 norm for every rho (0 = off).")
    flags.DEFINE_float("band_radius", d.band_radius, "Also PGD confined to the LFC/HFC of this radius (0 = off).")
    flags.DEFINE_bool("spectra", d.spectra, "Radial spectra of the successful perturbations.")
    cli.define_distributed_flags()
    flags.DEFINE_integer("apgd_steps", d.apgd_steps, "APGD-CE and APGD-DLR with this many steps at the largest eps "
                         "(0 = off).")

    def run(argv):
        logging.set_verbosity(logging.WARNING)
        F = flags.FLAGS
        cli.start_distributed()
        with cli.clear_errors():
            options = dict(rhos=cli.floats(F.rho, "rho"), eps=cli.floats(F.eps, "eps"), num_examples=F.num_examples,
                           batch_size=F.batch_size, pgd_steps=F.pgd_steps, pgd_step_fraction=F.pgd_step_fraction,
                           strong_restarts=F.restarts, square_queries=F.square_queries, layers=F.layers,
                           recalibrate_bn=F.recalibrate_bn, epoch=F.epoch, data_dir=F.data_dir, seed=F.seed,
                           heatmap_eps=F.heatmap_eps, band_radius=F.band_radius, spectra=F.spectra,
                           apgd_steps=F.apgd_steps)
            if bool(F.workdir) == bool(F.model or F.torch_weights or F.data or F.out):
                raise cli.UsageError("give either --workdir DIR (a run hfcjax trained) or --model (or --torch_weights "
                                     "and --arch), --data and --out (your own model and images).")
            if F.workdir:
                evaluate(F.workdir, **options)  # returning the result would make absl exit 1 with it
                return
            if bool(F.model) == bool(F.torch_weights) or not (F.data and F.out):
                raise cli.UsageError("one of --model or --torch_weights, with --data and --out.")
            if F.torch_weights and not F.arch:
                raise cli.UsageError(f"--torch_weights needs --arch, one of {list(torch_weights.ARCHS)}.")
            preprocess = external.Preprocess(
                tuple(cli.floats(F.mean, "mean")) if F.mean else None,
                tuple(cli.floats(F.std, "std")) if F.std else None, F.layout)
            images, labels = external.load_images(F.data)
            model = (external.load_factory(F.model) if F.model else
                     torch_weights.load(F.torch_weights, F.arch, shortcut_from_input=F.shortcut_from_input))
            analyse_model(model, images, labels, F.out, preprocess=preprocess, **options)

    app.run(run, argv, flags_parser=cli.parse_flags)


def entry():
    """The `hfcjax-evaluate` console script: the same as `python -m hfcjax.evaluate`."""
    from hfcjax import backend

    backend.use_huge_pages()
    main()


if __name__ == "__main__":
    entry()
