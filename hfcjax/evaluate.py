"""Evaluation of a trained run, or of any model: restore or build the model -> evaluators
from the config -> run -> write (Section 6, Table 2, Figures 2 and 7, and beyond).

    python -m hfcjax.evaluate --workdir DIR [--config FILE] [--config.evals.NAME.KEY=VALUE ...]
    python -m hfcjax.evaluate --model PACKAGE.MODULE:FACTORY --data FILE.npz --out DIR
        [--mean 0.49,0.48,0.45 --std 0.25,0.24,0.26] [--layout NCHW]
    python -m hfcjax.evaluate --torch_weights FILE.pt --arch wrn --data FILE.npz --out DIR [--mean ... --std ...]

What is evaluated comes from the flags (a run, a model, weights, images); how, from the
config: ``config.evaluation`` (rho grid, images, batches, seed) and one section per
analysis in ``config.evals`` (`hfcjax.evaluators`: robustness, band, spectra, heatmap,
frequency, checks), each with ``enabled``. A run is evaluated with the settings saved with
it unless ``--config FILE`` gives others; ``--config.`` overrides apply on top. The model
variables come from `checkpoints.restore_model` (never the optimizer state); the files
under DIR/eval/ (or --out) are written only after everything is computed, and the folder
is locked (`LOCK`) while an evaluation works in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np

from hfcjax import (checkpoints, config as config_lib, data, evaluators, external, hashing, locks, plots, reports,
                    robustbench, sharding, torch_weights)
from hfcjax.evaluators import common, variants as variants_lib


LOCK = ".hfcjax-evaluation.lock"  # in the output folder: one evaluation at a time


def log(message: str) -> None:
    print(message, flush=True)


@dataclasses.dataclass
class Evaluation:
    """What an evaluation computed: per evaluator name its structured result
    (``evaluation["robustness"]`` is a list of rows), the evaluators that made them (for
    their Markdown), the settings and what was evaluated (`about`)."""

    about: Dict[str, Any]
    config: ml_collections.ConfigDict
    num_examples: int
    results: Dict[str, Any]
    evaluators: Dict[str, common.Evaluator]

    def __getitem__(self, name: str) -> Any:
        return self.results[name]

    def __contains__(self, name: str) -> bool:
        return name in self.results

    def markdown(self, name: Optional[str] = None) -> str:
        """One evaluator's Markdown, or the whole report (a section per evaluator)."""
        if name is not None:
            return self.evaluators[name].markdown(self.results[name])
        return "\n\n".join(f"## {n}\n\n{self.markdown(n)}" for n in self.results)


def evaluate(workdir, config: Optional[ml_collections.ConfigDict] = None, *, epoch="latest",
             **sections) -> Evaluation:
    """Evaluates the run in `workdir` (checkpoint `epoch`: latest, best or a number) and writes
    the files under DIR/eval/. Settings: those saved with the run, or `config`'s (a whole
    config: its ``evaluation`` and ``evals``), with `sections` overriding keys by section
    (``evaluation={"rhos": (0.0,)}, robustness={"eps": (0.05,)}``)."""
    notes = []  # a corrupt latest checkpoint: which one was evaluated instead goes into the report
    run_config, model, variables, epoch = checkpoints.restore_model(workdir, str(epoch),
                                                                    log=lambda m: (log(m), notes.append(m)))
    cfg = config_lib.evaluation_config(config if config is not None else run_config, **sections)
    e = cfg.evaluation
    images, labels = load_split(run_config, e, "test")
    recalibrate = None
    if "batch_stats" in variables and e.recalibrate_bn in ("auto", "yes"):
        train_images = load_split(run_config, e, "train")[0][:e.recalibrate_examples]
        recalibrate = partial(variants_lib.recalibrate_batch_stats, model, images_u8=train_images,
                              stats_fn=variants_lib.make_batch_stats_fn(model))
    log(f"evaluating {run_config.model} on {run_config.dataset} (checkpoint of epoch {epoch})")
    return analyse(lambda v, x: model.apply(v, x, train=False), variables, images, labels,
                   checkpoints.RunDir(workdir).eval, cfg, radii=run_config.track_radii,
                   inclusive=run_config.inclusive, class_names=data.get_spec(run_config.dataset).class_names,
                   recalibrate=recalibrate, about={"workdir": str(workdir), "checkpoint_epoch": epoch,
                                                   **({"checkpoint_notes": notes} if notes else {})})


