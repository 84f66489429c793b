"""Run by test_train in a subprocess: 3 train steps and one epoch's tracking (train and test
accuracy on x, LFC, HFC) of the config given as JSON (argv[2]) on however many devices this
process sees; prints the parameters' summary and metrics as JSON."""

import json
import sys

import jax
import ml_collections
import numpy as np

from hfcjax import data, sharding, steps, train

config = ml_collections.ConfigDict(json.loads(sys.argv[2]))
trainer = train.Trainer(config, sys.argv[1])
state, totals = trainer.init(), jax.device_put(steps.zero_totals(), trainer.repl)
for images, labels, _ in list(data.batches(trainer.train_images, trainer.train_labels, 40, seed=0, epoch=1))[:3]:
    x, y = sharding.global_batch(trainer.batch_sh, images, labels)
    state, totals = trainer.train_step(state, totals, x, y)
leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(jax.device_get(state.params))]
metrics = trainer.tracking(state, 1)
print(json.dumps({"devices": len(jax.devices()), "loss": float(totals["loss_sum"]),
                  "params": [float(v.sum()) for v in leaves], "abs": [float(np.abs(v).sum()) for v in leaves],
                  "metrics": metrics}))
