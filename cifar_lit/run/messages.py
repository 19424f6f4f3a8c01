"""What a user reads when a run ends early: which save holds what, and the command that carries on (quoted for the
shell, so a path with a space pastes as one word)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cifar_lit.reliability.checkpoints import CHECKPOINT_FOLDER, LAST_NAME
from cifar_lit.reliability.non_finite import NonFiniteLoss
from cifar_lit.reliability.signals import Interrupted
from cifar_lit.reporting.provenance import command_line, shell_command


def stopped_in_training(signum: int, *, epoch: int, step: int, saved: str | None, logdir: str) -> str:
    """A signal in the training loop: the run stopped at a step boundary and saved last.ckpt there."""
    resume = [saved] if saved else ["last", "--logdir", logdir]
    return (f"Stopped by signal {signum} at epoch {epoch}, step {step}; saved {saved}. Resume with: "
            f"{shell_command('train.py', '--resume', *resume)}")


def stopped_before_the_test(signum: int, last: Path, epoch: int, step: int) -> str:
    """A signal after the last training step: the finished training is saved, the test has not run."""
    return (f"Stopped by signal {signum} after the last training step, before the test; {last} holds the finished "
            f"training (epoch {epoch}, step {step}). Resume with: {shell_command('train.py', '--resume', last)} (it "
            "runs the test and writes the summary)")


def interrupted(stop: Interrupted, argv: Sequence[str]) -> str:
    """The line for a signal that stopped the run at once: what is on disk, and the command that carries on."""
    where = f"during {stop.phase}" if stop.phase else "at start-up"
    last = stop.run_dir / CHECKPOINT_FOLDER / LAST_NAME if stop.run_dir is not None else None
    if last is None or not last.is_file():
        return (f"Stopped by signal {stop.signum} {where}, before any training was saved; nothing was written. "
                f"Run again with: {command_line(list(argv), 'train.py')}")
    finished = stop.phase in ("test", "reports")
    state = "holds the finished training" if finished else "holds the last complete save"
    then = " (it runs the test and writes the summary)" if finished else ""
    return (f"Stopped by signal {stop.signum} {where}; {last} {state}. "
            f"Resume with: {shell_command('train.py', '--resume', last)}{then}")


def non_finite_loss(bad: NonFiniteLoss, run_dir: Path | None) -> str:
    """The error for a NaN or infinite loss: where it happened and what is left to start from."""
    last = run_dir / CHECKPOINT_FOLDER / LAST_NAME if run_dir else None
    if last is not None and last.is_file():
        then = (f"the last good checkpoint is {last}. Start again with a lower --lr (a resume keeps the optimizer's "
                f"LR), or, if half precision overflowed, resume with: "
                f"{shell_command('train.py', '--resume', last, '--precision', '32-true')}")
    else:
        then = ("no checkpoint had been written, so there is nothing to resume and the run folder was removed. Run "
                "again with a lower --lr, or with --precision 32-true")
    return (f"error: the training loss became NaN or infinite at step {bad.step} (epoch {bad.epoch + 1}); training "
            f"stopped there and nothing was saved after it: {then}.")