def analyse_model(model, images, labels, out_dir=None, *, variables=None, preprocess=None, radii=None,
                  class_names=(), config: Optional[ml_collections.ConfigDict] = None, about: Optional[Dict] = None,
                  **sections) -> Evaluation:
    """The whole evaluation of any model: `model` is a ``logits_fn(images)``, a Flax module
    (with `variables`) or a ``(module, variables)`` pair; `images` uint8 [N, H, W, C] (or
    floats in [0, 1]) and integer `labels`; `preprocess` (`external.Preprocess`: mean/std,
    NCHW) runs inside the model, after attacks and splits. Settings as in `evaluate`
    (default: `config.default()`'s). Writes the same files as a run's evaluation into
    `out_dir` (when given). Smoothing (rho > 0) needs parameters: a plain logits_fn is
    evaluated at rho = 0 only."""
    cfg = config_lib.evaluation_config(config, **sections)
    images, labels = np.asarray(images), np.asarray(labels)
    preprocess = preprocess or external.Preprocess()
    preprocess.check(images.shape[-1])
    apply_fn, variables = external.apply_fn_of(model, variables, preprocess)
    external.check_labels(labels, external.num_classes(apply_fn, variables, images.shape[1:], preprocess.layout))
    if "params" not in variables and list(cfg.evaluation.rhos) != [0.0]:
        log("a plain logits_fn has no parameters to smooth: evaluating rho = 0 only")
        cfg.evaluation.rhos = (0.0,)
    return analyse(apply_fn, variables, images, labels, out_dir, cfg,
                   radii=radii or external.default_radii(*images.shape[1:3]), class_names=class_names, about=about)


def analyse(apply_fn, variables, images, labels, out_dir, cfg: ml_collections.ConfigDict, *, radii,
            inclusive: bool = True, class_names=(), recalibrate=None, about: Optional[Dict] = None) -> Evaluation:
    """The enabled evaluators of `cfg` on `apply_fn(variables, x)` and its rho variants;
    files into `out_dir` (when given), only after everything is computed."""
    e, about = cfg.evaluation, about or {}
    settings = cfg.to_dict()
    settings["evaluation"] = {k: v for k, v in settings["evaluation"].items() if k != "data_dir"}
    sharding.check_same_everywhere(options=json.dumps(settings, sort_keys=True, default=str),
                                   code=sharding.code_version())  # a job's processes must run the same grid
    if e.num_examples:
        images, labels = images[:e.num_examples], labels[:e.num_examples]
    built = evaluators.build(cfg.evals, apply_fn, common.Shared(batch_size=e.batch_size, seed=e.seed, log=log))
    log(f"{len(images)} images; rho {list(e.rhos)}; evaluators " + ", ".join(ev.name for ev in built))
    owner = jax.process_index() == 0 and out_dir is not None
    with locks.WorkdirLock(Path(out_dir) / LOCK, log, "evaluation folder", "--out") if owner else \
            contextlib.nullcontext():  # two evaluations of one folder would remove each other's rows
        saved = None
        if out_dir is not None and jax.process_count() == 1:  # finished rows survive an interruption
            saved = reports.PartialResults(out_dir, {
                "options": settings, "radii": list(radii), "inclusive": inclusive, "about": about,
                "model": digest(variables), "images": digest((images, labels))}, log)
        inputs = common.Inputs(variables, variants_lib.model_variants(variables, rhos=e.rhos, layers=e.layers,
                                                                      recalibrate=recalibrate),
                               images, labels, tuple(float(r) for r in radii), inclusive, tuple(class_names), saved)
        evaluation = Evaluation(about, cfg, len(images), evaluators.run_all(built, inputs),
                                {ev.name: ev for ev in built})
        if owner:  # one writer in a multi-process job
            write(Path(out_dir), evaluation, inputs)
        if saved:
            saved.finish()
    return evaluation


def write(out_dir: Path, evaluation: Evaluation, inputs: common.Inputs) -> None:
    """Every evaluator's files, kernels.png (the first-layer kernels of every rho),
    evaluation.json (what was evaluated, with which settings) and report.md (every section)."""
    for name, result in evaluation.results.items():
        evaluation.evaluators[name].write(result, out_dir, inputs)
    kernels = {v.name: v.kernel for v in inputs.variants if v.kernel is not None and not v.bn_reestimated}
    if kernels:
        plots.kernels(kernels, out_dir / "kernels.png")
    reports.write_json(out_dir / "evaluation.json", {**evaluation.about, "num_examples": evaluation.num_examples,
                                                     "evaluators": list(evaluation.results),
                                                     "config": evaluation.config.to_dict()})
    report = "\n\n".join([*(f"**Note:** {n}" for n in evaluation.about.get("checkpoint_notes", ())),
                            *leaderboard_line(evaluation), evaluation.markdown()])
    reports.atomic_write(out_dir / "report.md", report + "\n")
    log("\n" + report + f"\n\nwritten to {out_dir}/")


