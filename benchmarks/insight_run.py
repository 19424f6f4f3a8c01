"""The pictures of the README's "see what the network sees": an LR range test and a short training run of the real
ResNet18 on the JPEG copy of CIFAR-10, on whatever device is given (the README's come from 2 CPU cores).

    python benchmarks/insight_run.py /path/to/cifar10-jpeg OUT [-- extra train.py flags]

1. `train.py --find-lr` (100 steps at batch 128) writes lr_find.png and lr_find.json;
2. `train.py --lr <its suggestion>` trains `--limit-train-batches 300` steps of one epoch at batch 128, then tests
   the best checkpoint, which writes the Grad-CAM grids;
3. the same training with the default --lr (0.2 per 256 images, the 85% recipe's), to check the suggestion against.
The record `insight-<device>-<date>.json` in OUT holds the commands, the commit, versions, the suggestion and the
accuracies of both runs; the pictures are copied into OUT.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

from cifar_lit.reporting.provenance import git_commit, shell_command, versions, write_record
from cifar_lit.run.train import RunResult, fit

FLAGS = ["--gpus", "0", "--batch-size", "128", "--no-progress-bar"]
PICTURES = ("gradcam_misclassified.png", "gradcam_correct.png", "misclassified.png", "model_summary.txt")


def run(argv: list[str]) -> tuple[float, RunResult]:
    """train.py `argv` through `cifar_lit.fit`, and its wall seconds."""
    start = time.perf_counter()
    result = fit(argv)
    if result.outcome not in ("finished", "lr_found"):
        sys.exit(f"train.py {' '.join(argv)} ended as {result.outcome}: {result.stop_reason}")
    return time.perf_counter() - start, result


def main() -> int:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    extra = [a for a in sys.argv[3:] if a != "--"]
    logdir = out / "logs"
    find = [*FLAGS, "--data-dir", str(data), "--logdir", str(logdir), "--find-lr", "--lr-find-steps", "100", *extra]
    find_seconds, found = run(find)
    suggested = found.suggested_lr
    train = [*FLAGS, "--data-dir", str(data), "--logdir", str(logdir), "--lr", f"{suggested:.3g}", "--max-epochs",
             "1", "--limit-train-batches", "300", "--sanity-val-steps", "0", *extra]
    train_seconds, _ = run(train)
    run_dir = logdir / "version_0"
    summary = json.loads((run_dir / "summary.json").read_text())
    default = [*train[: train.index("--lr")], *train[train.index("--lr") + 2 :]]  # the same, at the default --lr
    default_seconds, _ = run(default)
    default_summary = json.loads((logdir / "version_1" / "summary.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name in PICTURES:
        shutil.copy(run_dir / name, out / name)
    shutil.copy(logdir / "lr_find_0" / "lr_find.png", out / "lr_find.png")
    range_test = json.loads((logdir / "lr_find_0" / "lr_find.json").read_text())
    record = {
        "what": "LR range test, then 300 steps of the ResNet18 at batch 128 with the suggested LR, on the JPEG copy "
                "of CIFAR-10; Grad-CAM grids of the best checkpoint's test",
        "date": dt.date.today().isoformat(),
        "device": summary["device"],
        "commands": [shell_command("train.py", *command) for command in (find, train, default)],
        "git_commit": git_commit(),
        "versions": versions(),
        "lr_range_test": {key: range_test[key] for key in ("suggested_lr", "suggested_flag_lr", "lowest_loss_lr",
                                                            "lowest_loss", "guessing_loss", "lightning_suggestion",
                                                            "steps", "global_batch", "method", "smoothing")},
        "lr_range_test_wall_seconds": find_seconds,
        "training_wall_seconds": train_seconds,
        **{key: summary[key] for key in ("test_acc", "best_val_acc", "global_steps", "train_seconds",
                                          "images_per_second", "phase_seconds")},
        "default_lr_run": {"lr": default_summary["config"]["lr"], "training_wall_seconds": default_seconds,
                           **{key: default_summary[key] for key in ("test_acc", "best_val_acc", "global_steps",
                                                                     "train_seconds")}},
    }
    path = write_record(out, "insight", record)
    print(f"suggested --lr {suggested:.3g}: test accuracy {record['test_acc']:.4f}; default --lr "
          f"{record['default_lr_run']['lr']}: {record['default_lr_run']['test_acc']:.4f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
