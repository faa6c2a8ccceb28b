#!/usr/bin/env bash
# Runs benchmarks/gpu_train_step.py on a one-GPU machine that has CUDA JAX but not this project's install (the
# workplace's H200 image: jax 0.11.2 with its CUDA 13 plugin, Python 3.12). Wheels carried in .whl/ (pydantic and
# its parts, and the project's pinned flax/optax/orbax) go first on PYTHONPATH; if the pinned flax cannot import
# beside that JAX, the image's own flax/optax/orbax are used and the JSON says so.
#   bash benchmarks/gpu_run.sh [extra gpu_train_step.py args]     (results in $OUT, else benchmarks/results/)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
PY=python3
SITE=/tmp/clipa-site
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE:$PWD"
if ! "$PY" -c "import flax, optax, orbax.checkpoint, pydantic; from trainer import loop" 2>"$OUT/import_pinned.txt"; then
  echo "pinned flax/optax/orbax do not import here (see import_pinned.txt); using the image's" | tee -a "$OUT/import_pinned.txt"
  rm -rf "$SITE"/flax* "$SITE"/optax* "$SITE"/orbax*
fi
"$PY" -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_train_step.py --out "$OUT/gpu_train_step.json" "$@" 2>&1 | tee "$OUT/gpu_train_step.log"
