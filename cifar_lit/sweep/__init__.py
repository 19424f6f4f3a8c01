"""Sweeps: many runs of the recipe as one Optuna study (the space file, the study's storage, each trial a normal
run, pruning, the report). `python sweep.py` is the command."""
