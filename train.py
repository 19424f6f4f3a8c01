"""Train the CIFAR ResNet18 on CIFAR-10 until the target test accuracy: `python train.py --gpus 1`."""

import time

STARTED = time.perf_counter()  # before the imports below, so the run's startup phase includes them

import sys  # noqa: E402

from cifar_lit.run.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started=STARTED))
