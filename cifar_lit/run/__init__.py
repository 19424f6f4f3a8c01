"""One `train.py` run: parsing the config, building the Trainer and its callbacks, resuming, stopping at the
target, and the exit codes."""
