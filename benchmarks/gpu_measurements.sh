#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in one command, on the shared JPEG copy of CIFAR-10:
#   bash benchmarks/gpu_measurements.sh /path/to/cifar10-jpeg OUTDIR
# 1. environment and the GPU-only tests; 2. host syncs left in the fast training loop; 3. a profile of the bare
# training step (eager and compiled); 4. the default 85% run (configs/default.yaml) with its report;
# 5. the fast85 benchmark: 5 seeds + bare PyTorch loop + PIL data path; 6. best.yaml, 3 seeds.
# Results land in benchmarks/results/ (commit them) and OUTDIR (logs, run folders without checkpoints).
set -u
DATA=${1:?data folder}
OUT=${2:?output folder}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
log() { echo; echo "=== $* ($(date +%T))"; }
TIMEFORMAT='whole command %R s'

log environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision, pytorch_lightning, torchmetrics; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'tv', torchvision.__version__, 'pl', pytorch_lightning.__version__, 'tm', torchmetrics.__version__)"
log GPU tests
$PY -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_model.py 2>&1 | tail -2
log data path on the GPU
$PY benchmarks/data_path.py --data-dir "$DATA" --device cuda --workers 8 16
log host syncs in the fast loop, one eager epoch
$PY benchmarks/sync_check.py --config configs/fast85.yaml --gpus 1 --data-dir "$DATA" --logdir "$OUT/runs_sync" --max-epochs 1 --no-compile --target-acc 1.0 2>&1 | grep -v "^\s*$" | tail -40
log profile of the bare training step
$PY benchmarks/profile_step.py --data-dir "$DATA" --batch-sizes 512 256 1024 2>&1 | tail -42
$PY benchmarks/profile_step.py --data-dir "$DATA" --batch-sizes 512 --compile 2>&1 | grep -E "images/s|warm-up|GPU busy"
log "default 85% run: python train.py --gpus 1"
{ time $PY train.py --gpus 1 --data-dir "$DATA" --logdir "$OUT/runs_default" --no-progress-bar > "$OUT/default.log" 2>&1 ; } 2>&1
grep -E "Target|Done|rror" "$OUT/default.log"
$PY benchmarks/show_summary.py "$OUT/runs_default"
$PY evaluate.py --ckpt "$(ls "$OUT"/runs_default/version_0/checkpoints/best-*.ckpt)" --data-dir "$DATA" --tta
log fast85 benchmark
$PY -m cifar_lit.bench --preset fast85 --seeds 5 --data-dir "$DATA" --pil-workers 16 --log "$OUT/bench_fast85.log" -- --gpus 1
log best.yaml, 3 seeds
$PY -m cifar_lit.bench --preset best --seeds 3 --data-dir "$DATA" --no-bare --pil-epochs 0 --log "$OUT/bench_best.log" -- --gpus 1
tar czf "$OUT/runs.tar.gz" -C "$OUT" --exclude='*.ckpt' runs_default
log end
