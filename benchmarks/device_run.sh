#!/usr/bin/env bash
# One prepared GPU session (the device tool's machine has jax[cuda], flax, optax, orbax, torch but
# no internet): install carried wheels, run the benchmark table and the bf16 train-step profile
# (issue 7), the numeric tests, and with WITH_CIFAR_RUN=1 also train the paper's CIFAR-10 ResNet-18
# (100 epochs) on the CIFAR-10 subset and evaluate it.
# Expects: .whl/ (ml_collections, tensorboardX, torchattacks wheels) and .data/ (a copy of
# ../shared/data/cifar-10-batches-py) carried; writes results under $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HFCJAX_DATA_DIR=$PWD/.data
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__)" | tee -a "$OUT/gpu.txt"

t0=$(date +%s)
timeout "${BENCH_TIMEOUT:-240}" python3 -m benchmarks --out "$OUT/benchmarks_gpu.md" 2>&1 | grep -v "^W0000\|^I0000" | tee "$OUT/bench.log"
echo "benchmarks: $(( $(date +%s) - t0 ))s"

t0=$(date +%s)  # issue 26: AutoAttack standard on a WRN-28-10 (500 images) against torchattacks' (goal >= 3x)
timeout "${AUTOATTACK_TIMEOUT:-150}" python3 -m benchmarks --only autoattack --out "$OUT/autoattack_gpu.md" 2>&1 \
  | grep -v "^W0000\|^I0000" | tail -n 5 | tee "$OUT/autoattack.log"
echo "autoattack: $(( $(date +%s) - t0 ))s"

t0=$(date +%s)  # issue 15: two processes sharing the card vs one (MNIST CNN)
timeout "${PROCESSES_TIMEOUT:-120}" python3 -m benchmarks --only processes --out "$OUT/processes_gpu.md" 2>&1 \
  | grep -v "^W0000\|^I0000\|Gloo" | tee "$OUT/processes.log"
echo "processes: $(( $(date +%s) - t0 ))s"

t0=$(date +%s)
timeout "${PROFILE_TIMEOUT:-90}" python3 -m benchmarks.profile_step --dtype bfloat16 --batch 512 --steps 3 \
  --out "$OUT/profile_gpu_bf16.md" 2>&1 | grep -v "^W0000\|^I0000" | tail -n 25
echo "profile: $(( $(date +%s) - t0 ))s"

if [ "${WITH_CIFAR_RUN:-0}" = 1 ]; then
  t0=$(date +%s)
  timeout "${TRAIN_TIMEOUT:-200}" python3 -m hfcjax.main --config configs/cifar_resnet18.py --workdir /tmp/cifar \
    --config.eval_batch_size=1000 --config.log_every_steps=1000 2>&1 | tail -n 25 | tee "$OUT/train.log"
  echo "train: $(( $(date +%s) - t0 ))s"
  t0=$(date +%s)
  timeout "${EVAL_TIMEOUT:-120}" python3 -m hfcjax.evaluate --workdir /tmp/cifar --config.evaluation.batch_size=1017 2>&1 | tail -n 40 | tee "$OUT/evaluate.log"
  echo "evaluate: $(( $(date +%s) - t0 ))s"
  tar czf "$OUT/cifar_resnet18_run.tgz" -C /tmp/cifar metrics.jsonl figures eval 2>/dev/null
fi

timeout "${TEST_TIMEOUT:-90}" python3 -m pytest -q -x -p no:cacheprovider tests/test_frequency.py tests/test_smoothing.py 2>&1 | tail -n 5 | tee "$OUT/tests.log"
