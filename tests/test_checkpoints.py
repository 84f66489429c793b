"""hfcjax.checkpoints: the run directory's layout, save -> restore_model, choosing a checkpoint."""

import jax
import numpy as np
import pytest

from hfcjax import checkpoints, config as config_lib, models

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)


def save_epochs(workdir, accuracies, batch_norm=True):
    """Saves one checkpoint per test accuracy in `accuracies` of an untrained MNIST CNN;
    returns the config and the variables saved for each epoch."""
    config = config_lib.default()
    config.dataset, config.model, config.batch_norm = "fashion_mnist", "mnist_cnn", batch_norm
    model = models.from_config(config, 10)
    ckpt = checkpoints.TrainingCheckpoints(workdir, keep=1)
    saved, history = {}, []
    for epoch, acc in enumerate(accuracies, start=1):
        variables = model.init(jax.random.key(epoch), np.zeros((1, 28, 28, 1), np.float32), train=False)
        history.append({"epoch": epoch, checkpoints.BEST_METRIC: acc})
        ckpt.save(epoch, model={"params": variables["params"], "batch_stats": variables.get("batch_stats", {})},
                  train={"step": np.int32(epoch), "rng": np.zeros(2, np.uint32)}, config=config.to_dict(),
                  history=list(history))
        saved[epoch] = variables
    ckpt.close()
    return config, saved


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_run_dir_layout(tmp_path):
    run = checkpoints.RunDir(str(tmp_path))
    assert run.metrics == tmp_path / "metrics.jsonl" and run.eval == tmp_path / "eval"
    assert run.checkpoints == (tmp_path / "checkpoints").absolute() and run.epoch_dirs() == []


def test_restore_model_reads_the_chosen_epoch_and_keeps_the_best(tmp_path):
    config, saved = save_epochs(tmp_path, [0.3, 0.9, 0.5, 0.4])
    # keep=1: the latest (4) and the best by test accuracy (2) survive.
    assert [int(p.name) for p in checkpoints.RunDir(tmp_path).epoch_dirs()] == [2, 4]
    for which, epoch in (("latest", 4), ("best", 2), (2, 2), ("4", 4)):
        restored_config, model, variables, got = checkpoints.restore_model(tmp_path, which)
        assert got == epoch and restored_config.model == "mnist_cnn" and restored_config.batch_norm
        assert set(variables) == {"params", "batch_stats"}
        assert_same(variables, saved[epoch])
    with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint of epoch 3 .*have \[2, 4\]"):
        checkpoints.restore_model(tmp_path, 3)


def test_a_model_without_batch_norm_restores_params_only(tmp_path):
    _, saved = save_epochs(tmp_path, [0.5], batch_norm=False)
    _, _, variables, _ = checkpoints.restore_model(tmp_path)
    assert set(variables) == {"params"}
    assert_same(variables, saved[1])


def test_missing_or_empty_checkpoints_say_what_to_do(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoints in .*train first"):
        checkpoints.restore_model(tmp_path)
    checkpoints.RunDir(tmp_path).checkpoints.mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="holds no finished checkpoint"):
        checkpoints.restore_model(tmp_path)
