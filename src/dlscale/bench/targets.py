"""What ``bench infer`` times: a zoo model with fresh weights (speed does not depend on
them), or the model of a trained run with its test split, rebuilt from the run's
model.json and model.safetensors (zoo models and a user's own module alike; read without
running code: see ``training.model_files``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from dlscale.data import DataSpec, Splits, load_data
from dlscale.errors import UserError
from dlscale.models import build_model, model_info
from dlscale.training import config as config_mod


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


def load_trained_run(run_dir: str | Path) -> tuple[dict, nn.Module, Splits | None]:
    """The model spec (model.json), the trained model (fp32, CPU, eval) and the data splits
    (None when the run's data was arrays given to ``fit``) of a run written
    by ``dlscale train``: its model.json and model.safetensors (or newest checkpoint), read
    without running code; a user's own module is rebuilt from its recorded import path."""
    from dlscale.training.model_files import read_run_model

    run_dir = Path(run_dir)
    config_file = run_dir / "config.toml"
    if not config_file.is_file():
        raise UserError(
            f"--run {run_dir}: no run there (no config.toml); give a directory written by dlscale train, "
            "such as runs/<timestamp>-<model>-<data>"
        )
    config = config_mod.build(config_mod.read_toml(config_file))
    spec, model = read_run_model(run_dir)
    want = DataSpec(spec["input_kind"], tuple(spec["input_shape"]), spec["num_outputs"])
    splits = None
    if config.data != "custom":  # arrays given to fit() are not on disk to test with
        splits = load_data(config.data, want, seed=config.seed, synthetic_samples=config.synthetic_samples)
        if tuple(splits.input_shape) != tuple(spec["input_shape"]):
            raise UserError(f"run {run_dir}: its data {config.data} now has samples of shape {tuple(splits.input_shape)}, "
                            f"the model takes {tuple(spec['input_shape'])}; was the data changed since it trained?")
    return spec, model, splits


def run_target(run_dir: str | Path) -> Target:
    spec, model, splits = load_trained_run(run_dir)
    name = spec["model"] or spec["module"]["import_path"]
    conv = model_info(spec["model"]).conv if spec["model"] else any(isinstance(m, nn.Conv2d) for m in model.modules())
    return Target(
        name, model, spec["input_kind"], tuple(spec["input_shape"]), spec["num_outputs"], conv,
        test=splits.test if splits else None, source_run=str(run_dir),
    )
