"""Evaluate a checkpoint into a report folder, classify your own images, or compare runs (see --help)."""

import sys

from cifar_lit.reporting.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
