"""Measuring: the time-to-accuracy benchmark (`python -m cifar_lit.bench`), the bare PyTorch loop it compares
with, and the host-sync counter."""
