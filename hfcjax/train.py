"""Training, in the shape of flax's examples: the step functions (`hfcjax.steps`), a
`Trainer` that holds one run's data, mesh and compiled steps, and
`train_and_evaluate(config, workdir)`.

Everything a run does is a function of (config, seed): the batch order of epoch e is
`data.epoch_order(n, seed, e)`, step randomness is `fold_in(rng, step)`. A run resumes
from its latest epoch checkpoint (`hfcjax.checkpoints`) and then equals an uninterrupted
run. Metrics go through `hfcjax.writers` (JSONL, tensorboard, console) under the names
`hfcjax.measure` derives; figures are drawn before and after the loop, never inside it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import threading
import time
from typing import Dict, List, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from hfcjax import checkpoints, config as config_lib, data, evaluators, locks, measure, models, plots, sharding, writers
from hfcjax.evaluators import common, fused
from hfcjax.steps import StepOptions, TrainState, init_state, make_optimizer, summarize, train_step, zero_totals
from hfcjax.errors import UserError

CONSOLE_KEYS = (*(measure.metric_name(split, measure.ORIGINAL) for split in measure.SPLITS),
                "train_seconds", "eval_seconds")  # the end-of-epoch line


class ConfigChanged(UserError):
    """A workdir's run was started with a config whose results-changing keys differ."""


