#!/usr/bin/env bash
# Every GPU measurement the issues ask for, on the shared JPEG copy of CIFAR-10:
#   bash benchmarks/gpu_measurements.sh /path/to/cifar10-jpeg OUTDIR [STAGE...]
# Stages (all, in this order, when none is named; name some to split the work across commands of limited length):
#   env      versions, the GPU and the GPU-only tests
#   profile  the bare training step: eager at batch 256/512/1024, compiled in each --compile-mode, top kernels
#   sync     host syncs left in Lightning's training loop (fast85, compiled); framework overhead per step (host CPU)
#   default  the default 85% run (python train.py --gpus 1), its report, evaluate.py with TTA
#   fast85   the fast85 bench: 5 seeds sharing one compile cache (cold first, then warm) + bare loop + PIL path
#   best     best.yaml, 3 seeds
# Records land in benchmarks/results/ (commit them); logs and run folders (without checkpoints) in OUTDIR.
set -u
DATA=${1:?data folder}
OUT=${2:?output folder}
shift 2
STAGES=${*:-env profile sync default fast85 best}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
log() { echo; echo "=== $* ($(date +%T))"; }
TIMEFORMAT='whole command %R s'

for stage in $STAGES; do
  case $stage in
  env)
    log environment
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import torch, torchvision, pytorch_lightning, torchmetrics; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'tv', torchvision.__version__, 'pl', pytorch_lightning.__version__, 'tm', torchmetrics.__version__)"
    log GPU tests
    $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_augment.py tests/test_model.py 2>&1 | tail -3
    log data path on the GPU
    $PY benchmarks/data_path.py --data-dir "$DATA" --device cuda --workers 8 16
    $PY benchmarks/data_path.py --data-dir "$DATA" --device cuda --workers 16 --compile
    ;;
  profile)
    log profile of the bare training step, eager
    $PY benchmarks/profile_step.py --data-dir "$DATA" --batch-sizes 512 256 1024 2>&1 | tail -42
    for mode in default max-autotune-no-cudagraphs reduce-overhead; do
      log profile of the bare training step, compiled, mode $mode
      $PY benchmarks/profile_step.py --data-dir "$DATA" --batch-sizes 512 1024 --compile --mode $mode 2>&1 | grep -E "images/s|warm-up|GPU busy"
    done
    ;;
  sync)
    log host syncs in the fast loop, compiled, one epoch
    $PY benchmarks/sync_check.py --config configs/fast85.yaml --gpus 1 --data-dir "$DATA" --logdir "$OUT/runs_sync" --max-epochs 1 --target-acc 1.0 2>&1 | grep -v "^\s*$" | tail -40
    log "framework overhead per step on this machine's CPU, Lightning vs bare (tiny network)"
    $PY benchmarks/framework_overhead.py --repeats 5 --label gpu-host 2>&1 | tail -5
    ;;
  default)
    log "default 85% run: python train.py --gpus 1"
    { time $PY train.py --gpus 1 --data-dir "$DATA" --logdir "$OUT/runs_default" --no-progress-bar > "$OUT/default.log" 2>&1 ; } 2>&1
    grep -E "Target|Done|rror" "$OUT/default.log"
    $PY benchmarks/show_summary.py "$OUT/runs_default"
    $PY evaluate.py --ckpt "$(ls "$OUT"/runs_default/version_0/checkpoints/best-*.ckpt)" --data-dir "$DATA" --tta
    tar czf "$OUT/runs_default.tar.gz" -C "$OUT" --exclude='*.ckpt' runs_default
    ;;
  fast85)
    log fast85 benchmark
    $PY -m cifar_lit.bench --preset fast85 --seeds 5 --data-dir "$DATA" --pil-workers 16 --log "$OUT/bench_fast85.log" -- --gpus 1
    ;;
  best)
    log best.yaml, 3 seeds
    $PY -m cifar_lit.bench --preset best --seeds 3 --data-dir "$DATA" --no-bare --pil-epochs 0 --log "$OUT/bench_best.log" -- --gpus 1
    ;;
  *) echo "error: unknown stage '$stage'; the stages are env profile sync default fast85 best" >&2; exit 2 ;;
  esac
done
log end
