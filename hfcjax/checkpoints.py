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
    .hfcjax.lock      the training run that owns the directory (host, pid), while it runs
    corrupt_checkpoints/  checkpoints that failed verification, moved aside on resume

Checkpoints are numbered by epoch (orbax calls that number a step); the optimizer step
count lives inside the `train` item. Every checkpoint folder also holds `hfcjax_sha256.json`,
the size and sha256 of each of its files, verified before anything is restored: a corrupt or
incomplete checkpoint never produces numbers, and resume and evaluation fall back to the
newest intact one, saying so. Saves are synchronous, so a failed save stops the run at once.
"""

from __future__ import annotations

import contextlib
import json
import datetime
import functools
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from hfcjax import data, hashing, measure, models, reports, sharding
from hfcjax.errors import UserError

MODEL, TRAIN, CONFIG, HISTORY = "model", "train", "config", "history"
ITEMS = (MODEL, TRAIN, CONFIG, HISTORY)
BEST_METRIC = measure.metric_name("test", measure.ORIGINAL)  # the best checkpoint has the highest test accuracy


def _best_metric(metrics) -> float:
    """An epoch without test accuracy (config.evals.accuracy.every_epochs > 1 or 0) is never the best."""
    value = metrics.get(BEST_METRIC)
    return float("-inf") if value is None else value


class CheckpointError(UserError):
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
        self.lock = self.root / ".hfcjax.lock"
        self.corrupt = self.root / "corrupt_checkpoints"
        self.preempted = (self.root / "preempted").absolute()  # the mid-epoch checkpoint of a SIGTERM

    def epoch_dirs(self) -> List[Path]:
        """The finished checkpoint folders, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted((p for p in self.checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


CHECKSUMS = "hfcjax_sha256.json"


def _files(epoch_dir: Path) -> List[Path]:
    return sorted(p for p in epoch_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(epoch_dir: Path) -> None:
    """Records the size and sha256 of every file of a finished checkpoint."""
    table = {str(p.relative_to(epoch_dir)): [p.stat().st_size, hashing.file_sha256(p)] for p in _files(epoch_dir)}
    reports.write_json(epoch_dir / CHECKSUMS, table)


def verify(epoch_dir: Path, items: Sequence[str] = ITEMS) -> Optional[str]:
    """None when the files of `items` (and orbax's own top-level files) match their recorded
    checksums (or when the checkpoint has none: written before hfcjax recorded them);
    otherwise what is wrong, in a few words. Evaluation verifies only what it reads."""
    path = epoch_dir / CHECKSUMS
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"its checksum file {CHECKSUMS} is unreadable"
    for name, (size, digest) in table.items():
        if "/" in name and name.split("/")[0] not in items:
            continue
        file = epoch_dir / name
        if not file.is_file():
            return f"file {name} is missing"
        if file.stat().st_size != size:
            return f"file {name} has {file.stat().st_size} bytes instead of {size} (truncated or changed)"
        if hashing.file_sha256(file) != digest:
            return f"file {name} does not match its checksum (corrupted)"
    return None


def variables_of(params, batch_stats) -> Dict[str, Any]:
    """Flax variables from the two model items (no "batch_stats" collection when it is empty)."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


class TrainingCheckpoints:
    """Saving and resuming a training run: the last `keep` epochs plus the best by test accuracy.

    On creation, checkpoints newer than the newest intact one (by their checksums) are moved
    to DIR/corrupt_checkpoints/, so the run resumes from the newest intact epoch.
    """

    def __init__(self, workdir, keep: int, log: Callable[[str], None] = print):
        self.run_dir, self.log = RunDir(workdir), log
        self.directory = self.run_dir.checkpoints
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} is a file, not a folder: move it away or choose another "
                                  "--workdir.")
        if jax.process_index() == 0:
            self._set_aside_corrupt()
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=_best_metric, n=1),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def _set_aside_corrupt(self) -> None:
        for epoch_dir in reversed(self.run_dir.epoch_dirs()):
            problem = verify(epoch_dir)
            if problem is None:
                return
            target = self.run_dir.corrupt / f"{epoch_dir.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(epoch_dir), str(target))
            self.log(f"the checkpoint of epoch {epoch_dir.name} is corrupt ({problem}); moved it to {target} and "
                     "resuming from the newest intact one")

    def latest_epoch(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, epoch: int, *, model: Dict[str, Any], train: Dict[str, Any], config: Dict, history: List[Dict]):
        """Saves epoch `epoch` and returns when it is on disk with its checksums: `model` =
        {"params", "batch_stats"}, `train` = {"step", "opt_state", "rng"}, the config and
        the history as JSON. A failure raises CheckpointError at once."""
        try:
            self._manager.save(epoch, metrics={BEST_METRIC: history[-1].get(BEST_METRIC)}, args=ocp.args.Composite(**{
                MODEL: ocp.args.StandardSave(model), TRAIN: ocp.args.StandardSave(train),
                CONFIG: ocp.args.JsonSave(config), HISTORY: ocp.args.JsonSave(history)}))
            self._manager.wait_until_finished()
            if jax.process_index() == 0:
                write_checksums(self.directory / str(epoch))
        except Exception as e:  # noqa: BLE001 - any failure of the save is reported the same way
            self._remove_unfinished(epoch)
            raise CheckpointError(f"saving the checkpoint of epoch {epoch} to {self.directory} failed "
                                  f"({_short(e)}); its unfinished files were removed, the earlier checkpoints are "
                                  "intact and no metrics were written for that epoch. Free disk space or fix the "
                                  "folder's permissions, then rerun the same command to resume.") from None

    def _remove_unfinished(self, epoch: int) -> None:
        """Orbax's temporary folders of `epoch`, and the epoch's folder when it has no checksums."""
        try:  # the other items' writes may still be running in orbax's threads
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - the save already failed; what matters is what is left on disk
            pass
        if jax.process_index() != 0:
            return
        for _ in range(20):  # a write still in flight can recreate the folder: until it stays gone
            left = list(self.directory.glob(f"{epoch}.orbax-checkpoint-tmp*"))
            if not left:
                break
            for path in left:
                shutil.rmtree(path, ignore_errors=True)
            time.sleep(0.05)
        final = self.directory / str(epoch)
        if final.is_dir() and not (final / CHECKSUMS).exists():
            shutil.rmtree(final, ignore_errors=True)

    def restore(self, epoch: int, *, model: Dict[str, Any], train: Dict[str, Any]
                ) -> Tuple[Dict, Dict, Dict, List[Dict]]:
        """(model, train, config, history) of epoch `epoch`; `model` and `train` give the
        abstract trees (shapes, dtypes, shardings) to restore into."""
        restored = _read(self.directory, epoch, lambda: self._manager.restore(epoch, args=ocp.args.Composite(**{
            MODEL: ocp.args.StandardRestore(model), TRAIN: ocp.args.StandardRestore(train),
            CONFIG: ocp.args.JsonRestore(), HISTORY: ocp.args.JsonRestore()})))
        return restored[MODEL], restored[TRAIN], dict(restored[CONFIG]), list(restored[HISTORY])

    # A preempted run (SIGTERM) saves its state mid-epoch, with the epoch's running totals,
    # into DIR/preempted/; its position.json, written last, marks it complete.

    def save_preempted(self, epoch: int, step: int, *, model: Dict, train: Dict, totals: Dict, config: Dict) -> Path:
        """Saves the state after step `step` of epoch `epoch` (every process calls this)."""
        path = self.run_dir.preempted
        try:
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save(path / "state", {MODEL: model, TRAIN: train, "totals": totals}, force=True)
            checkpointer.wait_until_finished()
            checkpointer.close()
            if jax.process_index() == 0:
                write_checksums(path)
                reports.write_json(path / "position.json", {"epoch": epoch, "step": step, "config": config})
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"saving the preemption checkpoint to {path} failed ({_short(e)}); rerun to resume "
                                  "from the last epoch instead.") from None
        return path

    def preempted(self) -> Optional[Dict]:
        """{"epoch", "step", "config"} of a complete, intact preemption checkpoint, else None."""
        position = self.run_dir.preempted / "position.json"
        if not position.is_file():
            return None
        problem = verify(self.run_dir.preempted, ("state",))
        if problem is not None:
            self.log(f"the preemption checkpoint {self.run_dir.preempted} is corrupt ({problem}); ignoring it")
            return None
        return json.loads(position.read_text())

    def restore_preempted(self, *, model: Dict, train: Dict, totals: Dict) -> Tuple[Dict, Dict, Dict]:
        """(model, train, totals) of the preemption checkpoint, into the given abstract trees."""
        target = {MODEL: model, TRAIN: train, "totals": totals}
        restored = _read(self.run_dir.preempted, "preempted", lambda: ocp.StandardCheckpointer().restore(
            self.run_dir.preempted / "state", target))
        return restored[MODEL], restored[TRAIN], restored["totals"]

    def clear_preempted(self) -> None:
        if jax.process_index() == 0:
            shutil.rmtree(self.run_dir.preempted, ignore_errors=True)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _read(directory: Path, epoch: int, restore: Callable[[], Any]):
    """Runs `restore`; any failure becomes one CheckpointError line."""
    try:
        return restore()
    except Exception as e:  # noqa: BLE001 - tensorstore/orbax raise many kinds
        raise CheckpointError(f"could not read the checkpoint of epoch {epoch} in {directory} ({_short(e)}); it is "
                              "incomplete or was written by another version.") from None


def _choose(manager, directory: Path, which: Union[str, int]) -> int:
    steps = manager.all_steps()
    if not steps:
        raise CheckpointError(f"{directory} holds no finished checkpoint: train at least one epoch first.")
    if str(which) == "latest":
        return max(steps)
    if str(which) == "best":  # by test accuracy: the newest intact history, and metrics.jsonl beside it
        source = next((e for e in sorted(steps, reverse=True)
                       if verify(directory / str(e), READ_BY_EVALUATION) is None), max(steps))
        history = _read(directory, source, lambda: manager.restore(
            source, args=ocp.args.Composite(**{HISTORY: ocp.args.JsonRestore()}))[HISTORY])
        accuracy = {r["epoch"]: r[BEST_METRIC] for r in [*history, *_metric_records(directory.parent / "metrics.jsonl")]
                    if BEST_METRIC in r and "epoch" in r}  # a corrupt newest epoch is still in metrics.jsonl
        return max(steps, key=lambda e: (accuracy.get(e, float("-inf")), e))
    chosen = int(which)
    if chosen not in steps:
        raise CheckpointError(f"no checkpoint of epoch {chosen} in {directory}; have {steps}.")
    return chosen


def _metric_records(path: Path) -> List[Dict]:
    """The readable lines of a run's metrics.jsonl (none when it is missing)."""
    records = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return [r for r in records if isinstance(r, dict)]


READ_BY_EVALUATION = (MODEL, CONFIG, HISTORY)
# Read-only, with every option orbax would otherwise reset (and warn about, on each evaluation) already off.
READ_ONLY = functools.partial(ocp.CheckpointManagerOptions, read_only=True, create=False, save_interval_steps=0,
                              max_to_keep=None, cleanup_tmp_directories=False)


def _intact(manager, directory: Path, epoch: int, which, log: Callable[[str], None]) -> int:
    """`epoch` when the files evaluation reads pass verification; for latest the newest intact
    one before it (said through `log`); a corrupt best or chosen epoch is a CheckpointError
    naming the problem (evaluating another epoch as 'best' would be a silent substitute)."""
    problem = verify(directory / str(epoch), READ_BY_EVALUATION)
    if problem is None:
        return epoch
    intact = [e for e in manager.all_steps() if verify(directory / str(e), READ_BY_EVALUATION) is None]
    if str(which) == "latest":
        older = [e for e in intact if e < epoch]
        if older:
            log(f"the checkpoint of epoch {epoch} is corrupt ({problem}); using epoch {max(older)}, the newest "
                "intact one before it")
            return max(older)
    advice = f"evaluate one of the intact epochs {sorted(intact)} with --epoch N" if intact else "no intact one is left"
    raise CheckpointError(f"the {'best ' if str(which) == 'best' else ''}checkpoint of epoch {epoch} in {directory} "
                          f"is corrupt ({problem}); {advice}.")


def restore_model(workdir, which: Union[str, int] = "latest", log: Callable[[str], None] = print
                  ) -> Tuple[ml_collections.ConfigDict, Any, Dict, int]:
    """(config, model, variables, epoch) of a training run: only the model variables and the
    saved config are read, never the optimizer state. `which` is latest, best or an epoch;
    its files are verified first: a corrupt latest falls back to the newest intact checkpoint
    before it (said through `log`, which evaluation also puts in its report); a corrupt best
    or chosen epoch is refused."""
    directory = RunDir(workdir).checkpoints
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoints in {directory}: train first with "
                              f"`python -m hfcjax.main --config ... --workdir {workdir}`.")
    manager = ocp.CheckpointManager(directory, item_names=(MODEL, CONFIG, HISTORY),
                                    options=READ_ONLY())
    try:
        epoch = _intact(manager, directory, _choose(manager, directory, which), which, log)
        config = ml_collections.ConfigDict(_read(directory, epoch, lambda: manager.restore(
            epoch, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]))
        spec = data.get_spec(config.dataset)
        model = models.from_config(config, spec.num_classes)
        abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *spec.shape)), train=False))
        # Replicated over this job's devices, whatever the process count of the run that saved it.
        repl = sharding.replicated(sharding.make_mesh())
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                              {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})})
        restored = _read(directory, epoch, lambda: manager.restore(
            epoch, args=ocp.args.Composite(**{MODEL: ocp.args.StandardRestore(target)})))
    finally:
        manager.close()
    return config, model, variables_of(restored[MODEL]["params"], restored[MODEL]["batch_stats"]), epoch
