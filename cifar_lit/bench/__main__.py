"""`python -m cifar_lit.bench`: the time-to-accuracy benchmark (cifar_lit.bench.time_to_accuracy)."""

import sys

from cifar_lit.bench.time_to_accuracy import main

if __name__ == "__main__":
    sys.exit(main())
