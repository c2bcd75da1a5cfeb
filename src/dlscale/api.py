"""``dlscale.fit``: the Python face of ``dlscale train``, for scripts and notebooks.

    import dlscale
    result = dlscale.fit("cnn", "digits", epochs=5)
    result = dlscale.fit(my_module, (x_train, y_train), val_data=(x_val, y_val), epochs=3)
    result.summary["test_accuracy"]      # the same dict as the run's summary.json

Bad input raises ``dlscale.UserError`` (the CLI turns the same error into one line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from dlscale.training import config as config_mod
from dlscale.data import Splits
from dlscale.data.guards import check_labels, first_non_finite
from dlscale.errors import UserError
from dlscale.progress import TrainProgress, make_console
from dlscale.training.callbacks import check_validation
from dlscale.training.train import train


@dataclass
class FitResult:
    summary: dict[str, Any]  # the same dict as summary.json
    run_dir: Path
    model: torch.nn.Module  # the trained module (on the device it trained on)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every metrics.jsonl record of the run: training intervals and evaluations."""
        from dlscale.runs.metrics_log import read_metrics

        return read_metrics(self.run_dir / "metrics.jsonl")

    @property
    def val_metrics(self) -> dict[str, Any]:
        """The last validation's figures: val_loss and val_accuracy (val_mae, val_r2 for
        regression); empty without a validation set. summary.json keeps val_loss and val_accuracy."""
        val = [record for record in self.history if record.get("kind") == "val"]
        return {key: value for key, value in val[-1].items() if key.startswith("val_")} if val else {}


DataLike = str | Dataset | tuple[Any, Any]


