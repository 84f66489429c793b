#!/usr/bin/env bash
# One prepared GPU session (issue 26), in the order, under one deadline (DEADLINE seconds
# from the start; each step gets the smaller of its own limit and what is left, so a slow step
# shortens the later ones instead of losing the whole call):
#   1. split: candidate forms and an op profile on 50k CIFAR images, then the split rows
#   2. bf16 ResNet-18 train step: op profile first, then the rows against torch.compile
#   3. AutoAttack standard on a WRN-28-10 against torchattacks' (goal >= 3x)
#   4. CIFAR-10 subset, paper's ResNet-18: the BatchNorm model and M_adversarial for Table 2
#      (epochs shortened to fit), evaluated with rho 0 / 1, AutoAttack and the six frequency evaluators
# The machine has jax[cuda], flax, optax, orbax, chex, torch but no internet and no ../shared.
# Expects carried: .whl/ (ml_collections, tensorboardX, torchattacks wheels) and .data/ (a copy of
# ../shared/data/cifar-10-batches-py). Writes logs and tables under $OUT (and a tarball of the runs).
# Dry run on a CPU (the CIFAR steps with tiny settings, LeNet and 5x the limits; the benchmarks other than the split are left out):
#   DRY=1 DEADLINE=3000 OUT=/tmp/out bash benchmarks/device_run.sh
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HFCJAX_DATA_DIR=${HFCJAX_DATA_DIR:-$PWD/.data}
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"
PY=${PY:-python3}
DEADLINE=${DEADLINE:-520}
SKIP=",${SKIP:-},"  # steps to leave out, e.g. SKIP=profile_split,bench_autoattack
START=$(date +%s)
DRY=${DRY:-0}
SCALE=${SCALE:-$([ "$DRY" = 1 ] && echo 5 || echo 1)}  # the steps' limits times this (a CPU dry run is slower)
RUNS=/tmp/hfcjax_runs
rm -rf "$RUNS"

step() {  # step NAME LIMIT_SECONDS COMMAND...: runs COMMAND under min(LIMIT, time left), logs to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  limit=$(( limit * SCALE ))
  local left=$(( DEADLINE - ($(date +%s) - START) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [[ "$SKIP" == *",$name,"* ]]; then echo "== $name: skipped (SKIP)"; return; fi
  if [ "$limit" -lt 15 ]; then echo "== $name: skipped (deadline)" | tee -a "$OUT/steps.log"; return; fi
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout -k 20 "$limit" "$@" 2>&1 | grep -v "^W0000\|^I0000\|Gloo" > "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  tail -n "${TAIL:-14}" "$OUT/$name.log"
  echo "== $name: rc $rc, $(( $(date +%s) - t0 ))s" | tee -a "$OUT/steps.log"
}

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__)"
} | tee "$OUT/gpu.txt"

if [ "$DRY" = 1 ]; then  # CPU smoke test of the split and CIFAR steps with tiny sizes
  SPLIT_N=1000; EPOCHS_BN=1; EPOCHS_ADV=1; TRAIN_SUB="--config.train_subset=200 --config.test_subset=100 --config.model=lenet"
  EVAL_N=16; AA="--config.evals.autoattack.apgd_steps=2 --config.evals.autoattack.fab_steps=2 --config.evals.autoattack.square_queries=4"
  SMALL="--config.evals.robustness.eps=(0.03,) --config.evals.robustness.pgd_steps=2 --config.evals.robustness.square_queries=0
  --config.evals.margins.steps=2 --config.evals.corruptions.severities=(1,)"
else
  SPLIT_N=50000; EPOCHS_BN=${EPOCHS_BN:-25}; EPOCHS_ADV=${EPOCHS_ADV:-20}; TRAIN_SUB=""
  EVAL_N=${EVAL_N:-500}; AA=""; SMALL=""
fi

# 1. split
step profile_split 60 $PY -m benchmarks.profile_split --n $SPLIT_N --out "$OUT/profile_split.md"
# 2. train step (bf16, batch 512): profile first, then the rows (with the split rows) vs torch.compile
[ "$DRY" = 1 ] || step profile_step 70 $PY -m benchmarks.profile_step --dtype bfloat16 --batch 512 --steps 3 --out "$OUT/profile_step.md"
[ "$DRY" = 1 ] || BENCH_TRAIN_DTYPE=bfloat16 step bench_split_train 130 $PY -m benchmarks --only split,train --out "$OUT/bench_split_train.md"
# 3. AutoAttack vs torchattacks
[ "$DRY" = 1 ] || step bench_autoattack 240 $PY -m benchmarks --only autoattack --out "$OUT/bench_autoattack.md"
# 4. CIFAR-10 subset runs for Table 2 (the natural model's rows are in docs/results.md already)
TRAIN="--config configs/cifar_resnet18.py --config.eval_batch_size=1000 --config.log_every_steps=1000 $TRAIN_SUB"
step train_bn 75 $PY -m hfcjax.main $TRAIN --workdir $RUNS/natural_bn --config.batch_norm=True --config.num_epochs=$EPOCHS_BN
step train_adv 110 $PY -m hfcjax.main $TRAIN --workdir $RUNS/adversarial --config.adversarial.enabled=True \
  --config.num_epochs=$EPOCHS_ADV
EVAL="--config.evaluation.rhos=(0.0,1.0) --config.evaluation.num_examples=$EVAL_N --config.evaluation.batch_size=500
  --config.evals.autoattack.enabled=True --config.evals.filtering.enabled=True --config.evals.phase.enabled=True
  --config.evals.gradients.enabled=True --config.evals.margins.enabled=True --config.evals.features.enabled=True
  --config.evals.corruptions.enabled=True $AA $SMALL"
TAIL=40 step eval_adv 180 $PY -m hfcjax.evaluate --workdir $RUNS/adversarial $EVAL
TAIL=40 step eval_bn 120 $PY -m hfcjax.evaluate --workdir $RUNS/natural_bn $EVAL
(cd $RUNS 2>/dev/null && tar czf "$OUT/cifar_runs.tgz" --exclude=checkpoints --exclude='*.lock' . 2>/dev/null)
echo "total: $(( $(date +%s) - START ))s"
cat "$OUT/steps.log"
