"""The web demo of a trained checkpoint (`python -m cifar_lit.app --ckpt CKPT`): demo.py is the page and runs on
its own; the package builds its bundle from a checkpoint (reporting/export_app.py)."""
