"""The run directory: its layout, its checkpoints, and restoring a model from it.

Nothing else in hfcjax names a folder or a checkpoint item; `RunDir` and the functions here
are the way in. A run directory holds

    metrics.jsonl     one JSON object per epoch (hfcjax.writers.JsonlWriter)
    events/           tensorboard events
    figures/          PNGs drawn by training
    checkpoints/N/    orbax checkpoint after epoch N with the items
                        model   {"params", "batch_stats"}         (what evaluation restores)
                        train   {"step", "opt_state", "rng"}      (only resuming needs it)
                        config  the training config as JSON
                        history the metric records up to epoch N as JSON
    eval/             written by hfcjax.evaluate

Checkpoints are numbered by epoch (orbax calls that number a step); the optimizer step
count lives inside the `train` item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from hfcjax import data, measure, models

MODEL, TRAIN, CONFIG, HISTORY = "model", "train", "config", "history"
ITEMS = (MODEL, TRAIN, CONFIG, HISTORY)
BEST_METRIC = measure.metric_name("test", measure.ORIGINAL)  # the best checkpoint has the highest test accuracy


def _best_metric(metrics) -> float:
    return metrics[BEST_METRIC]


class CheckpointError(RuntimeError):
    """A run directory holds no usable checkpoint for what was asked; the message says what to do."""


class RunDir:
    """The paths of one run directory."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        self.checkpoints = (self.root / "checkpoints").absolute()  # orbax wants an absolute path
        self.metrics = self.root / "metrics.jsonl"
        self.events = self.root / "events"
        self.figures = self.root / "figures"
        self.eval = self.root / "eval"

    def epoch_dirs(self) -> List[Path]:
        """The finished checkpoint folders, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted((p for p in self.checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def variables_of(params, batch_stats) -> Dict[str, Any]:
    """Flax variables from the two model items (no "batch_stats" collection when it is empty)."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


class TrainingCheckpoints:
    """Saving and resuming a training run: the last `keep` epochs plus the best by test accuracy."""

    def __init__(self, workdir, keep: int):
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=_best_metric, n=1),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
        self.directory = RunDir(workdir).checkpoints
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_epoch(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, epoch: int, *, model: Dict[str, Any], train: Dict[str, Any], config: Dict, history: List[Dict]):
        """Saves epoch `epoch` (in the background): `model` = {"params", "batch_stats"},
        `train` = {"step", "opt_state", "rng"}, the config and the history as JSON."""
        self._manager.save(epoch, metrics={BEST_METRIC: history[-1][BEST_METRIC]}, args=ocp.args.Composite(**{
            MODEL: ocp.args.StandardSave(model), TRAIN: ocp.args.StandardSave(train),
            CONFIG: ocp.args.JsonSave(config), HISTORY: ocp.args.JsonSave(history)}))

    def restore(self, epoch: int, *, model: Dict[str, Any], train: Dict[str, Any]) -> Tuple[Dict, Dict, List[Dict]]:
        """(model, train, history) of epoch `epoch`; `model` and `train` give the abstract
        trees (shapes, dtypes, shardings) to restore into."""
        restored = self._manager.restore(epoch, args=ocp.args.Composite(**{
            MODEL: ocp.args.StandardRestore(model), TRAIN: ocp.args.StandardRestore(train),
            HISTORY: ocp.args.JsonRestore()}))
        return restored[MODEL], restored[TRAIN], list(restored[HISTORY])

    def close(self) -> None:
        """Waits for the background save, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _choose(manager, directory: Path, which: Union[str, int]) -> int:
    if str(which) == "latest":
        chosen = manager.latest_step()
    elif str(which) == "best":  # by the history's test accuracy (works for every checkpoint ever written)
        chosen = manager.latest_step()
        if chosen is not None:
            history = manager.restore(chosen, args=ocp.args.Composite(**{HISTORY: ocp.args.JsonRestore()}))[HISTORY]
            accuracy = {r["epoch"]: r[BEST_METRIC] for r in history}
            chosen = max(manager.all_steps(), key=lambda e: (accuracy.get(e, float("-inf")), e))
    else:
        chosen = int(which)
        if chosen not in manager.all_steps():
            raise CheckpointError(f"no checkpoint of epoch {chosen} in {directory}; have {manager.all_steps()}.")
    if chosen is None:
        raise CheckpointError(f"{directory} holds no finished checkpoint: train at least one epoch first.")
    return chosen


def restore_model(workdir, which: Union[str, int] = "latest") -> Tuple[ml_collections.ConfigDict, Any, Dict, int]:
    """(config, model, variables, epoch) of a training run: only the model variables and the
    saved config are read, never the optimizer state. `which` is latest, best or an epoch."""
    directory = RunDir(workdir).checkpoints
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoints in {directory}: train first with "
                              f"`python -m hfcjax.main --config ... --workdir {workdir}`.")
    manager = ocp.CheckpointManager(directory, item_names=(MODEL, CONFIG, HISTORY),
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        epoch = _choose(manager, directory, which)
        config = ml_collections.ConfigDict(
            manager.restore(epoch, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG])
        spec = data.get_spec(config.dataset)
        model = models.from_config(config, spec.num_classes)
        abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *spec.shape)), train=False))
        target = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
        restored = manager.restore(epoch, args=ocp.args.Composite(**{MODEL: ocp.args.StandardRestore(target)}))
    finally:
        manager.close()
    return config, model, variables_of(restored[MODEL]["params"], restored[MODEL]["batch_stats"]), epoch