def leaderboard_line(evaluation: Evaluation):
    """The RobustBench leaderboard's accuracies beside hfcjax's (with --robustbench_model)."""
    entry = evaluation.about.get("robustbench")
    if not entry:
        return []
    ours = evaluation.results.get("autoattack")
    mine = (f"hfcjax on these {evaluation.num_examples} images: clean {100 * ours[0].clean:.2f}%, AutoAttack "
            f"{100 * ours[0].robust:.2f}%" if ours else "hfcjax: AutoAttack was not run")
    return [f"**RobustBench** {entry['name']} ({entry['norm']}, eps {entry['eps']:.4g}): clean {entry['clean']:.2f}%, "
            f"AutoAttack {entry['autoattack']:.2f}% on the 10,000 CIFAR-10 test images; {mine}."]


def digest(tree) -> str:
    """sha256 of every array in `tree` (shapes, dtypes and bytes): what a rerun must match to
    reuse an interrupted run's rows."""
    return hashing.arrays_sha256(jax.tree.leaves(jax.device_get(tree)))


def load_split(config, e, split: str):
    return data.load(config.dataset, split, source=config.data_source, data_dir=e.data_dir or config.data_dir or None)


# --------------------------------------------------------------------------- command line


# Flags of the old command line -> the config key that replaced each.
REMOVED_FLAGS = {
    "rho": "evaluation.rhos", "eps": "evals.robustness.eps", "num_examples": "evaluation.num_examples",
    "batch_size": "evaluation.batch_size", "pgd_steps": "evals.robustness.pgd_steps",
    "pgd_step_fraction": "evals.robustness.pgd_step_fraction", "restarts": "evals.robustness.strong_restarts",
    "square_queries": "evals.robustness.square_queries", "layers": "evaluation.layers",
    "recalibrate_bn": "evaluation.recalibrate_bn", "data_dir": "evaluation.data_dir", "seed": "evaluation.seed",
    "heatmap_eps": "evals.heatmap.eps", "band_radius": "evals.band.radius", "spectra": "evals.spectra.enabled",
    "apgd_steps": "evals.robustness.apgd_steps"}


def define_flags(fv, argv):
    """This command's flags on the FlagValues `fv`: what to evaluate, and --config for how
    (its --config.KEY overrides are read from `argv`)."""
    from absl import flags
    from ml_collections import config_flags

    from hfcjax import cli

    flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/); or --model/--data/--out.",
                        flag_values=fv)
    flags.DEFINE_string("epoch", "latest", "With --workdir: the checkpoint, latest, best or an epoch number.",
                        flag_values=fv)
    flags.DEFINE_string("model", None, "Your own model: package.module:factory, factory() returning a logits_fn "
                        "or a (flax module, variables) pair.", flag_values=fv)
    flags.DEFINE_string("torch_weights", None, "Instead of --model: a PyTorch state_dict file (torch.save) of --arch.",
                        flag_values=fv)
    flags.DEFINE_enum("arch", None, list(torch_weights.ARCHS), "With --torch_weights: the architecture it holds.",
                      flag_values=fv)
    flags.DEFINE_enum("activation", "relu", ["relu", "swish"], "With --arch dm_*: the network's activation.",
                      flag_values=fv)
    flags.DEFINE_integer("input_padding", 0, "With --arch dm_*: zero pixels the network pads its input with.",
                         flag_values=fv)
    flags.DEFINE_string("robustbench_model", None, "With --torch_weights: a RobustBench leaderboard name "
                        "(hfcjax.robustbench); fills in --arch, --activation, --input_padding, runs AutoAttack at its "
                        "threat model and prints the leaderboard's accuracies beside hfcjax's.", flag_values=fv)
    flags.DEFINE_bool("shortcut_from_input", True, "With --arch preact_resnet18: blocks project the raw input "
                      "(RobustBench) rather than relu(bn1(x)) (pytorch-cifar).", flag_values=fv)
    flags.DEFINE_string("data", None, "With --model: .npz with images (uint8 [N,H,W,C] or floats in [0, 1]) and "
                        "integer labels [N].", flag_values=fv)
    flags.DEFINE_string("out", None, "With --model: the folder for the report (the files of DIR/eval/).",
                        flag_values=fv)
    flags.DEFINE_list("mean", None, "With --model: per-channel mean the model subtracts (inside the model).",
                      flag_values=fv)
    flags.DEFINE_list("std", None, "With --model: per-channel std the model divides by (inside the model).",
                      flag_values=fv)
    flags.DEFINE_enum("layout", "NHWC", list(external.LAYOUTS), "With --model: the model's input layout.",
                      flag_values=fv)
    config_flags.DEFINE_config_file("config", config_lib.__file__, "Config file whose config.evaluation and "
                                    "config.evals say how to evaluate (default: the run's saved settings, or "
                                    "hfcjax's defaults); --config.evals.NAME.KEY=VALUE overrides.", flag_values=fv,
                                    sys_argv=argv)
    cli.define_distributed_flags(fv)


