"""One command per experiment of the paper: trains (or resumes) every run of it, then writes
a comparison figure and a Markdown table into the experiment's folder.

    python -m hfcjax.reproduce --experiment table1 --config configs/fashion_mnist_cnn.py \
        --workdir runs/table1 [--config.num_epochs=3] [--only low_r4,high_r4]

Experiments (runs are config overrides applied on top of --config):
  table1      train on LFC or HFC images (rescaled) at r = 4, 8, 12, 16; test on original images
  fig3        M_natural vs M_shuffle (shuffled labels, 3x the epochs)
  fig4        batch sizes 50, 100, 200, 400
  fig5        vanilla, dropout 0.5, mixup 0.5, BatchNorm, PGD adversarial training
  fig6        BatchNorm vs none, trained on LFC at r = 4, 8, 12, 16
  optimizers  SGD (momentum 0.9, lr 0.01), Adam 1e-4, AdaGrad 0.01, AdaDelta 1.0, RMSprop 1e-4
  archs       LeNet, AlexNet, VGG-11, ResNet-18
  table2      M_natural, M_adversarial (BatchNorm off, as the authors) and M_natural with
              BatchNorm; each then goes through hfcjax.evaluate with the config's
              evaluation settings (e.g. --config.evaluation.num_examples=200)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import jax
import ml_collections

from hfcjax import config as config_lib, evaluate as evaluate_lib, measure, plots, reports, steps, train
from hfcjax.errors import UserError

RADII = (4, 8, 12, 16)
Run = Tuple[str, Dict]

EXPERIMENTS: Dict[str, List[Run]] = {
    "table1": [(f"{c}_r{r}", {"train_component": c, "train_radius": float(r)}) for c in ("low", "high") for r in RADII],
    "fig3": [("natural", {}), ("shuffle", {"shuffle_labels": True, "@epochs_factor": 3})],
    "fig4": [(f"batch{b}", {"batch_size": b}) for b in (50, 100, 200, 400)],
    "fig5": [("vanilla", {}), ("dropout", {"dropout_rate": 0.5}), ("mixup", {"mixup_alpha": 0.5}),
             ("batchnorm", {"batch_norm": True}), ("adversarial", {"adversarial.enabled": True})],
    "fig6": [(f"{'bn' if bn else 'nobn'}_low_r{r}", {"batch_norm": bn, "train_component": "low",
                                                     "train_radius": float(r)}) for r in RADII for bn in (False, True)],
    "optimizers": [("sgd", {"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9}),
                   ("adam", {"optimizer": "adam", "learning_rate": 1e-4}),
                   ("adagrad", {"optimizer": "adagrad", "learning_rate": 0.01}),
                   ("adadelta", {"optimizer": "adadelta", "learning_rate": 1.0}),
                   ("rmsprop", {"optimizer": "rmsprop", "learning_rate": 1e-4})],
    "archs": [(m, {"model": m}) for m in ("lenet", "alexnet", "vgg11", "resnet18")],
    "table2": [("natural", {}), ("adversarial", {"adversarial.enabled": True}),
               ("natural_bn", {"batch_norm": True})],
}
EVALUATED = {"table2"}


def run_config(base: ml_collections.ConfigDict, overrides: Dict) -> ml_collections.ConfigDict:
    """`base` with `overrides` applied ('a.b' keys reach nested dicts; '@epochs_factor' scales epochs)."""
    config = copy.deepcopy(base)
    with config.unlocked():
        for key, value in overrides.items():
            if key == "@epochs_factor":
                config.num_epochs = int(config.num_epochs * value)
                continue
            target = config
            *parents, leaf = key.split(".")
            for part in parents:
                target = target[part]
            target[leaf] = value
    return config


def plan(experiment: str, base, only: Sequence[str] = ()) -> List[Tuple[str, ml_collections.ConfigDict]]:
    if experiment not in EXPERIMENTS:
        raise UserError(f"unknown experiment {experiment!r}; choose one of {sorted(EXPERIMENTS)}.")
    runs = EXPERIMENTS[experiment]
    names = [name for name, _ in runs]
    unknown = set(only) - set(names)
    if unknown:
        raise UserError(f"--only names {sorted(unknown)} are not runs of {experiment}; its runs: {names}.")
    configs = [(name, run_config(base, o)) for name, o in runs if not only or name in only]
    for _, config in configs:
        config_lib.validate(config)
    return configs


def final_row(name: str, history: Sequence[Dict], radii) -> Dict:
    """The report's row of one run: its last epoch's accuracies and the time it took."""
    last = history[-1]
    test = measure.accuracies(last, "test", measure.tracked_variants(radii))
    row = {"run": name, "epochs": last["epoch"], "train acc (own inputs)": last[steps.BATCH_ACCURACY],
           "train acc": measure.accuracies(last, "train", [measure.ORIGINAL])[measure.ORIGINAL],
           "test acc": test[measure.ORIGINAL]}
    for r in radii:
        row[f"test {measure.low(r).label}"] = test[measure.low(r)]
        row[f"test {measure.high(r).label}"] = test[measure.high(r)]
    row["seconds (train+eval)"] = round(sum(h["train_seconds"] + h["eval_seconds"] for h in history), 1)
    return row


def reproduce(experiment: str, base: ml_collections.ConfigDict, workdir, *, only: Sequence[str] = (),
              eval_sections: Dict | None = None) -> Dict:
    """Trains every run of `experiment` under workdir/<run>, then writes report.{md,json} and
    the comparison figures; for evaluated experiments also each run's evaluation (the
    settings of `base`'s ``evaluation`` and ``evals``, `eval_sections` overriding them as in
    `evaluate.evaluate`)."""
    workdir = Path(workdir)
    runs = plan(experiment, base, only)
    histories, rows, tables = {}, [], []
    for name, config in runs:
        print(f"== {experiment}/{name}", flush=True)
        histories[name] = train.train_and_evaluate(config, str(workdir / name))
        rows.append(final_row(name, histories[name], config.track_radii))
        if experiment in EVALUATED:
            evaluation = evaluate_lib.evaluate(workdir / name, **(eval_sections or {}))
            tables.append(f"### {name}\n\n" + evaluation.markdown("robustness") + "\n")
    if jax.process_index() != 0:  # one writer of the report in a multi-process job
        return {"rows": rows, "histories": histories}
    figures = []
    for split in measure.SPLITS:
        path = plots.compare_runs(histories, base.track_radii, workdir / f"{experiment}_{split}.png", split=split,
                                  title=f"{experiment}: {split} accuracy of x, LFC and HFC along epochs")
        figures.append(Path(path).name)
    table = reports.markdown_table(list(rows[0]), [list(r.values()) for r in rows])
    report = [f"# {experiment}", "", f"Base config: dataset {base.dataset}, model {base.model}, "
              f"{base.num_epochs} epochs, batch {base.batch_size}, {base.optimizer} lr {base.learning_rate}.",
              "", table, ""] + [f"![{f}]({f})" for f in figures] + [""] + tables
    reports.atomic_write(workdir / "report.md", "\n".join(report) + "\n")
    reports.write_json(workdir / "report.json", rows)
    print("\n" + table + f"\n\nreport: {workdir / 'report.md'}", flush=True)
    return {"rows": rows, "histories": histories}


def main():
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Base experiment config (configs/*.py).")
    flags.DEFINE_string("workdir", None, "Folder for the experiment's runs and report.")
    flags.DEFINE_enum("experiment", None, sorted(EXPERIMENTS), "Which experiment of the paper.")
    flags.DEFINE_list("only", [], "Run only these runs of the experiment.")
    flags.mark_flags_as_required(["config", "workdir", "experiment"])

    from hfcjax import cli

    cli.define_distributed_flags()

    def run(argv):
        logging.set_verbosity(logging.WARNING)
        F = flags.FLAGS
        cli.start_distributed()
        with cli.clear_errors():
            reproduce(F.experiment, cli.loaded_config(F.config), F.workdir, only=F.only)

    app.run(run, flags_parser=cli.parse_flags)


def entry():
    """The `hfcjax-reproduce` console script: the same as `python -m hfcjax.reproduce`."""
    from hfcjax import backend

    backend.use_huge_pages()
    main()


if __name__ == "__main__":
    entry()
