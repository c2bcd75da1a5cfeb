"""``dlscale train``: its flags, and handing them to the trainer.

Flags default to None so that only what the user typed overrides a --config file
(and a resumed run's config.toml).
"""

from __future__ import annotations

import argparse
from typing import Any

from dlscale.training.config import LOSSES, PRECISIONS


def add_parser(subparsers: Any) -> None:
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
    add("--precision", choices=PRECISIONS, help="autocast precision (default auto: bf16 on GPUs that have it; on a CPU whichever measures faster here, cached)")
    add("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model (default: on for CUDA, off on CPUs, where it measured slower)")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels_last memory format (default: conv nets on CUDA; on a CPU where it measures faster)")
    add("--nproc", type=int, help="worker processes on this node (default 1)")
    add("--nnodes", type=int, help="nodes (default 1)")
    add("--strategy", choices=("ddp", "fsdp"), help="data parallel strategy: ddp (default) or fsdp (FSDP2 fully_shard)")
    add("--node-rank", type=int, help="this node's rank (0..nnodes-1) with --master-addr")
    add("--rdzv-endpoint", metavar="HOST:PORT", help="c10d rendezvous of a multi-node job (the same on every node)")
    add("--rdzv-id", metavar="ID", help="the job id the nodes meet under, as torchrun's (default: derived from --run-dir's name and the meeting point, the same on every node)")
    add("--master-addr", help="head node address for a static multi-node rendezvous")
    add("--master-port", type=int, help="head node port (default 29500)")
    add("--max-restarts", type=int, help="restarts of all workers after one fails; they resume from the newest checkpoint (default 0)")
    add("--max-requeues", type=int, help="times a SLURM job stopped by its time-limit signal (USR1) requeues itself and continues (default 10)")
    add("--timeout", type=float, help="seconds a collective may wait for the other workers before the job fails (default 600)")
    add("--scale-lr", action=argparse.BooleanOptionalAction, default=None, help="linear scaling rule: lr x global batch / 256, with warm-up")
    add("--checkpoint-every", type=int, help="save a checkpoint every N steps (default 0: only at the end)")
    add("--keep-checkpoints", type=int, help="newest checkpoints to keep (default 2; 0 keeps all)")
    add("--resume", metavar="auto|DIR", help="continue a run from its newest complete checkpoint")
    add("--run-dir", metavar="DIR", help="where to write the run (default runs/<UTC-time>-<model>-<data>)")
    add("--seed", type=int, help="random seed (default 0)")
    add("--target-accuracy", type=float, help="record the time to reach this validation accuracy (0-1)")
    add("--log-every", type=int, help="steps between metrics lines (default: about 50 per run)")
    add("--synthetic-samples", type=int, help="training-set size for --data synthetic (default 2048)")
    add("--val-samples", type=int, metavar="N", help="validate on the first N samples of the validation split "
        "(default: all; the test split is always evaluated whole): large corpora validate in seconds")
    add("--workers", type=_workers, metavar="N|auto", help="loader processes that decode image files ahead of the step "
        "(default auto: the usable cores per local process minus one, at most 16; data in memory needs none)")
    add("--augment", choices=("auto", "none", "standard"), help="image folders: standard is RandomResizedCrop + flip "
        "for training and resize + center crop for evaluation; none resizes whole images to the first one's size "
        "(default auto: standard for images at least 128 pixels on their shorter side)")
    add("--image-size", type=int, metavar="PIXELS", help="image folders: the side of the square the model sees "
        "(default 224, or the first image's shorter side when smaller)")
    add("--skip-bad-files", action=argparse.BooleanOptionalAction, default=None, help="image folders: replace an "
        "unreadable image by the next readable one and count it, instead of stopping the run")
    add("--loss", choices=LOSSES, help="auto (default: cross_entropy for class labels, mse for float targets), or mae, huber for float targets")
    add("--metrics", metavar="NAMES", help="comma-separated evaluation metrics: accuracy for classes; mae, mse, r2 for float targets (default accuracy, or mae,r2)")
    add("--init-from", metavar="RUN|CHECKPOINT", help="start from the trained weights of a run (its model.safetensors) or a checkpoint folder: fine-tuning, or more epochs; the source run is not changed")
    add("--early-stop-patience", type=int, metavar="N", help="stop after N validations without improvement of --monitor (default: off)")
    add("--monitor", metavar="METRIC", help="validation metric that early stopping, --keep-best and --reduce-lr-patience watch (default val_loss; val_accuracy, val_mae, ...)")
    add("--monitor-mode", choices=("auto", "min", "max"), help="whether the metric improves downwards or upwards (default auto: max for accuracy and r2)")
    add("--min-delta", type=float, metavar="X", help="a smaller change of the metric is no improvement (default 0)")
    add("--keep-best", action=argparse.BooleanOptionalAction, default=None, help="keep checkpoints/best at each improvement and test (and export) those weights")
    add("--reduce-lr-patience", type=int, metavar="N", help="multiply the learning rate by --reduce-lr-factor after N validations without improvement (default: off)")
    add("--reduce-lr-factor", type=float, metavar="F", help="the factor for --reduce-lr-patience (default 0.1)")
    add("--logger", choices=("none", "tensorboard"), help="also write scalars for TensorBoard under RUN/tb/ (default none; metrics.jsonl always)")
    add("--json", action="store_true", help="print summary.json's object as the last line of stdout")
    p.set_defaults(handler=run)


NOT_CONFIG = ("config", "json", "handler", "command")


def _workers(text: str) -> int | None:
    """--workers N, or auto (None)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number of processes or auto, not {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from dlscale.training import config as config_mod
    from dlscale.distributed.env import detect
    from dlscale.progress import TrainProgress, make_console
    from dlscale.runs.files import to_json
    from dlscale.training.train import train

    overrides = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG and v is not None}
    file_values = config_mod.read_toml(args.config) if args.config else {}
    config = config_mod.build(file_values, **overrides)
    result = train(config, overrides, progress=TrainProgress(make_console()))
    if args.json and detect().rank == 0:  # under mpirun or srun every rank shares this console
        print(to_json(result.summary), flush=True)
    return 0
