"""Search the recipe across trials and machines: `python sweep.py --space configs/sweeps/fast85.yaml --trials 20`."""

import sys

from cifar_lit.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
