"""Helper for test_train: runs 3 train steps and one evaluation on however many devices
this process sees, and prints the parameters' summary and metrics as JSON."""

import json
import sys

import jax
import numpy as np

from hfcjax import data, sharding, train
from test_train import tiny_config

trainer = train.Trainer(tiny_config(batch_norm=True, dropout_rate=0.5, mixup_alpha=0.5), sys.argv[1])
state, acc = trainer.init(), jax.device_put(train.zero_accumulator(), trainer.repl)
for images, labels, _ in list(data.batches(trainer.train_images, trainer.train_labels, 40, seed=0, epoch=1))[:3]:
    x, y = sharding.global_batch(trainer.batch_sh, images, labels)
    state, acc = trainer.train_step(state, acc, x, y)
leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(jax.device_get(state.params))]
print(json.dumps({"devices": len(jax.devices()), "loss": float(acc["loss"]),
                  "params": [float(v.sum()) for v in leaves], "abs": [float(np.abs(v).sum()) for v in leaves],
                  "metrics": trainer.evaluate(state, trainer.test_images, trainer.test_labels)}))
