#!/usr/bin/env bash
# hfcjax's two commands on a fresh machine:
#   ./run.sh          creates/refreshes .venv, then trains a small real job and writes metrics + figures
#   ./run.sh test     creates/refreshes .venv (with test extras), then runs the test suite
# Any further arguments after `test` go to pytest; after nothing/`train`, to hfcjax.main.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${HFCJAX_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
  local extras="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.hfcjax-installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # uv installs (downloads and unpacks in parallel): a fresh install of the test extras took
    # 92 s with pip, 16 s with uv (docs/benchmarks.md). Where pip is told of a folder of local
    # wheels (PIP_FIND_LINKS: CI's machines keep the CPU build of torch there), uv is told too.
    # uv writes no bytecode: Python writes it as modules are first imported (below).
    "$VENV/bin/python" -m pip install -q uv
    local links=()
    if [ -n "${PIP_FIND_LINKS:-}" ]; then links=(--find-links "$PIP_FIND_LINKS"); fi
    local uv=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "${links[@]}")
    "${uv[@]}" -e ".[${extras}]"
    # The frost pictures of CIFAR-10-C's frost corruption (hfcjax/corruptions.py reads the package's
    # data only): without its dependencies, which are OpenCV and scikit-image, neither used here.
    "${uv[@]}" --no-deps "imagecorruptions==1.1.2"
    if [ "$extras" = test ]; then
      # The AutoAttack parity test's reference. Without its dependency pins (requests~=2.25 would
      # downgrade requests); what it imports (torch, numpy, scipy) is already installed.
      "${uv[@]}" --no-deps "torchattacks==3.5.1"
    fi
    touch "$stamp"
  fi
}

# Real offline data: ../shared/data when it exists and nothing else was said.
if [ -z "${HFCJAX_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export HFCJAX_DATA_DIR="$(cd ../shared/data && pwd)"
fi

# The venv's bytecode is written as modules are first imported (uv installs none): where the
# environment sets PYTHONDONTWRITEBYTECODE, every process would compile jax, flax, torch... again
# (an import of hfcjax.train: 8 s instead of 4; the suite: 913 s instead of 628 on CI).
unset PYTHONDONTWRITEBYTECODE

# Huge pages for XLA:CPU's large buffers (see hfcjax/backend.py); an explicit GLIBC_TUNABLES, even empty, wins.
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"

cmd="${1:-train}"
WORKDIR="${WORKDIR:-runs/fashion_mnist_cnn}"  # ./run.sh's run: trained by train, read by evaluate
case "$cmd" in
  test)
    shift
    setup test
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  train)
    [ $# -gt 0 ] && shift
    setup test
    echo "hfcjax: training the MNIST CNN on Fashion-MNIST (data: ${HFCJAX_DATA_DIR:-the published files, downloaded once into ${HFCJAX_CACHE_DIR:-~/.cache/hfcjax}}) into $WORKDIR"
    "$VENV/bin/python" -m hfcjax.main --config configs/fashion_mnist_cnn.py --workdir "$WORKDIR" "$@"
    if "$VENV/bin/python" -c "from hfcjax import data; data.load('cifar10', 'test', source='files')" 2>/dev/null; then
      "$VENV/bin/python" -m hfcjax.plots --dataset cifar10 --out "$WORKDIR/figures/cifar10_split_examples.png"
    fi
    echo "hfcjax: metrics in $WORKDIR/metrics.jsonl, figures in $WORKDIR/figures/, checkpoints in $WORKDIR/checkpoints/"
    echo "hfcjax: evaluate with: ./run.sh evaluate [--config.evals.NAME.enabled=True ...]  (same data and workdir)"
    ;;
  evaluate)
    # The evaluation of ./run.sh's run, with the same data directory and workdir; any evaluate flag after it.
    shift
    setup test
    exec "$VENV/bin/python" -m hfcjax.evaluate --workdir "$WORKDIR" "$@"
    ;;
  *)
    echo "usage: ./run.sh [train [--config.KEY=VALUE ...]] | ./run.sh evaluate [evaluate flags] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
