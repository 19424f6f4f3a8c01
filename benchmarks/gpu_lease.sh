#!/usr/bin/env bash
# The whole GPU measurement in one command on one H200 or H100, under the device's 10-minute limit per command:
#   bash benchmarks/gpu_lease.sh DATA OUT all # call 1 then call 2, each with its own budget (330 s and 220 s)
#   bash benchmarks/gpu_lease.sh DATA OUT 1   # fast85's cold seed, the bare PyTorch loop at the same settings, then
#                                             # the other fast85 seeds (one compile cache); GPU busy share of each
#   bash benchmarks/gpu_lease.sh DATA OUT 2   # the default run (train.py --gpus 1), the same with --precision
#                                             # 16-mixed (the T4/V100 path), evaluate.py on the default's best
# Why one command: a lease is 15 minutes of device time, the machine's start (a minute or more) included, and an
# idle machine goes back after 30 s. Two commands would pay a second start. Each call has its own budget, so a slow
# fast85 cannot starve the default run.
# DATA: the image folder (cifar10-jpeg/, train/ and test/) or a .tar.gz of it. OUT: results.jsonl and the logs.
# Then, back here: python benchmarks/lease_records.py OUT  (the records under benchmarks/results/, the README's rows).
#
# Every finished run appends one JSON object to OUT/results.jsonl at once; a run that fails or runs out of time
# appends one that says so. So a timeout or a crash keeps everything that finished. Each run has its own time
# limit, and no run starts once the call's budget is spent. The data is unpacked and decoded once per scratch folder.
#
# Environment:
#   PYTHON               the interpreter (default python3)
#   GPU_LEASE_WHEELS     a folder of wheels to install first, for packages the GPU machine lacks (no network there)
#   GPU_LEASE_WORK       scratch folder: unpacked data, compile cache, run folders (default /tmp/cifar_lit_lease)
#   GPU_LEASE_BUDGET     seconds one call may take (default 330 for call 1, 220 for call 2: 550 s for `all`)
#   GPU_LEASE_SEEDS      fast85 seeds (default 5)
#   GPU_LEASE_LIMIT      seconds every run may take, in place of each run's own limit (for trying the limits out)
#   GPU_LEASE_REHEARSE=1 both calls on the CPU through the same code, with tiny limits (width 8, a few steps, no
#                        compile), writing the same files: a dress rehearsal before the GPU window (a test runs it)
set -u
DATA=${1:?usage: gpu_lease.sh DATA OUT CALL}
OUT=${2:?usage: gpu_lease.sh DATA OUT CALL}
CALL=${3:?usage: gpu_lease.sh DATA OUT CALL (all, 1 or 2)}
case $CALL in
  all) bash "$0" "$DATA" "$OUT" 1; first=$?; bash "$0" "$DATA" "$OUT" 2; second=$?; exit $(( first ? first : second )) ;;
  1|2) ;;
  *) echo "error: CALL is '$CALL'; it must be all (both calls in one command), 1 (fast85 and the bare loop) or 2 (default, 16-mixed, evaluate.py)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
