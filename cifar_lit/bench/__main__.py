"""`python -m cifar_lit.bench`: the time-to-accuracy benchmark (cifar_lit.bench.time_to_accuracy)."""

import time

STARTED = time.perf_counter()  # before the imports below: the first run's wall counts them, as train.py's does

import sys  # noqa: E402

from cifar_lit.bench.time_to_accuracy import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started=STARTED))
