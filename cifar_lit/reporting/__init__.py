"""What a run shows and leaves behind: history, summary, image grids, figures, provenance, inference on a
checkpoint and the evaluate.py command."""
