"""``dlscale.load(run_dir)``: a trained run as a ready model, in the way Keras users call
``load_model`` and ``model.predict``.

    model = dlscale.load("runs/2026-11-30-cnn-digits")
    model.predict(raw_digits)            # class indices, with the run's preprocessing
    model.predict_proba(raw_digits)      # class probabilities
    model.evaluate((x, y))               # {"loss": ..., "accuracy": ...}
    model.generate("Once upon", max_new_tokens=50)   # GPT runs
    model.module                         # the plain nn.Module

Weights come from RUN/model.safetensors (or the newest checkpoint of an unfinished run)
and the model from RUN/model.json: nothing is unpickled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlscale.data import preprocess
from dlscale.errors import UserError
from dlscale.hardware.device import autocast, resolve_device
from dlscale.inference.inputs import model_inputs, read_npz, token_inputs
from dlscale.models.flops import cross_entropy

DEFAULT_BATCH = 256


class Model:
    """A trained model with its preprocessing. Inputs are given raw, as the run's data was."""

    def __init__(self, module: nn.Module, spec: dict[str, Any], device: torch.device, precision: str, run_dir: Path):
        self.module = module
        self.spec = spec
        self.device = device
        self.precision = precision
        self.run_dir = run_dir

    def __repr__(self) -> str:
        name = self.spec.get("model") or (self.spec.get("module") or {}).get("import_path")
        return f"dlscale.Model({name}, inputs {tuple(self.spec['input_shape'])}, {self.device}, {self.precision}, {self.run_dir})"

    @property
    def class_names(self) -> list[str] | None:
        return self.spec.get("class_names")

    @property
    def is_language_model(self) -> bool:
        return self.spec["input_kind"] == "tokens"

    @property
    def is_regression(self) -> bool:
        return self.spec["targets"] == "values"

    # ------------------------------------------------------------------ prediction

    def predict(self, inputs: Any, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Class indices (N,), regression values (N,) or (N, k), or for a language model the
        most likely next token of each prompt."""
        outputs = self.outputs_of(inputs, batch_size=batch_size)
        if self.is_regression:
            return outputs.squeeze(1).numpy() if outputs.shape[1] == 1 else outputs.numpy()
        return outputs.argmax(-1).numpy()

    def predict_proba(self, inputs: Any, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Class probabilities (N, classes); for a language model, of the next token."""
        if self.is_regression:
            raise UserError("predict_proba is for classifiers; this run trained on regression targets: use predict")
        return torch.softmax(self.outputs_of(inputs, batch_size=batch_size), dim=-1).numpy()

    def outputs_of(self, inputs: Any, prepared: bool = False, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
        """Float32 outputs on the CPU: logits (N, C) (a language model's at its last position) or
        values (N, k). ``prepared``: ``inputs`` is already the model's batch."""
        x = inputs if prepared else self._batch(inputs)
        out = self._forward_all(x, batch_size)
        return out[:, -1] if self.is_language_model else out

    def _batch(self, inputs: Any) -> torch.Tensor:
        if isinstance(inputs, (str, Path)) and str(inputs).lower().endswith(".npz") and not self.is_language_model:
            inputs = read_npz(Path(inputs))[0]
        return model_inputs(self.spec, inputs)[0]

    @torch.inference_mode()
    def _forward_all(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if self.is_language_model:
            x = x[:, -self.spec["input_shape"][0]:]  # the model's context: the last tokens
        outputs = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size].to(self.device)
            if self.spec.get("channels_last") and chunk.dim() == 4 and self.device.type == "cuda":
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                outputs.append(self.module(chunk).float().cpu())
        return torch.cat(outputs)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, data: Any, batch_size: int = DEFAULT_BATCH) -> dict[str, float]:
        """Loss and accuracy (classifiers, language models) or loss, MAE and R² (regression) on
        ``data``: a pair (x, y) of raw inputs and targets, an .npz file with x and y, or a data
        name or path as ``dlscale train --data`` takes it (its test split)."""
        x, y = self._labelled(data)
        outputs = self._forward_all(x, batch_size)
        if self.is_regression:
            out = outputs.reshape(len(outputs), -1)
            target = y.float().reshape(len(y), -1)
            if out.shape != target.shape:
                raise UserError(f"the model gives {out.shape[1]} values per sample but the targets have {target.shape[1]}")
            error = out - target
            total = ((target - target.mean(0)) ** 2).sum()
            r2 = float(1 - (error**2).sum() / total) if total > 0 else math.nan
            return {"loss": float((error**2).mean()), "mae": float(error.abs().mean()), "r2": r2}
        target = y.long()
        if int(target.min()) < 0 or int(target.max()) >= self.spec["num_outputs"]:
            raise UserError(f"labels must be class numbers from 0 to {self.spec['num_outputs'] - 1}")
        loss = float(cross_entropy(outputs, target))
        accuracy = float((outputs.argmax(-1) == target).double().mean())
        return {"loss": loss, "accuracy": accuracy}

    def _labelled(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = data
            batch = self._batch(x)
            targets = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y))
            if len(targets) != len(batch) and not self.is_language_model:
                raise UserError(f"x has {len(batch)} samples but y has {len(targets)}; give one target per sample")
            return batch, targets
        if isinstance(data, (str, Path)) and str(data).lower().endswith(".npz"):
            x, y = read_npz(Path(data))
            if y is None:
                raise UserError(f"{data} has no array y to evaluate against; save it with np.savez(path, x=..., y=...)")
            return self._labelled((x, y))
        if isinstance(data, (str, Path)):
            return self._test_split(str(data))
        raise UserError("evaluate takes (x, y), an .npz file with x and y, or a data name or path")

    def _test_split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The test split of a data set, prepared by its reader as training prepared it."""
        from dlscale.data import DataSpec, load_data
        from dlscale.data.batches import first_samples

        want = DataSpec(self.spec["input_kind"], tuple(self.spec["input_shape"]), self.spec["num_outputs"])
        splits = load_data(name, want)
        if splits.test is None or len(splits.test) == 0:
            raise UserError(f"data {name} has no test split to evaluate on")
        if tuple(splits.input_shape) != tuple(self.spec["input_shape"]):
            raise UserError(f"data {name} has samples of shape {tuple(splits.input_shape)}; the model takes {tuple(self.spec['input_shape'])}")
        return first_samples(splits.test, len(splits.test))

    # ------------------------------------------------------------------ text

    def generate(
        self, prompt: str | list[int], max_new_tokens: int = 50, temperature: float = 1.0, top_k: int | None = None,
        seed: int | None = None,
    ) -> str | list[int]:
        """``prompt`` continued by ``max_new_tokens`` sampled tokens (temperature 0: greedy),
        with the model's KV cache. Text in, text out; token ids (a list of ints) in, the new
        ids out. A model trained on another tokenizer's ids takes ids only."""
        from dlscale.models.generate import generate

        if not self.is_language_model:
            raise UserError("generate is for language models (gpt-tiny, gpt-small); this run is a classifier: use predict")
        as_ids = _is_id_list(prompt)
        if not (isinstance(prompt, str) or as_ids):
            raise UserError(f"the prompt must be text or a list of token ids, got {type(prompt).__name__}")
        idx = token_inputs(prompt, self.spec.get("preprocess")).to(self.device)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        with autocast(self.device, self.precision):
            out = generate(self.module, idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
        new_tokens = out[0, idx.shape[1]:].cpu()
        return new_tokens.tolist() if as_ids else preprocess.decode_tokens(new_tokens)


def _is_id_list(prompt: Any) -> bool:
    """A non-empty flat list (or tuple) of ints, bools excluded."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt
    )


def load(
    run_dir: str | Path, module: nn.Module | type | None = None, device: str = "auto", precision: str = "auto"
) -> Model:
    """A trained run as a ready ``Model``. ``module`` rebuilds a user's own network: its class
    (built with the recorded arguments) or an instance; without it the recorded class is
    imported. ``precision`` auto takes the run's where the device supports it, else fp32."""
    from dlscale.training.model_files import read_run_model
    from dlscale.training.settings import check_precision

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run {run_dir} does not exist; give a directory written by dlscale train")
    spec, net = read_run_model(run_dir, module)
    target = resolve_device(device)
    if precision == "auto":
        precision = spec.get("precision") or "fp32"
        try:
            check_precision(precision, target)
        except UserError:
            precision = "fp32"
    else:
        check_precision(precision, target)
    return Model(net.to(target), spec, target, precision, run_dir)
