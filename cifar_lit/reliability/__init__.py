"""Fault handling and bad input: signals, checkpoint IO and safe loading, checkpoint callbacks, the non-finite
loss guard, full disks, atomic files, the run folder, option ranges and the user-error types. Change these only
with their tests (docs/reliability.md lists them)."""
