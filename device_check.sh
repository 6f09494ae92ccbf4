#!/usr/bin/env bash
# The GPU checks in one command, for a freshly started CUDA machine with this repository on it (Python 3.12,
# torch preinstalled, no package registry). Everything it writes goes to one folder, at most 8 files:
#
#   bash device_check.sh                                  # writes device_check_out/
#   OUT=/path/to/folder PYTHON=python3 bash device_check.sh
#   DEVICE_CHECK_DRY=1 bash device_check.sh               # print the commands only (tests/test_bench_gpu.py parses them)
#
# Steps, each under `timeout` and all within DEVICE_CHECK_SECONDS (default 570) so one hang cannot eat the
# rest: wheels carried in .whl/ (PyAV, zlib-ng, imagecorruptions-imaug; BENCHMARKS.md says which and how to
# download them) installed into /tmp/site; nvidia-smi and versions; `bench.py --gpu --minutes 4`; a 2-epoch
# bf16 training of each model kind on the synthetic set with the notebook recipe (DeepLabV3 R50 OS8, batch 30,
# crop 224); a small corruption sweep of the three checkpoints. A failing step is recorded and the next runs;
# the exit status is non-zero if any step failed.
#
# Output folder: nvidia-smi.txt, env.txt, bench.jsonl (one JSON line per bench group, written as each ends),
# bench.log, train.log (the three trainings' output and their log.jsonl lines), sweep.log, metrics.jsonl (the
# sweep's rows), status.txt (each step's exit status and seconds). Checkpoints, the synthetic dataset and the
# sweep's arrays stay in DEVICE_CHECK_WORK (default /tmp/device_check).
set -uo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
OUT=${OUT:-device_check_out}
WORK=${DEVICE_CHECK_WORK:-/tmp/device_check}
DRY=${DEVICE_CHECK_DRY:-}
BUDGET=${DEVICE_CHECK_SECONDS:-570}
export PYTHONUNBUFFERED=1
START=$(date +%s)
FAILED=0

if [ -z "$DRY" ]; then
  # A rerun starts its trainings and sweep afresh (train.py refuses to overwrite a checkpoint); the synthetic
  # dataset is kept.
  rm -rf "$WORK/train" "$WORK/results"
  mkdir -p "$OUT" "$WORK"
  : > "$OUT/status.txt"
fi

# step NAME SECONDS LOG COMMAND...: run COMMAND under `timeout`, at most SECONDS and never past the budget,
# appending its output to LOG; record its exit status. With DEVICE_CHECK_DRY set, print it instead.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  if [ -n "$DRY" ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
    return 0
  fi
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 15 ]; then
    echo "$name skipped: budget spent" | tee -a "$OUT/status.txt"
    FAILED=1
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$(date +%s) rc=0
  echo "=== $name (limit ${limit}s, $(date -u +%H:%M:%S))" | tee -a "$log"
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1 || rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))$([ $rc -eq 124 ] && echo ' (timed out)')" \
    | tee -a "$OUT/status.txt"
  [ $rc -ne 0 ] && FAILED=1
  return 0
}

# Wheels for what the GPU image lacks (PyAV for the video group, zlib-ng for the dump's PNG encoder,
# imagecorruptions-imaug for every corruption), installed without a registry.
if [ -z "$DRY" ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step nvidia-smi 30 "$OUT/nvidia-smi.txt" nvidia-smi
step versions 60 "$OUT/env.txt" "$PYTHON" -c "import sys, torch, importlib.metadata as md; print(sys.version); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); \
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else None); \
[print(n, next((d.version for d in md.distributions(name=n)), 'missing')) for n in ('torchvision', 'numpy', \
'Pillow', 'opencv-python-headless', 'scipy', 'scikit-image', 'numba', 'av', 'zlib-ng', 'imagecorruptions-imaug')]"

# The benchmark: its GPU groups first; --minutes skips what no longer fits, and each finished group's line is
# already in bench.jsonl if the timeout stops it.
step bench 290 "$OUT/bench.log" "$PYTHON" bench.py --gpu --minutes 4 --out "$OUT/bench.jsonl" --root "$WORK/bench"

# Two epochs of each model on the synthetic set (600 training images, 100 val): the notebook recipe as
# train.py defaults to it, in bf16. Each well under a minute on one H100/H200.
for model in baseline ibe scribe; do
  step "train $model" 70 "$OUT/train.log" "$PYTHON" train.py --model "$model" --data synthetic \
    --synthetic-root "$WORK/synthetic" --amp bf16 --epochs 2 --workers 8 --out "$WORK/train"
  [ -z "$DRY" ] && [ -f "$WORK/train/$model/log.jsonl" ] \
    && sed "s/^/$model log.jsonl: /" "$WORK/train/$model/log.jsonl" >> "$OUT/train.log"
done

# A small sweep of the three final checkpoints: clean and four corruptions (one of the slow four) at three
# severities on 40 val images, bf16, the corruptions on 8 loader workers.
step sweep 75 "$OUT/sweep.log" "$PYTHON" evaluate_corruptions.py \
  --checkpoints "$WORK/train/baseline/checkpoint.pt" "$WORK/train/ibe/checkpoint.pt" "$WORK/train/scribe/checkpoint.pt" \
  --data synthetic --synthetic-root "$WORK/synthetic" --corruptions gaussian_noise defocus_blur zoom_blur contrast \
  --severities 0 1 3 5 --limit 40 --batch-size 20 --amp bf16 --workers 8 --out "$WORK/results"
[ -z "$DRY" ] && [ -f "$WORK/results/metrics.jsonl" ] && cp "$WORK/results/metrics.jsonl" "$OUT/metrics.jsonl"

[ -z "$DRY" ] && echo "device_check: $(( $(date +%s) - START ))s in all; files in $OUT" | tee -a "$OUT/status.txt"
exit $FAILED