class Interrupted(UserError):
    """SIGINT or SIGTERM stopped the run at a step boundary; `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class Preempted(UserError):
    """SIGTERM (a preempted VM) stopped the run at a step boundary after saving the state
    mid-epoch; the rerun continues from that step. Not a failure: `exit_code` 0."""

    exit_code = 0


@contextlib.contextmanager
def stop_requests():
    """While active, SIGINT and SIGTERM only record their number in the yielded list, so the
    loop can stop at the next step boundary (no half-written files, a clean exit)."""
    requested: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {s: signal.signal(s, lambda signum, frame: requested.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


# --------------------------------------------------------------------------- one run


class Tracking:
    """The periodic evaluation of a run: the evaluators with ``config.evals.NAME.every_epochs
    > 0`` (by default `accuracy`: x, LFC and HFC every epoch), due in epochs that are a
    multiple of it, on the first `eval_train_subset` training images and on the test set.
    One compiled pass per set of evaluators due together, kept for the whole run."""

    def __init__(self, config: ml_collections.ConfigDict, model, train_set, test_set):
        shared = common.Shared(batch_size=config.eval_batch_size, seed=config.evaluation.seed, log=log)
        apply_fn = lambda variables, x: model.apply(variables, x, train=False)
        self.evaluators = evaluators.build_tracking(config.evals, apply_fn, shared)
        self.sets = {"train": train_set, "test": test_set}
        self.radii, self.inclusive = tuple(float(r) for r in config.track_radii), bool(config.inclusive)
        self.passes: Dict[Tuple[str, ...], fused.FusedPass] = {}

    def __call__(self, state: TrainState, epoch: int) -> Dict[str, float]:
        """metrics.jsonl values of the evaluators due after `epoch` (train split first)."""
        due = [e for e in self.evaluators if epoch % e.cfg.every_epochs == 0]
        if not due:
            return {}
        names = tuple(e.name for e in due)
        if names not in self.passes:
            self.passes[names] = fused.FusedPass(due, progress=False)
        variables = checkpoints.variables_of(state.params, state.batch_stats)
        variant = common.ModelVariant("model", 0.0, False, variables)
        metrics: Dict[str, float] = {}
        for split, (images, labels) in self.sets.items():
            inputs = common.Inputs(variables, [variant], images, labels, self.radii, self.inclusive)
            rows = self.passes[names].run(inputs)
            for e in due:
                metrics.update(e.scalars(rows[e.name][0], split))
        return metrics


class Trainer:
    """One run's data, mesh, compiled steps and run directory."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, allow_config_change: Sequence[str] = ()):
        config_lib.validate(config)
        shared = {k: v for k, v in config.to_dict().items() if k != "data_dir"}  # data may live elsewhere per host
        sharding.check_same_everywhere(config=json.dumps(shared, sort_keys=True, default=str),
                                       code=sharding.code_version())
        self.config, self.run_dir = config, checkpoints.RunDir(workdir)
        self.allow_config_change = tuple(allow_config_change)
        self.stop: List[int] = []  # signals received (filled by `stop_requests` during `run`)
        self.mesh = sharding.make_mesh()
        sharding.check_batch_size(config.batch_size, self.mesh)
        sharding.check_batch_size(config.eval_batch_size, self.mesh, "eval_batch_size")
        self.repl, self.batch_sh = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
        self._load_data()
        self.model = models.from_config(config, self.spec.num_classes)
        self.tx = make_optimizer(config)
        init = functools.partial(init_state, self.model, self.tx, self.spec.shape, config.seed)
        self.state_sharding = jax.tree.map(lambda _: self.repl, jax.eval_shape(init))
        self.init = jax.jit(init, out_shardings=self.state_sharding)
        totals_sharding = jax.tree.map(lambda _: self.repl, zero_totals())
        step = functools.partial(train_step, model=self.model, tx=self.tx,
                                 options=StepOptions.from_config(config, self.spec.num_classes))
        self.train_step = jax.jit(step, in_shardings=(self.state_sharding, totals_sharding, self.batch_sh,
                                                      self.batch_sh),
                                  out_shardings=(self.state_sharding, totals_sharding), donate_argnums=(0,))
        self.tracking = Tracking(config, self.model, data.subset(self.train_images, self.train_labels,
                                                                 config.eval_train_subset),
                                 (self.test_images, self.test_labels))
        self.steps_per_epoch = data.steps_per_epoch(len(self.train_images), config.batch_size, True)
        if self.steps_per_epoch == 0:
            raise UserError(f"config.batch_size={config.batch_size} is larger than the training set "
                             f"({len(self.train_images)} images).")

    def _load_data(self):
        c = self.config
        self.spec = data.get_spec(c.dataset)
        kw = dict(source=c.data_source, data_dir=c.data_dir or None)
        self.train_images, self.train_labels = data.subset(*data.load(c.dataset, "train", **kw), c.train_subset)
        self.test_images, self.test_labels = data.subset(*data.load(c.dataset, "test", **kw), c.test_subset)
        if c.shuffle_labels:
            perm = np.random.default_rng([c.seed, 12345]).permutation(len(self.train_labels))
            self.train_labels = self.train_labels[perm]

    def train_epoch(self, state, epoch: int, progress: writers.ReportProgress, ckpt: checkpoints.TrainingCheckpoints,
                    start_step: int = 0, totals=None) -> Tuple[TrainState, Dict]:
        """One epoch of steps (from `start_step`, with the epoch's `totals` so far, after a
        preemption); returns the state and {loss, batch_acc} over the epoch."""
        c = self.config
        totals = jax.device_put(zero_totals(), self.repl) if totals is None else totals
        progress.start_epoch(start_step)
        for i, (images, labels, _) in enumerate(data.batches(self.train_images, self.train_labels, c.batch_size,
                                                             seed=c.seed, epoch=epoch, start_step=start_step),
                                                start=start_step):
            x, y = sharding.global_batch(self.batch_sh, images, labels)
            previous = totals
            state, totals = self.train_step(state, totals, x, y)
            # At most one step in flight (the one just dispatched): a signal stops the run after the
            # step running when it arrived or the next one, not after a queue of dispatched steps.
            jax.block_until_ready(previous)
            signum = self.agreed_stop()
            if signum:
                self.stop_at(signum, ckpt, state, totals, epoch, i + 1)
            if progress.due(i + 1):
                progress(epoch, i + 1, summarize(jax.device_get(totals), epoch))
        return state, summarize(jax.device_get(totals), epoch)

    def agreed_stop(self) -> int:
        """The signal that stops every process at this step boundary (0: none). With several
        processes they agree (the largest signal any received), so all stop at the same step."""
        local = max(self.stop, default=0)
        if jax.process_count() == 1:
            return local
        return int(np.max(multihost_utils.process_allgather(np.int32(local))))

    def stop_at(self, signum: int, ckpt: checkpoints.TrainingCheckpoints, state, totals, epoch: int, step: int):
        """SIGTERM: save the state mid-epoch and raise `Preempted`; SIGINT: raise `Interrupted`."""
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM:
            path = ckpt.save_preempted(epoch, step, model=state.model_item(), train=state.train_item(), totals=totals,
                                       config=self.config.to_dict())
            raise Preempted(f"{name}: saved the state after step {step} of epoch {epoch} to {path}; rerun the same "
                            "command to continue from there.")
        raise Interrupted(signum, f"stopped by {name} in epoch {epoch} at step {step}; the last checkpoint is of "
                                  f"epoch {epoch - 1}: rerun the same command to resume from there.")

    def resume(self, ckpt: checkpoints.TrainingCheckpoints) -> Tuple[TrainState, List[Dict]]:
        """The latest checkpoint's state and history, or a fresh state and no history."""
        epoch = ckpt.latest_epoch()
        if epoch is None:
            return self.init(), []
        abstract = self.abstract_state()
        model, train, saved_config, history = ckpt.restore(epoch, model=abstract.model_item(),
                                                           train=abstract.train_item())
        self.check_config(saved_config)
        log(f"resuming from {ckpt.directory} after epoch {epoch}")
        return TrainState.from_items(model, train), history

    def abstract_state(self) -> TrainState:
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            jax.eval_shape(self.init), self.state_sharding)

    def check_config(self, saved_config: Dict) -> None:
        changes = config_lib.result_changes(saved_config, self.config, self.allow_config_change)
        if changes:
            raise ConfigChanged(f"{self.run_dir.root} holds a run with another config ({'; '.join(changes)}); "
                                "resuming would mix two runs. Use another --workdir, or pass "
                                f"--allow_config_change={','.join(c.split(':')[0] for c in changes)} to continue "
                                "with the new values.")

    def resume_preempted(self, ckpt: checkpoints.TrainingCheckpoints, state, epoch: int):
        """(state, start_step, totals) from a preemption checkpoint taken in `epoch`, or the
        given state from step 0 when there is none (one left from an earlier epoch is removed)."""
        position = ckpt.preempted()
        if position is None or position["epoch"] != epoch:
            if position is not None:
                ckpt.clear_preempted()
            return state, 0, None
        self.check_config(position["config"])
        abstract = self.abstract_state()
        totals = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=self.repl), zero_totals())
        model, train, totals = ckpt.restore_preempted(model=abstract.model_item(), train=abstract.train_item(),
                                                      totals=totals)
        log(f"resuming from {self.run_dir.preempted} at step {position['step']} of epoch {epoch} (preempted)")
        return TrainState.from_items(model, train), position["step"], totals

    def run(self) -> List[Dict]:
        """Trains the remaining epochs, owning the workdir meanwhile; returns every epoch's
        metric record. SIGINT/SIGTERM stop it at the next step (`Interrupted`)."""
        main = jax.process_index() == 0
        with locks.WorkdirLock(self.run_dir.lock, log) if main else contextlib.nullcontext(), \
                stop_requests() as self.stop:
            ckpt = checkpoints.TrainingCheckpoints(self.run_dir.root, self.config.keep_checkpoints, log)
            try:
                return self._train(ckpt)
            finally:
                ckpt.close()

    def _train(self, ckpt: checkpoints.TrainingCheckpoints) -> List[Dict]:
        c = self.config
        state, history = self.resume(ckpt)
        if jax.process_index() == 0 and not history and c.draw_figures:
            plots.split_examples(self.test_images[:4], c.track_radii, self.run_dir.figures / "split_examples.png")
        writer = writers.create_default_writer(self.run_dir.metrics, self.run_dir.events, history,
                                               just_logging=jax.process_index() != 0, log=log, console_keys=CONSOLE_KEYS)
        if not history:
            writer.write_hparams(c.to_dict())
        progress = writers.ReportProgress(num_epochs=c.num_epochs, steps_per_epoch=self.steps_per_epoch,
                                          batch_size=c.batch_size, every_steps=c.log_every_steps, log=log)
        log(f"{c.model} on {c.dataset}: {len(self.train_images)} train / {len(self.test_images)} test images, "
            f"{self.steps_per_epoch} steps/epoch, {c.num_epochs} epochs, {self.mesh.size} device(s) "
            f"[{jax.devices()[0].platform}]")
        state, start_step, totals = self.resume_preempted(ckpt, state, len(history) + 1)
        try:
            for epoch in range(len(history) + 1, c.num_epochs + 1):
                start = time.time()
                state, summary = self.train_epoch(state, epoch, progress, ckpt, start_step, totals)
                start_step, totals = 0, None
                train_seconds, eval_start = time.time() - start, time.time()
                metrics = self.tracking(state, epoch)
                progress.end_epoch(time.time() - eval_start)
                history.append({"epoch": epoch, "step": int(jax.device_get(state.step)), **summary, **metrics,
                                "train_seconds": round(train_seconds, 3),
                                "eval_seconds": round(progress.eval_seconds, 3),
                                "images_per_second": round(self.steps_per_epoch * c.batch_size / train_seconds, 1)})
                ckpt.save(epoch, model=state.model_item(), train=state.train_item(), config=c.to_dict(),
                          history=history)  # synchronous: metrics are written only for saved epochs
                ckpt.clear_preempted()
                writer.write_scalars(epoch, {k: v for k, v in history[-1].items() if k != "epoch"})
        finally:
            writer.close()
        return history


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: Sequence[str] = ()) -> List[Dict]:
    """Trains (or resumes) the run in `workdir`; returns the per-epoch metric records.
    Resuming with a config that differs in keys that change the results is refused unless
    those keys are in `allow_config_change`. Draws the training curves after the loop."""
    start = time.time()
    trainer = Trainer(config, workdir, allow_config_change)
    figures = trainer.run_dir.figures
    history = trainer.run()
    if jax.process_index() == 0 and history:
        if config.draw_figures:
            plots.training_curves(history, config.track_radii, figures / "curves.png",
                                  title=f"{config.model} on {config.dataset}")
        log(f"done in {writers.format_seconds(time.time() - start)}: metrics {trainer.run_dir.metrics}, "
            f"figures {figures}, checkpoints {trainer.run_dir.checkpoints}")
    return history
