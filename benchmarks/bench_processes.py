"""Scaling across processes: the MNIST CNN on Fashion-MNIST trained as 1 process x 2 devices
and as 2 processes x 1 device (JAX's multi-process runtime through `hfcjax.launch`), against
1 process x 1 device timed in the same run. Rate: training images per second of epoch 2 (the
first epoch includes compilation), read from metrics.jsonl. On a CPU the devices are
simulated (JAX_NUM_CPU_DEVICES) and share the machine's cores; on a GPU several processes
share one card (`--one_accelerator_each` needs one card per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["--config.train_subset=3000", "--config.test_subset=500", "--config.eval_train_subset=500",
             "--config.batch_size=100", "--config.eval_batch_size=250", "--config.num_epochs=2",
             "--config.log_every_steps=1000"]


def rate(workdir: Path, processes: int, devices: int, platform_env: dict) -> float:
    train = [sys.executable, "-m", "hfcjax.main", "--config", str(ROOT / "configs" / "fashion_mnist_cnn.py"),
             "--workdir", str(workdir), *OVERRIDES]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **platform_env}
    if platform_env.get("JAX_PLATFORMS") == "cpu":
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    if processes > 1:
        args = [sys.executable, "-m", "hfcjax.launch", "--processes", str(processes)]
        args += ["--cpu_devices", str(devices)] if platform_env.get("JAX_PLATFORMS") == "cpu" else []
        args += ["--", *train, "--distributed"]
    else:
        args = train
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=1800)
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    return float(last["images_per_second"])


def run(on_gpu: bool = False):
    # One card shared by two processes: neither may preallocate most of its memory.
    platform_env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.4"} if on_gpu else {"JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        base = rate(Path(tmp) / "1x1", 1, 1, platform_env)
        rows = [("MNIST CNN train, 1 process x 1 device", base, "img/s", 1.0, "baseline")]
        for processes, devices in ((2, 1),) if on_gpu else ((1, 2), (2, 1)):
            value = rate(Path(tmp) / f"{processes}x{devices}", processes, devices, platform_env)
            rows.append((f"MNIST CNN train, {processes} process(es) x {devices} device(s)", value, "img/s",
                         value / base, "x the 1 x 1 rate"))
    return rows


if __name__ == "__main__":
    for row in run("--gpu" in sys.argv):
        print(row)
