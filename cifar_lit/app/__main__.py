"""`python -m cifar_lit.app --ckpt CKPT [--data-dir DIR] [--port N] [--share]`: the web demo of a checkpoint on
127.0.0.1. The checkpoint is read by the project's safe loader and refused with evaluate.py's messages; the page's
example images and its gallery of misclassified test images come from --data-dir (default: the data folder of the
checkpoint's run, when it is there)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cifar_lit.app.demo import Bundle, build_demo, launch
from cifar_lit.hardware.plan import single_device
from cifar_lit.reliability.checkpoints import checkpoint_file
from cifar_lit.reliability.errors import UserError
from cifar_lit.reporting.evaluate import evaluation_split, run_config
from cifar_lit.reporting.export_app import write_bundle
from cifar_lit.reporting.inference import load_trained_model

DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cifar_lit.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by train.py")
    parser.add_argument("--data-dir", type=Path, help="data set for the examples and the misclassified gallery")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also a public gradio.live link (needs the internet)")
    parser.add_argument("--gpus", type=int, default=None, help="0 for the CPU (default: a GPU when available)")
    return parser


def prepare(args: argparse.Namespace, folder: Path) -> Bundle:
    device = single_device(args.gpus)
    model = load_trained_model(checkpoint_file(args.ckpt, resuming=False), device)
    recorded = run_config(args.ckpt).get("data_dir")
    data_dir = args.data_dir or (Path(str(recorded)).expanduser() if recorded else None)
    test = evaluation_split(model, data_dir) if data_dir is not None and data_dir.exists() else None
    write_bundle(folder, args.ckpt, test, device, model)
    return Bundle.load(folder)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory(prefix="cifar_lit_app_") as folder:
        try:
            bundle = prepare(args, Path(folder))
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        demo = build_demo(bundle, single_device(args.gpus))
        launch(demo, server_name="127.0.0.1", server_port=args.port, share=args.share, allowed_paths=[folder])
    return 0


if __name__ == "__main__":
    sys.exit(main())