WORK=${GPU_LEASE_WORK:-/tmp/cifar_lit_lease}
DEFAULT_BUDGET=330 && [ "$CALL" = 2 ] && DEFAULT_BUDGET=220
BUDGET=${GPU_LEASE_BUDGET:-$DEFAULT_BUDGET}
SEEDS=${GPU_LEASE_SEEDS:-5}
REHEARSE=${GPU_LEASE_REHEARSE:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
START=$(date +%s)
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
LOG=$OUT/call$CALL.log
exec > >(tee -a "$LOG") 2>&1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$ROOT" || exit 2
say() { echo "=== $* ($(( $(date +%s) - START )) s)"; }

# Time limits per run, in seconds: the first fast85 seed compiles (cold), the others find its work on disk (warm).
if [ "$REHEARSE" = 1 ]; then
  FLAGS=(--gpus 0 --width 8 --batch-size 30 --eval-batch-size 50 --max-epochs 1 --limit-train-batches 2
         --no-compile --lr-reference-batch-size 30 --target-acc 0.2 --num-workers 0 --no-figures)
  COLD=240 WARM=240 BARE=240 DEFAULT=240 FP16=240 EVALUATE=240
else
  FLAGS=(--gpus 1)
  COLD=240 WARM=120 BARE=200 DEFAULT=300 FP16=300 EVALUATE=120
fi
if [ -n "${GPU_LEASE_LIMIT:-}" ]; then
  COLD=$GPU_LEASE_LIMIT WARM=$GPU_LEASE_LIMIT BARE=$GPU_LEASE_LIMIT DEFAULT=$GPU_LEASE_LIMIT FP16=$GPU_LEASE_LIMIT
  EVALUATE=$GPU_LEASE_LIMIT
fi

# One line in results.jsonl for a run that did not finish: its kind, seed, exit status and whether time ran out.
note_failure() {  # kind seed status limit
  "$PY" - "$RESULTS" "$@" <<'EOF'
import json, sys
path, kind, seed, status, limit = sys.argv[1:6]
line = {"kind": kind, "seed": None if seed == "-" else int(seed), "reached": None, "failed": True,
        "exit_status": int(status), "timed_out": status in ("124", "137"), "limit_seconds": int(limit)}
with open(path, "a") as handle:
    handle.write(json.dumps(line) + "\n")
EOF
}

# run_limited LIMIT KIND SEED COMMAND...: COMMAND under `timeout`, within what is left of the call's budget.
run_limited() {
  local limit=$1 kind=$2 seed=$3
  shift 3
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then
    say "skipped $kind (seed $seed): the call's budget is spent"
    note_failure "$kind" "$seed" 125 0
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$kind, seed $seed (at most $limit s)"
  timeout -k 10 "$limit" "$@"
  local status=$?
  if [ $status -ne 0 ]; then
    say "$kind, seed $seed: exit $status"
    note_failure "$kind" "$seed" $status "$limit"
  fi
}

# Packages the GPU machine lacks, installed from wheels into the scratch folder (nothing system-wide). Once per
# scratch folder and set of wheels: call 2 of `all` finds them installed.
WHEELS=${GPU_LEASE_WHEELS:-}
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  wheels=$(cd "$WHEELS" && ls -l ./*.whl)
  if [ "$wheels" = "$(cat "$WORK/site/.installed" 2>/dev/null)" ]; then
    say "the wheels in $WHEELS are installed already"
  else
    say "installing the wheels in $WHEELS"
    rm -rf "$WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
      || { echo "error: installing the wheels in $WHEELS failed" >&2; exit 2; }
    echo "$wheels" > "$WORK/site/.installed"
  fi
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

# The data: a folder as it is, or the archive unpacked once into the scratch folder; then decoded into its cache.
if [ -d "$DATA" ]; then
  FOLDER=$(cd "$DATA" && pwd)
elif [ -f "$DATA" ]; then
  if [ ! -f "$WORK/data/.unpacked" ]; then
    say "unpacking $DATA"
    rm -rf "$WORK/data" "$WORK/decoded" && mkdir -p "$WORK/data" && tar xzf "$DATA" -C "$WORK/data" \
      && touch "$WORK/data/.unpacked" || { echo "error: could not unpack $DATA into $WORK/data" >&2; exit 2; }
  fi
  FOLDER=$(dirname "$(find "$WORK/data" -maxdepth 3 -type d -name train | head -1)")
else
  echo "error: the data $DATA is neither a folder nor a file; give the image folder or its .tar.gz" >&2
  exit 2
fi
if [ ! -d "$FOLDER/train" ] || [ ! -d "$FOLDER/test" ]; then
  echo "error: no train/ and test/ folders in $DATA; give the image folder (cifar10-jpeg) or its .tar.gz" >&2
  exit 2
fi
if [ "$REHEARSE" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
# The versions, then the data decoded into its cache: one interpreter, as each start costs seconds of imports.
# Once per scratch folder and data folder: call 2 on the machine that ran call 1 finds the cache and skips that
# start (every run's record names the versions too).
DECODED=$WORK/decoded
if [ "$(cat "$DECODED" 2>/dev/null)" = "$FOLDER" ]; then
  say "$FOLDER is decoded already"
else
  say "decoding $FOLDER into its cache"
  "$PY" - "$FOLDER" <<'EOF' || { echo "error: the data in $FOLDER could not be read" >&2; exit 2; }
import sys
import pytorch_lightning as pl
import torch
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.options import DataOptions
print("torch", torch.__version__, "cuda", torch.version.cuda, "lightning", pl.__version__, flush=True)
ImageDataModule(DataOptions(data_dir=sys.argv[1], download=False)).prepare_data()
EOF
  echo "$FOLDER" > "$DECODED"
fi
BENCH=("$PY" -m cifar_lit.bench --data-dir "$FOLDER" --jsonl "$RESULTS" --runs-dir "$WORK/runs" --out "$WORK/records"
       --log "$OUT/train$CALL.log" --compile-cache "$WORK/compile-cache" --pil-epochs 0)

if [ "$CALL" = 1 ]; then
  rm -rf "$WORK/compile-cache"  # the first seed starts cold, the others find its work in the cache
  fast85() {  # seed limit
    run_limited "$2" fast85 "$1" "${BENCH[@]}" --preset fast85 --kind fast85 --seeds 1 --first-seed "$1" --no-bare \
      -- "${FLAGS[@]}"
  }
  fast85 0 "$COLD"
  # The bare loop next: with seed 0 it gives the Lightning / bare ratio, even if the budget ends the other seeds.
  run_limited "$BARE" bare 0 "${BENCH[@]}" --preset fast85 --seeds 0 --first-seed 0 -- "${FLAGS[@]}"
  for seed in $(seq 1 $(( SEEDS - 1 ))); do
    fast85 "$seed" "$WARM"
  done
else
  run_limited "$DEFAULT" default 0 "${BENCH[@]}" --preset default --kind default --seeds 1 --no-bare -- "${FLAGS[@]}"
  run_limited "$FP16" fp16 0 "${BENCH[@]}" --preset default --kind fp16 --seeds 1 --no-bare -- "${FLAGS[@]}" \
    --precision 16-mixed
  best=$(ls "$WORK"/runs/default-seed0/version_*/checkpoints/best-*.ckpt 2>/dev/null | head -1)
  if [ -n "$best" ]; then
    gpus=1 && [ "$REHEARSE" = 1 ] && gpus=0
    rm -rf "$WORK/report"
    began=$(date +%s.%N)
    run_limited "$EVALUATE" evaluate 0 "$PY" evaluate.py --ckpt "$best" --data-dir "$FOLDER" --gpus "$gpus" --tta \
      --out "$WORK/report"
    if [ -f "$WORK/report/metrics.json" ]; then  # evaluate.py's numbers as one line
      "$PY" - "$RESULTS" "$WORK/report/metrics.json" "$began" <<'EOF'
import json, sys, time
path, metrics_path, began = sys.argv[1], sys.argv[2], float(sys.argv[3])
metrics = json.loads(open(metrics_path).read())
line = {"kind": "evaluate", "seed": 0, "reached": None, "train_seconds": None, "wall_seconds": time.time() - began,
        "epochs": None, "test_acc": metrics["accuracy"], "images_per_second": None, "gpu_busy": None,
        **{key: value for key, value in metrics.items() if key != "confusion_matrix"}}
with open(path, "a") as handle:
    handle.write(json.dumps(line) + "\n")
EOF
    fi
  else
    say "no best checkpoint of the default run: evaluate.py skipped"
    note_failure evaluate 0 1 0
  fi
fi
say "call $CALL done; $(wc -l < "$RESULTS") line(s) in $RESULTS"
