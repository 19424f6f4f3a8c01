"""A SIGTERM in every phase of a run: exit 128 + 15, one line saying what is on disk and the exact command that
carries on, last.ckpt either absent, untouched or holding exactly the state it names, and that command finishing
the run (tested and summarised).

The run signals itself the moment it enters the phase, in this process: Python runs a signal's handler in the main
thread between two bytecodes, wherever the signal came from, so this is what a SIGTERM from outside does there.
(tests/test_faults.py sends real ones from outside, to a train.py process.)"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from helpers import on_entering

from cifar_lit import phases
from cifar_lit.reliability import checkpoints
from cifar_lit.run.train import main

SHORT = ["--width", "8", "--target-acc", "1.0", "--max-epochs", "2"]
STEPS = 20  # 2 epochs of 10 steps

# phase held -> (HOLD_AFTER, extra flags, global step of last.ckpt after the stop, or None when nothing is saved)
CASES = {
    "startup": (None, [], None),
    "data": (None, [], None),
    "warmup": (None, ["--compile"], None),
    "train": (None, [], 1),  # entered at the first step: the stop comes after it
    "validation": (None, [], 11),  # epoch 1's validation: the stop comes after the next step
    "checkpoints": ("validation", [], 11),  # epoch 1's checkpoint write, at the end of its validation
    "test": (None, [], STEPS),
    "reports": ("test", [], STEPS),  # the summary and test figures, after the test
}


def signalled_run(phase: str, flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """train.py that sends itself SIGTERM the first time it enters `phase` (after HOLD_AFTER, if set); its exit
    status and standard error."""
    after, extra, _ = CASES[phase]

    def signal_itself(name: str) -> None:
        print(f"entered {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(phases.PhaseClock, "__init__", on_entering(phase, after, signal_itself))
        code = main([*flags, *SHORT, *extra, "--compile-cache", str(tmp_path / "compile-cache")])
    return code, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(CASES))
def test_a_signal_in_any_phase_ends_well_and_resumes(phase, noisy_flags, tmp_path, capsys, quick_compile):
    logdir = tmp_path / "logs"
    code, err = signalled_run(phase, noisy_flags, tmp_path, capsys)
    assert f"entered {phase}" in err, err
    assert code == 128 + signal.SIGTERM, err
    (line,) = [line for line in err.splitlines() if line.startswith("Stopped by signal 15")]
    step = CASES[phase][2]
    runs = sorted(logdir.glob("version_*"))
    if step is None:
        assert runs == [], "a run stopped before training leaves no folder behind"
        assert "nothing was written" in line and "Run again with: python train.py" in line
        return
    (run_dir,) = runs
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = f"Resume with: python train.py --resume {last}"
    assert line.endswith(resume) or f"{resume} (it runs the test" in line
    assert checkpoints.load_checkpoint(last)["global_step"] == step
    assert not (run_dir / "summary.json").exists()
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "no half-written checkpoint is left"

    assert main(["--resume", str(last)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["global_steps"] == STEPS and summary["test_acc"] is not None
    assert summary["total_seconds"] >= summary["train_seconds"] > 0
    assert summary["process"]["total_seconds"] < summary["total_seconds"]
