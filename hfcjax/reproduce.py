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
              BatchNorm; each then goes through hfcjax.evaluate (rho grid, FGSM/PGD/Square)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import ml_collections

from hfcjax import evaluate as evaluate_lib, plots, train

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
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {sorted(EXPERIMENTS)}.")
    runs = EXPERIMENTS[experiment]
    names = [name for name, _ in runs]
    unknown = set(only) - set(names)
    if unknown:
        raise ValueError(f"--only names {sorted(unknown)} are not runs of {experiment}; its runs: {names}.")
    configs = [(name, run_config(base, o)) for name, o in runs if not only or name in only]
    for _, config in configs:
        train.validate_config(config)
    return configs


def final_row(name: str, history: Sequence[Dict], radii) -> Dict:
    last = history[-1]
    row = {"run": name, "epochs": last["epoch"], "train acc (own inputs)": last["batch_acc"],
           "train acc": last["train_acc"], "test acc": last["test_acc"]}
    for r in radii:
        row[f"test LFC r={r:g}"] = last[f"test_low_r{r:g}"]
        row[f"test HFC r={r:g}"] = last[f"test_high_r{r:g}"]
    row["seconds (train+eval)"] = round(sum(h["train_seconds"] + h["eval_seconds"] for h in history), 1)
    return row


def markdown(rows: Sequence[Dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def reproduce(experiment: str, base: ml_collections.ConfigDict, workdir, *, only: Sequence[str] = (),
              eval_options: Dict | None = None) -> Dict:
    """Trains every run of `experiment` under workdir/<run>, then writes report.md and the figures."""
    workdir = Path(workdir)
    runs = plan(experiment, base, only)
    histories, rows, tables = {}, [], []
    for name, config in runs:
        print(f"== {experiment}/{name}", flush=True)
        histories[name] = train.train_and_evaluate(config, str(workdir / name))
        rows.append(final_row(name, histories[name], config.track_radii))
        if experiment in EVALUATED:
            result = evaluate_lib.evaluate(workdir / name, **(eval_options or {}))
            tables.append(f"### {name}\n\n" + (workdir / name / evaluate_lib.EVAL_DIR / "robustness.md").read_text())
    figures = []
    for split in ("train", "test"):
        path = plots.compare_runs(histories, workdir / f"{experiment}_{split}.png", split=split,
                                  title=f"{experiment}: {split} accuracy of x, LFC and HFC along epochs")
        figures.append(Path(path).name)
    report = [f"# {experiment}", "", f"Base config: dataset {base.dataset}, model {base.model}, "
              f"{base.num_epochs} epochs, batch {base.batch_size}, {base.optimizer} lr {base.learning_rate}.",
              "", markdown(rows), ""] + [f"![{f}]({f})" for f in figures] + [""] + tables
    (workdir / "report.md").write_text("\n".join(report) + "\n")
    (workdir / "report.json").write_text(json.dumps(rows, indent=2))
    print("\n" + markdown(rows) + f"\n\nreport: {workdir / 'report.md'}", flush=True)
    return {"rows": rows, "histories": histories}


def main():
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Base experiment config (configs/*.py).")
    flags.DEFINE_string("workdir", None, "Folder for the experiment's runs and report.")
    flags.DEFINE_enum("experiment", None, sorted(EXPERIMENTS), "Which experiment of the paper.")
    flags.DEFINE_list("only", [], "Run only these runs of the experiment.")
    flags.DEFINE_integer("eval_examples", 500, "Test images for the robustness grid (table2).")
    flags.mark_flags_as_required(["config", "workdir", "experiment"])

    def run(argv):
        logging.set_verbosity(logging.WARNING)
        from hfcjax import cli

        F = flags.FLAGS
        with cli.clear_errors():
            reproduce(F.experiment, F.config, F.workdir, only=F.only,
                      eval_options={"num_examples": F.eval_examples})

    app.run(run)


if __name__ == "__main__":
    from hfcjax import cli

    cli.use_huge_pages()
    main()
