"""The ``dlscale`` command: parsing only. Each subcommand has a ``*_parser`` that adds
its flags and a ``*_command(args)`` that runs it.

A user's mistake ends with one line ``error: ...`` on stderr and exit code 2, never a
traceback; ``--json`` puts one JSON object on the last line of stdout while human
output goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from dlscale import __version__
from dlscale.errors import UserError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``error:`` line instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- train


def train_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model and measure the run",
        description=(
            "Train a model on a data set and measure the run (samples/s, FLOPs, time). With no "
            "options it trains a small CNN on scikit-learn's digits on the best device present. "
            "Every option can also be given as a key of a --config TOML file (batch_size = 64); "
            "options on the command line win over the file."
        ),
        epilog=(
            "examples:\n"
            "  dlscale train\n"
            "  dlscale train --model resnet18 --data synthetic:3x32x32 --max-steps 200\n"
            "  dlscale train --data ./mnist --epochs 3 --json\n"
            "  dlscale train --resume auto"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--config", metavar="FILE", help="TOML file whose keys mirror these options (a run's config.toml reproduces it)")
    add("--model", help="model name: mlp, cnn, resnet18, resnet50, vit-tiny, gpt-tiny, gpt-small, torchvision:NAME, timm:NAME (default cnn)")
    add("--data", help="digits, synthetic[:CxHxW|:SEQ], or a path: MNIST IDX folder, CIFAR-10 batches, image folder, text file, .npz (default digits)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="passes over the training set (default 10)")
    length.add_argument("--max-steps", type=int, help="optimizer steps to run; wins over --epochs")
    add("--batch-size", type=int, help="global batch size, summed over all workers (default 64)")
    add("--lr", type=float, help="peak learning rate (default 1e-3 AdamW, 0.1 SGD)")
    add("--optimizer", choices=("adamw", "sgd"), help="default adamw")
    add("--momentum", type=float, help="SGD momentum (default 0.9)")
    add("--weight-decay", type=float, help="default 0.01 AdamW, 5e-4 SGD; never on biases and norms")
    add("--schedule", choices=("cosine", "constant"), help="after linear warm-up (default cosine)")
    add("--warmup-steps", type=int, help="linear warm-up steps (default 5%% of the steps)")
    add("--grad-clip", type=float, help="clip the global gradient norm to this (default 0: off)")
    add("--grad-accum", type=int, help="split each batch into this many micro-batches (default 1)")
    add("--device", help="auto, cpu, cuda, cuda:N or mps (default auto: the best present)")
    add("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="autocast precision (default auto: bf16 on GPUs that have it, else fp32)")
    add("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model (default: on for CUDA)")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels_last memory format (default: conv nets on CUDA)")
    add("--nproc", type=int, help="worker processes on this node (default 1)")
    add("--nnodes", type=int, help="nodes (default 1)")
    add("--strategy", choices=("ddp", "fsdp"), help="data parallel strategy (default ddp)")
    add("--checkpoint-every", type=int, help="save a checkpoint every N steps (default 0: only at the end)")
    add("--keep-checkpoints", type=int, help="newest checkpoints to keep (default 2; 0 keeps all)")
    add("--resume", metavar="auto|DIR", help="continue a run from its newest complete checkpoint")
    add("--run-dir", metavar="DIR", help="where to write the run (default runs/<UTC-time>-<model>-<data>)")
    add("--seed", type=int, help="random seed (default 0)")
    add("--target-accuracy", type=float, help="record the time to reach this validation accuracy (0-1)")
    add("--log-every", type=int, help="steps between metrics lines (default: about 50 per run)")
    add("--synthetic-samples", type=int, help="training-set size for --data synthetic (default 2048)")
    add("--workers", type=int, help="DataLoader worker processes for lazily read data (default 0)")
    add("--json", action="store_true", help="print summary.json's object as the last line of stdout")
    p.set_defaults(handler=train_command)


NOT_CONFIG = ("config", "json", "handler", "command")


def train_command(args: argparse.Namespace) -> int:
    from dlscale import config as config_mod
    from dlscale.progress import TrainProgress, make_console
    from dlscale.runs import to_json
    from dlscale.train import train

    overrides = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG and v is not None}
    file_values = config_mod.read_toml(args.config) if args.config else {}
    config = config_mod.build(file_values, **overrides)
    result = train(config, overrides, progress=TrainProgress(make_console()))
    if args.json:
        print(to_json(result.summary), flush=True)
    return 0


# --------------------------------------------------------------------------- main


def build_parser() -> Parser:
    parser = Parser(
        prog="dlscale",
        description="Train deep-learning models from a laptop CPU to a GPU cluster and measure what the hardware buys.",
    )
    parser.add_argument("--version", action="version", version=f"dlscale {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    train_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # name the subcommand's help, which lists its flags
            where = f"dlscale {args.command}" if args.command else "dlscale"
            raise UserError(f"unrecognized arguments: {' '.join(extra)} (see '{where} --help')")
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USER_ERROR
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
