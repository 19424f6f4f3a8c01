"""Train the CIFAR ResNet18 on CIFAR-10 until the target test accuracy: `python train.py --gpus 1`."""

import sys

from cifar_lit.run import main

if __name__ == "__main__":
    sys.exit(main())
