#!/usr/bin/env bash
# First look on the GPU: environment, GPU tests, the default 85% run, host syncs in the fast training loop,
# a profile of the training step, and fast85 recipe candidates (one seed each).
set -u
DATA=/tmp/cifar10-jpeg
log() { echo; echo "=== $* ($(date +%T))"; }
log environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, pytorch_lightning, torchmetrics, jsonargparse; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'tv', torchvision.__version__, 'pl', pytorch_lightning.__version__, 'tm', torchmetrics.__version__, 'jsonargparse', jsonargparse.__version__)"
log gpu tests
python3 -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_model.py 2>&1 | tail -2
log "default run: train.py --gpus 1"
python3 train.py --gpus 1 --data-dir $DATA --logdir /tmp/runs_default --no-progress-bar 2>&1 | grep -E "Target|Done|rror|Decod|warm" 
python3 benchmarks/show_summary.py /tmp/runs_default
log sync check of the fast loop, eager, one epoch
python3 benchmarks/sync_check.py --config configs/fast85.yaml --gpus 1 --data-dir $DATA --logdir /tmp/runs_sync --max-epochs 1 --no-compile --target-acc 1.0 2>&1 | grep -v "^\s*$" | tail -45
log profile of the bare step
python3 benchmarks/profile_step.py --data-dir $DATA --batch-sizes 512 256 1024 2>&1 | tail -42
python3 benchmarks/profile_step.py --data-dir $DATA --batch-sizes 512 --compile 2>&1 | grep -E "images/s|warm-up|GPU busy"
log fast85 as written, compiled, whole command timed
TIMEFORMAT='whole command %R s'
{ time python3 train.py --config configs/fast85.yaml --gpus 1 --data-dir $DATA --logdir /tmp/runs_fast85 > /tmp/fast85.log 2>&1 ; } 2>&1
grep -E "Target|Done|rror|Traceback" /tmp/fast85.log
python3 benchmarks/show_summary.py /tmp/runs_fast85
log recipe candidates, eager
run() { name=$1; shift; python3 train.py --config configs/fast85.yaml --gpus 1 --data-dir $DATA --logdir /tmp/runs_$name --no-compile "$@" > /tmp/$name.log 2>&1 || tail -5 /tmp/$name.log; python3 benchmarks/show_summary.py /tmp/runs_$name; }
run e5 --max-epochs 5
run e7 --max-epochs 7
run oc6 --schedule onecycle --label-smoothing 0.1
run b1024 --batch-size 1024 --lr 0.8 --max-epochs 7
run lr2 --lr 0.2
run b256 --batch-size 256 --lr 0.2 --max-epochs 5
log "second fast85 run, compiled, inductor cache warm"
{ time python3 train.py --config configs/fast85.yaml --gpus 1 --data-dir $DATA --logdir /tmp/runs_fast85b --seed 1 > /tmp/fast85b.log 2>&1 ; } 2>&1
grep -E "Target|Done|rror|Traceback" /tmp/fast85b.log; tail -3 /tmp/fast85b.log
python3 benchmarks/show_summary.py /tmp/runs_fast85b
tar czf "$OUT/runs.tar.gz" -C /tmp --exclude='*.ckpt' runs_default runs_fast85 runs_fast85b 2>/dev/null
log end
