"""`python -m cifar_lit.app --ckpt CKPT [--data-dir DIR] [--port N] [--share]`: the web demo of a checkpoint on
127.0.0.1. The checkpoint is read by the project's safe loader and refused with evaluate.py's messages; the page's
example images and its gallery of misclassified test images come from --data-dir (default: the data folder of the
checkpoint's run, when it is there)."""

from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cifar_lit.reliability.errors import UserError

if TYPE_CHECKING:
    import torch

    from cifar_lit.app.demo import Bundle

DEFAULT_PORT = 7860
HOST = "127.0.0.1"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one `error:` line and exit 2, as every command of the project
        raise UserError(f"{message}. Run `python -m cifar_lit.app --help` for the accepted flags.")


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port: give a number from 1 to 65535 (e.g. {DEFAULT_PORT})")
    return int(text)


def check_port_free(port: int) -> None:
    """Bind the port once and let it go: a port another program holds is refused now, in one line, instead of by
    Gradio after the model is loaded."""
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as error:
            taken = error.errno in (errno.EADDRINUSE, errno.EACCES)
            why = "is in use by another program (another demo?)" if taken else f"cannot be opened ({error.strerror})"
            raise UserError(f"port {port} on {HOST} {why}. Give another with --port, e.g. --port {port + 1}, or "
                            "stop the program that holds it.") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m cifar_lit.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by train.py")
    parser.add_argument("--data-dir", type=Path, help="data set for the examples and the misclassified gallery")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"port on {HOST} (default {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also a public gradio.live link (needs the internet)")
    parser.add_argument("--gpus", type=int, default=None, help="0 for the CPU (default: a GPU when available)")
    return parser


def prepare(args: argparse.Namespace, folder: Path, device: torch.device) -> Bundle:
    from cifar_lit.app.demo import Bundle
    from cifar_lit.reliability.checkpoints import checkpoint_file
    from cifar_lit.reporting.evaluate import evaluation_split, recorded_data_dir
    from cifar_lit.reporting.export_app import write_bundle
    from cifar_lit.reporting.inference import load_trained_model

    model = load_trained_model(checkpoint_file(args.ckpt, resuming=False), device)
    data_dir = args.data_dir or recorded_data_dir(args.ckpt)
    test = evaluation_split(model, data_dir) if data_dir is not None and data_dir.exists() else None
    write_bundle(folder, args.ckpt, test, device=device, model=model)
    return Bundle.load(folder)


def main(argv: Sequence[str] | None = None) -> int:
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        """SIGTERM ends the server as Ctrl-C does: Gradio closes it and the temporary folder (weights, images)
        is removed on the way out."""
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        check_port_free(args.port)
        # Only now the imports that take seconds (torch, Lightning, Gradio): a wrong flag or a taken port is told
        # at once.
        from cifar_lit.app.demo import build_demo, launch
        from cifar_lit.hardware.plan import single_device

        device = single_device(args.gpus)
        with tempfile.TemporaryDirectory(prefix="cifar_lit_app_") as folder:
            demo = build_demo(prepare(args, Path(folder), device), device)
            launch(demo, server_name=HOST, server_port=args.port, share=args.share, allowed_paths=[folder])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM before the server ran (Gradio handles it once serving): the folder is gone
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 + signal.SIGTERM if terminated else 0


if __name__ == "__main__":
    sys.exit(main())
