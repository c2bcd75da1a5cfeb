"""What ``dlscale predict`` answers: one row per input (image file, or row of an .npz) with
the predicted class and its probability (or the predicted value), or a prompt's
continuation for a language model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlscale.errors import UserError
from dlscale.inference.inputs import model_inputs, read_npz
from dlscale.inference.model import Model, load


def predict_inputs(run_dir: str, inputs: list[str], device: str = "auto", top: int = 1) -> dict[str, Any]:
    """Predictions for image files, folders of images, or .npz files (their x), in order."""
    model = load(run_dir, device=device)
    if model.is_language_model:
        raise UserError(f"run {run_dir} is a language model: give --prompt \"TEXT\" instead of input files")
    if not inputs:
        raise UserError("give at least one input: image files, folders of images, or an .npz file with x")
    rows: list[dict[str, Any]] = []
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() == ".npz":
            batch, _ = model_inputs(model.spec, read_npz(path)[0])
            rows += _rows(model, batch, [f"{item}[{i}]" for i in range(len(batch))], top)
        else:
            batch, files = model_inputs(model.spec, item)
            rows += _rows(model, batch, files or [item], top)
    return {"kind": "predictions", "run": str(run_dir), "targets": model.spec["targets"], "predictions": rows}


def _rows(model: Model, batch: Any, names: list[str], top: int) -> list[dict[str, Any]]:
    outputs = model.outputs_of(batch, prepared=True)
    if model.is_regression:
        values = outputs.numpy()
        return [{"input": name, "value": _plain(v)} for name, v in zip(names, values)]
    probabilities = torch.softmax(outputs, dim=-1).numpy()  # as Model.predict_proba
    rows = []
    for name, p in zip(names, probabilities):
        best = np.argsort(-p)[: max(1, top)]
        row = {"input": name, "class": int(best[0]), "probability": float(p[best[0]])}
        if model.class_names:
            row["label"] = model.class_names[int(best[0])]
        if top > 1:
            row["top"] = [
                {"class": int(c), "probability": float(p[c]), **({"label": model.class_names[int(c)]} if model.class_names else {})}
                for c in best
            ]
        rows.append(row)
    return rows


def _plain(value: np.ndarray) -> float | list[float]:
    flat = np.ravel(value)
    return float(flat[0]) if flat.size == 1 else [float(v) for v in flat]


def complete_prompt(
    run_dir: str, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8, top_k: int | None = None,
    seed: int | None = 0, device: str = "auto",
) -> dict[str, Any]:
    """The prompt continued by a language-model run."""
    model = load(run_dir, device=device)
    if not model.is_language_model:
        raise UserError(f"--prompt is for language-model runs; run {run_dir} is a classifier: give image files or an .npz")
    completion = model.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    return {"kind": "completion", "run": str(run_dir), "prompt": prompt, "completion": completion,
            "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "seed": seed}
