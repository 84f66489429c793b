"""Where training's numbers go, in CommonLoopUtils' shape: one `MetricWriter` interface
(scalars, images, hparams) behind JSONL, tensorboard and the console, and `ReportProgress`,
a periodic action that prints progress with an ETA for the whole job.

The JSONL writer owns metrics.jsonl's format: one JSON object per epoch, ``{"epoch": E,
**scalars}``, appended and fsynced, rewritten atomically from the checkpointed history
when a run resumes. Only process 0 writes (`create_default_writer`).
"""

from __future__ import annotations

import abc
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from hfcjax import reports


class MetricWriter(abc.ABC):
    """CLU's interface: every method takes the step the values belong to (here: the epoch)."""

    @abc.abstractmethod
    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        ...

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """[H, W, C] or [N, H, W, C] arrays in [0, 1]; writers that cannot show images skip them."""

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """The run's settings, once."""

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


class JsonlWriter(MetricWriter):
    """metrics.jsonl: on creation the file is rewritten from `history` (the checkpointed
    records, so epochs that never reached a checkpoint are dropped); then one line per
    `write_scalars`, fsynced."""

    def __init__(self, path, history: Sequence[Mapping] = ()):
        self.path = Path(path)
        reports.atomic_write(self.path, "".join(json.dumps(dict(r)) + "\n" for r in history))

    def write_scalars(self, step, scalars):
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": step, **scalars}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch
    only to accept torch tensors (we pass numpy), and that import costs about 2 s of every
    training process's start where torch is installed. A torch already imported is left alone."""
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TensorboardWriter(MetricWriter):
    """Tensorboard events (tensorboardX) in `directory`: numeric scalars and images."""

    def __init__(self, directory):
        self._writer = _summary_writer_class()(str(directory))

    def write_scalars(self, step, scalars):
        for key, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)

    def write_images(self, step, images):
        for key, image in images.items():
            if np.ndim(image) == 4:  # a batch: tensorboard's add_images
                self._writer.add_images(key, np.asarray(image), step, dataformats="NHWC")
            else:
                self._writer.add_image(key, np.asarray(image), step, dataformats="HWC")

    def write_hparams(self, hparams):
        self._writer.add_text("hparams", json.dumps(dict(hparams), default=str), 0)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


class ConsoleWriter(MetricWriter):
    """One line per epoch with the scalars `keys` picks (all numeric ones by default)."""

    def __init__(self, log: Callable[[str], None] = print, keys: Optional[Sequence[str]] = None):
        self.log, self.keys = log, keys

    def write_scalars(self, step, scalars):
        keys = self.keys or [k for k, v in scalars.items() if isinstance(v, (int, float))]
        self.log(f"epoch {step}: " + " ".join(f"{k} {scalars[k]:.4f}" if isinstance(scalars[k], float)
                                              else f"{k} {scalars[k]}" for k in keys if k in scalars))


class MultiWriter(MetricWriter):
    """Forwards every call to several writers."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers)

    def write_scalars(self, step, scalars):
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step, images):
        for w in self.writers:
            w.write_images(step, images)

    def write_hparams(self, hparams):
        for w in self.writers:
            w.write_hparams(hparams)

    def flush(self):
        for w in self.writers:
            w.flush()

    def close(self):
        for w in self.writers:
            w.close()


def create_default_writer(metrics_path, events_dir, history: Sequence[Mapping] = (), *, just_logging: bool,
                          log: Callable[[str], None] = print, console_keys: Optional[Sequence[str]] = None):
    """JSONL + tensorboard + console on the main process; console only elsewhere (CLU's rule)."""
    console = ConsoleWriter(log, console_keys)
    if just_logging:
        return MultiWriter([console])
    return MultiWriter([JsonlWriter(metrics_path, history), TensorboardWriter(events_dir), console])


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Throughput:
    """The one ETA helper: units (images) per second since `restart`, and the seconds the
    units left take at that rate. Progress lines of training and of evaluation use it."""

    def __init__(self, done: int = 0):
        self.restart(done)

    def restart(self, done: int = 0, now: Optional[float] = None) -> None:
        """Measure from `now` (default: now), `done` units in (e.g. after a first batch that compiled)."""
        self.start, self.done = time.time() if now is None else now, done

    def rate(self, done: int, now: Optional[float] = None) -> float:
        """Units per second from the restart to `done` units at `now` (default: now)."""
        return (done - self.done) / max((time.time() if now is None else now) - self.start, 1e-9)

    @staticmethod
    def seconds_left(left: float, rate: float) -> float:
        return left / max(rate, 1e-9)


class ReportProgress:
    """A periodic action (CLU's `ReportProgress`): every `every_steps` steps and at the end of
    each epoch it prints the step, a summary and the ETA of the whole job.

    The ETA counts the training images still to go at the measured rate plus, for every
    epoch still to finish, the last measured per-epoch evaluation time.
    """

    def __init__(self, *, num_epochs: int, steps_per_epoch: int, batch_size: int, every_steps: int,
                 log: Callable[[str], None] = print):
        self.num_epochs, self.steps_per_epoch = num_epochs, steps_per_epoch
        self.batch_size, self.every_steps, self.log = batch_size, every_steps, log
        self.eval_seconds: Optional[float] = None
        self.throughput = Throughput()

    def start_epoch(self, done_steps: int = 0) -> None:
        """The epoch starts now, `done_steps` steps in (a run resumed mid-epoch)."""
        self.throughput.restart(done_steps * self.batch_size)

    def end_epoch(self, eval_seconds: float) -> None:
        self.eval_seconds = eval_seconds

    def due(self, step_in_epoch: int) -> bool:
        """Whether step `step_in_epoch` (1-based) reports: every `every_steps` and the last."""
        return step_in_epoch % self.every_steps == 0 or step_in_epoch == self.steps_per_epoch

    def __call__(self, epoch: int, step_in_epoch: int, summary: Dict[str, float]) -> None:
        done = step_in_epoch * self.batch_size
        rate = self.throughput.rate(done)
        images_left = ((self.num_epochs - epoch) * self.steps_per_epoch
                       + self.steps_per_epoch - step_in_epoch) * self.batch_size
        evals_left = self.num_epochs - epoch + 1
        eta = self.throughput.seconds_left(images_left, rate)
        eval_note = "training only until an epoch is evaluated"
        if self.eval_seconds is not None:
            eta += evals_left * self.eval_seconds
            eval_note = "training and evaluation"
        self.log(f"epoch {epoch}/{self.num_epochs} step {step_in_epoch}/{self.steps_per_epoch} "
                 + " ".join(f"{k} {v:.4f}" for k, v in summary.items())
                 + f" | {rate:,.0f} img/s | ETA {format_seconds(eta)} ({eval_note})")
