"""hfcjax.writers: the JSONL format and its resume rewrite, fan-out, the progress line's ETA."""

import json

from hfcjax import writers


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_rewrites_the_checkpointed_history_then_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "loss": 0.5}\n{"epoch": 3, "loss": 0.4}\n')
    writer = writers.JsonlWriter(path, history=[{"epoch": 1, "loss": 1.0}])  # epochs 2-3 never checkpointed
    writer.write_scalars(2, {"loss": 0.6, "test_acc": 0.7})
    assert read(path) == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.6, "test_acc": 0.7}]
    assert not list(tmp_path.glob("*.tmp"))


class Recorder(writers.MetricWriter):
    def __init__(self):
        self.calls = []

    def write_scalars(self, step, scalars):
        self.calls.append(("scalars", step, dict(scalars)))

    def write_hparams(self, hparams):
        self.calls.append(("hparams", dict(hparams)))

    def close(self):
        self.calls.append(("close",))


def test_multi_writer_forwards_and_default_writer_respects_the_main_process(tmp_path):
    a, b = Recorder(), Recorder()
    multi = writers.MultiWriter([a, b])
    multi.write_hparams({"lr": 0.1})
    multi.write_scalars(3, {"loss": 0.5})
    multi.close()
    assert a.calls == b.calls == [("hparams", {"lr": 0.1}), ("scalars", 3, {"loss": 0.5}), ("close",)]
    lines = []
    other = writers.create_default_writer(tmp_path / "m.jsonl", tmp_path / "ev", just_logging=True, log=lines.append,
                                          console_keys=["test_acc"])
    other.write_scalars(1, {"test_acc": 0.5, "loss": 1.0})
    assert lines == ["epoch 1: test_acc 0.5000"] and not (tmp_path / "m.jsonl").exists()
    main = writers.create_default_writer(tmp_path / "m.jsonl", tmp_path / "ev", just_logging=False, log=lines.append)
    main.write_scalars(1, {"test_acc": 0.5})
    main.close()
    assert read(tmp_path / "m.jsonl") == [{"epoch": 1, "test_acc": 0.5}] and any((tmp_path / "ev").iterdir())


def test_report_progress_eta_covers_training_and_evaluation(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(writers.time, "time", lambda: now[0])
    lines = []
    progress = writers.ReportProgress(num_epochs=3, steps_per_epoch=10, batch_size=50, every_steps=4, log=lines.append)
    assert [s for s in range(1, 11) if progress.due(s)] == [4, 8, 10]
    progress.start_epoch()
    now[0] += 10.0  # 5 steps x 50 images in 10 s: 25 img/s
    progress(1, 5, {"loss": 2.0})
    # 25 steps x 50 images left at 25 img/s = 50 s; evaluation not measured yet.
    assert lines[-1] == ("epoch 1/3 step 5/10 loss 2.0000 | 25 img/s | ETA 0m50s "
                         "(training only until an epoch is evaluated)")
    progress.end_epoch(eval_seconds=7.0)
    progress.start_epoch()
    now[0] += 20.0
    progress(2, 10, {"loss": 1.0})  # 10 epochs-steps x 50 left at 25 img/s = 20 s, + 2 evaluations x 7 s
    assert lines[-1].endswith("| 25 img/s | ETA 0m34s (training and evaluation)")
    assert writers.format_seconds(3725) == "1h02m"