def fit(
    model: str | torch.nn.Module = "cnn",
    train_data: DataLike = "digits",
    val_data: Dataset | tuple[Any, Any] | None = None,
    *,
    test_data: Dataset | tuple[Any, Any] | None = None,
    devices: str | None = None,
    verbose: bool = True,
    callbacks: list[Any] | None = None,
    validation_split: float | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` on ``train_data`` and return the run's summary.

    ``model`` is a zoo name or any ``torch.nn.Module`` (classifier returning (B, C)
    logits, or language model returning (B, T, V)). ``train_data`` is a data name or
    path, a ``Dataset`` of (input, label) pairs, or a pair of tensors/arrays (x, y).
    Float y (N,) or (N, k) is regression: the model gives (B, k) values, trained with
    ``loss="mse"`` (or "mae", "huber") and reported as MAE and R²; ``metrics=["mae", "r2"]``
    picks what validation and test report (accuracy for classes).
    Every ``dlscale train`` option is a keyword here (epochs=, batch_size=, lr=,
    precision=, device= or devices=, run_dir=, ...), early_stop_patience=, keep_best=,
    reduce_lr_patience= and logger="tensorboard" among them.

    ``validation_split=0.1`` holds out the last tenth of ``train_data`` for validation
    (as Keras). ``callbacks`` are objects with any of ``on_train_start(run)``,
    ``on_step_end(run, step, logs)``, ``on_epoch_end(run, epoch, logs)`` and
    ``on_train_end(run, summary)``; setting ``run.stop_training = True`` ends the run
    (see ``dlscale.training.callbacks``).
    """
    if devices is not None:
        options.setdefault("device", devices)
    # paths as Python users hold them (run_dir=tmp_path / "run"): config keys are strings
    options = {key: str(value) if isinstance(value, Path) else value for key, value in options.items()}
    unknown = set(options) - set(config_mod.field_names())
    if unknown:
        raise UserError(f"fit() got unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(config_mod.field_names())}")
    module = model if isinstance(model, torch.nn.Module) else None
    if module is None and not isinstance(model, str):
        raise UserError(f"model must be a zoo name or a torch.nn.Module, got {type(model).__name__}")

    if validation_split is not None:
        train_data, val_data = _hold_out(train_data, val_data, validation_split)
    splits = None
    if not isinstance(train_data, str):
        splits = _splits_from_user_data(train_data, val_data, test_data)
        options["data"] = "custom"
    elif val_data is not None or test_data is not None:
        raise UserError("val_data/test_data go with train_data given as a Dataset or (x, y); a data name brings its own splits")
    else:
        options["data"] = train_data
    options["model"] = model if isinstance(model, str) else type(model).__name__

    config = config_mod.build({}, **options)
    if splits is not None:  # said at once, before any setup: early stopping without a validation set
        check_validation(config, splits.val is not None)
    if callbacks and config.nproc * config.nnodes > 1:
        raise UserError("callbacks run in this process, but nproc > 1 trains in worker processes; use nproc=1 "
                        "(or run your script under torchrun), or drop callbacks")
    progress = TrainProgress(make_console(), enabled=verbose)
    # under a user's torchrun the process group outlives this call, so the script can fit again
    result = train(config, options, model=module, data=splits, progress=progress, callbacks=callbacks,
                   keep_process_group=True)
    return FitResult(summary=result.summary, run_dir=result.run_dir, model=result.model)


def _hold_out(train_data: Any, val_data: Any, fraction: Any) -> tuple[Dataset, Dataset]:
    """The last ``fraction`` of ``train_data`` as the validation set, as Keras's validation_split."""
    if isinstance(train_data, str):
        raise UserError(f"validation_split goes with train_data given as a Dataset or (x, y); data {train_data!r} brings its own splits")
    if val_data is not None:
        raise UserError("give either val_data or validation_split, not both")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise UserError(f"validation_split is the fraction held out for validation, in (0, 1); got {fraction!r}")
    train_set = _as_dataset(train_data, "train_data")
    n = len(train_set)
    split_at = math.ceil(n * (1 - fraction))
    if not 0 < split_at < n:
        raise UserError(f"validation_split={fraction} of {n} samples leaves an empty split; give more samples or another fraction")
    if isinstance(train_set, TensorDataset):
        return TensorDataset(*(t[:split_at] for t in train_set.tensors)), TensorDataset(*(t[split_at:] for t in train_set.tensors))
    return Subset(train_set, range(split_at)), Subset(train_set, range(split_at, n))


def _as_dataset(data: Dataset | tuple[Any, Any] | None, what: str) -> Dataset | None:
    if data is None or isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in data)
        if len(x) != len(y):
            raise UserError(f"{what}: x has {len(x)} samples but y has {len(y)}; give equal lengths")
        if x.is_floating_point():
            x = x.float()
        bad = first_non_finite(x)
        if bad is not None:
            raise UserError(f"{what} holds non-finite values (NaN or inf) at sample {bad}; fix or drop that sample")
        if y.is_floating_point():  # regression targets, used as given
            y = y.float()
            bad = first_non_finite(y)
            if bad is not None:
                raise UserError(f"{what} holds a non-finite target (NaN or inf) at sample {bad}; fix or drop that sample")
            return TensorDataset(x, y)
        check_labels(y.cpu().numpy(), what)
        return TensorDataset(x, y.long())
    raise UserError(f"{what} must be a Dataset or a pair (x, y) of tensors/arrays, got {type(data).__name__}")


def _splits_from_user_data(train_data: Any, val_data: Any, test_data: Any) -> Splits:
    train_set = _as_dataset(train_data, "train_data")
    if len(train_set) == 0:
        raise UserError("train_data is empty; give at least one batch of samples")
    x0, y0 = train_set[0]
    x0, y0 = torch.as_tensor(x0), torch.as_tensor(y0)
    tokens = not x0.is_floating_point() and x0.dim() == 1 and y0.shape == x0.shape
    labels = train_set.tensors[1] if isinstance(train_set, TensorDataset) else torch.stack([torch.as_tensor(train_set[i][1]) for i in range(len(train_set))])
    targets = "values" if labels.is_floating_point() else "classes"
    if targets == "values":  # (N,) or (N, k) regression targets: the model gives k outputs
        if labels.dim() > 2:
            raise UserError(f"train_data's targets have shape {tuple(labels.shape)}; give float targets as (N,) or (N, k)")
        bad = first_non_finite(labels)
        if bad is not None:
            raise UserError(f"train_data holds a non-finite target (NaN or inf) at sample {bad}; fix or drop that sample")
        num_classes = 1 if labels.dim() == 1 else labels.shape[1]
    else:
        num_classes = int(labels.max()) + 1
    if tokens and isinstance(train_set, TensorDataset):
        num_classes = max(num_classes, int(train_set.tensors[0].max()) + 1)
    return Splits(
        name="custom",
        kind="tokens" if tokens else "image",
        input_shape=tuple(x0.shape),
        num_classes=num_classes,
        train=train_set,
        val=_as_dataset(val_data, "val_data"),
        test=_as_dataset(test_data, "test_data"),
        targets=targets,
    )