def removed_flag(argv) -> Optional[str]:
    """The one line for a flag of the old command line, naming its config key; else None."""
    for arg in argv[1:]:
        name = arg[2:].split("=")[0] if arg.startswith("--") else ""
        name = name[2:] if name.startswith("no") and name[2:] in REMOVED_FLAGS else name
        if name in REMOVED_FLAGS:
            return (f"--{name} is now a config key: use --config.{REMOVED_FLAGS[name]}=VALUE (the evaluation's settings "
                    "live in config.evaluation and config.evals; see README, Evaluation).")
    return None


def evaluation_overrides(fv) -> Dict[str, Dict[str, Any]]:
    """The --config.evaluation.KEY / --config.evals.NAME.KEY overrides, by section."""
    from ml_collections import config_flags

    from hfcjax import cli

    sections: Dict[str, Dict[str, Any]] = {}
    for key, value in config_flags.get_override_values(fv["config"]).items():
        parts = key.split(".")
        if parts[0] == "evaluation" and len(parts) == 2:
            sections.setdefault("evaluation", {})[parts[1]] = value
        elif parts[0] == "evals" and len(parts) == 3:
            sections.setdefault(parts[1], {})[parts[2]] = value
        else:
            raise cli.UsageError(f"--config.{key}: evaluation reads only config.evaluation.KEY and "
                                 "config.evals.NAME.KEY.")
    return sections


def main(argv=None) -> None:
    """The command line (flags parsed into their own FlagValues, so tests call it in-process)."""
    import sys

    from absl import flags, logging

    from hfcjax import cli

    argv = list(sys.argv if argv is None else argv)
    message = removed_flag(argv)
    if message:
        cli.fail(message)
    explicit = any(a in ("--config", "-config") or a.startswith(("--config=", "-config=")) for a in argv[1:])
    fv = flags.FlagValues()
    with cli.flag_errors():  # the config file's --config.KEY overrides are checked as flags are defined
        define_flags(fv, argv)
    cli.parse_flags(argv, fv)
    logging.set_verbosity(logging.WARNING)
    cli.start_distributed(fv)
    with cli.clear_errors():
        run(fv, explicit)


def run(F, explicit: bool) -> None:
    from hfcjax import cli

    if bool(F.workdir) == bool(F.model or F.torch_weights or F.data or F.out):
        raise cli.UsageError("give either --workdir DIR (a run hfcjax trained) or --model (or --torch_weights "
                             "and --arch), --data and --out (your own model and images).")
    config = cli.loaded_config(F.config)
    if F.workdir:
        if explicit:
            evaluate(F.workdir, config, epoch=F.epoch)
        else:
            evaluate(F.workdir, epoch=F.epoch, **evaluation_overrides(F))
        return
    if bool(F.model) == bool(F.torch_weights) or not (F.data and F.out):
        raise cli.UsageError("one of --model or --torch_weights, with --data and --out.")
    told = evaluation_overrides(F).get("autoattack", {})
    entry = robustbench.lookup(F.robustbench_model, told.get("norm")) if F.robustbench_model else None
    if entry and not F.torch_weights:
        raise cli.UsageError("--robustbench_model names the weights of --torch_weights FILE.pt; give the file.")
    arch = entry.arch if entry else F.arch
    if F.torch_weights and not arch:
        raise cli.UsageError(f"--torch_weights needs --arch, one of {list(torch_weights.ARCHS)}.")
    if (arch or "").startswith("dm_") and (F.mean or F.std):
        raise cli.UsageError("DeepMind networks normalise inside (the mean/std buffers of their state_dict): drop "
                             "--mean/--std.")
    preprocess = external.Preprocess(tuple(cli.floats(F.mean, "mean")) if F.mean else None,
                                     tuple(cli.floats(F.std, "std")) if F.std else None, F.layout)
    images, labels = external.load_images(F.data)
    options = entry.options() if entry else {"activation": F.activation, "padding": F.input_padding}
    model = (external.load_factory(F.model) if F.model else
             torch_weights.load(F.torch_weights, arch, shortcut_from_input=F.shortcut_from_input, **options))
    sections, about = {}, {}
    if entry:  # AutoAttack at the leaderboard's threat model, unless the command line says otherwise
        sections["autoattack"] = {k: v for k, v in (("enabled", True), ("norm", entry.norm), ("eps", entry.eps))
                                  if k not in told}
        about["robustbench"] = dataclasses.asdict(entry)
    analyse_model(model, images, labels, F.out, preprocess=preprocess, config=config, about=about, **sections)


def entry():
    """The `hfcjax-evaluate` console script: the same as `python -m hfcjax.evaluate`."""
    from hfcjax import backend

    backend.use_huge_pages()
    main()


if __name__ == "__main__":
    entry()
