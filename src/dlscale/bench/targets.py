"""What ``bench infer`` times: a zoo model with fresh weights (speed does not depend on
them), or the model of a trained run with its test split, rebuilt from the run's
config.toml and newest checkpoint (read without running code: see ``runs.safe_load``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from dlscale.data import Splits, load_data
from dlscale.errors import UserError
from dlscale.models import build_model, model_info
from dlscale.runs import checkpoint
from dlscale.training import config as config_mod
from dlscale.training.settings import data_spec


@dataclass
class Target:
    """The model under test and what its inputs look like."""

    name: str
    model: nn.Module  # fp32 (benchmark moves it to the device)
    kind: str  # "image" or "tokens"
    input_shape: tuple[int, ...]  # one sample: (C, H, W), (F,) or (seq_len,)
    num_classes: int  # classes, or the vocabulary size of a language model
    conv: bool
    test: Dataset | None = None  # a trained run's test split
    source_run: str | None = None


def zoo_target(name: str, input_shape: tuple[int, ...] | None = None, seed: int = 0) -> Target:
    """A zoo model with fresh weights (speed does not depend on them)."""
    info = model_info(name)
    shape = tuple(input_shape) if input_shape else info.default_input_shape
    torch.manual_seed(seed)
    model = build_model(name, shape, info.default_num_classes)
    return Target(name, model, info.kind, shape, info.default_num_classes, info.conv)


def load_trained_run(run_dir: str | Path) -> tuple[str, nn.Module, Splits]:
    """The model name, the trained model (fp32, CPU, eval) and the data splits of a run
    written by ``dlscale train``: its config.toml says model and data, its newest
    complete checkpoint holds the weights (read with weights_only)."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.toml"
    if not config_file.is_file():
        raise UserError(
            f"--run {run_dir}: no run there (no config.toml); give a directory written by dlscale train, "
            "such as runs/<timestamp>-<model>-<data>"
        )
    config = config_mod.build(config_mod.read_toml(config_file))
    try:
        info = model_info(config.model)
    except UserError:
        raise UserError(
            f"run {run_dir} trained model {config.model!r}, which is not in the zoo; "
            "bench infer can rebuild zoo models only (use --model NAME to time one)"
        ) from None
    found = checkpoint.newest_checkpoint(run_dir)
    if found is None:
        raise UserError(
            f"run {run_dir} has no complete checkpoint (checkpoints/step-N/) to take weights from; "
            "let the run finish or continue it with dlscale train --resume"
        )
    splits = load_data(config.data, data_spec(info), seed=config.seed, synthetic_samples=config.synthetic_samples)
    model = build_model(config.model, splits.input_shape, splits.num_classes)
    try:
        checkpoint.load_model(found, model)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise UserError(
            f"checkpoint {found} does not fit model {config.model} on {config.data} "
            f"({str(exc).splitlines()[0][:160]}); was the run's data changed since it trained?"
        ) from None
    return config.model, model.eval(), splits


def run_target(run_dir: str | Path) -> Target:
    name, model, splits = load_trained_run(run_dir)
    return Target(
        name, model, splits.kind, tuple(splits.input_shape), splits.num_classes, model_info(name).conv,
        test=splits.test, source_run=str(run_dir),
    )
