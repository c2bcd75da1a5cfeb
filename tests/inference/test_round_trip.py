"""Issue 13's round trip for every kind of data the README lists: train -> dlscale.load ->
predict on raw inputs (scoring as the run's summary did) -> export (safetensors and pt2) ->
reload the export and get the same outputs. No pickle is read on the way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import dlscale
from dlscale.data.splits import split_indices
from dlscale.inference.export import SPEC_KEY, export
from dlscale.models.spec import build_from_spec
from dlscale.runs.weights import load_weights
from tests.data.test_cifar import make_batch, make_cifar
from tests.data.test_idx import make_mnist

pytestmark = pytest.mark.slow


class Scorer(nn.Module):
    """A user's own module: rebuilt from its recorded import path and arguments."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.features, self.classes = features, classes
        self.linear = nn.Linear(features, classes)

    def forward(self, x):
        return self.linear(x)


def _image_folder(root):
    """Two classes of 12x12 PNGs (dark and bright), with train/ and test/ folders."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for label, base in (("dark", 40), ("bright", 200)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(base + rng.integers(-30, 30, size=(12, 12, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    files = sorted((root / "test").glob("*/*.png"))
    return files, np.array([0 if f.parent.name == "bright" else 1 for f in files])  # classes sorted: bright, dark


def case(kind, tmp):
    """(model, fit's data, fit's keywords, raw test inputs, their targets, the summary key
    scored) for one kind of data."""
    rng = np.random.default_rng(1)
    if kind == "digits":
        from dlscale.data.digits import read_digits

        x, y = read_digits()
        test = split_indices(len(y), 15, 15)[2]
        return "cnn", "digits", {}, x[test], y[test], "test_accuracy"
    if kind == "mnist-idx":
        arrays = make_mnist(tmp / "mnist", n_train=60, n_test=20)
        return "mlp", str(tmp / "mnist"), {"batch_size": 16}, arrays["t10k"][0], arrays["t10k"][1], "test_accuracy"
    if kind == "cifar":
        make_cifar(tmp / "cifar", per_batch=16, test=10)
        raw = make_batch(10, 2)  # the test_batch file's content
        return "cnn", str(tmp / "cifar"), {"batch_size": 8}, raw[b"data"].reshape(-1, 3, 32, 32), np.array(raw[b"labels"]), "test_accuracy"
    if kind == "image-folder":
        files, labels = _image_folder(tmp / "photos")
        return "cnn", str(tmp / "photos"), {"batch_size": 16}, [str(f) for f in files], labels, "test_accuracy"
    if kind == "npz":
        x = rng.normal(size=(200, 6)).astype(np.float32) * 3 + 1
        y = (x[:, 0] > 1).astype(np.int64)
        np.savez(tmp / "table.npz", x=x, y=y)
        test = split_indices(len(y), 10, 10)[2]
        return "mlp", str(tmp / "table.npz"), {}, x[test], y[test], "test_accuracy"
    if kind == "npz-regression":
        x = rng.normal(size=(300, 4)).astype(np.float32)
        y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.05 * rng.normal(size=300)).astype(np.float32)
        np.savez(tmp / "values.npz", x=x, y=y)
        test = split_indices(len(y), 10, 10)[2]
        return "mlp", str(tmp / "values.npz"), {"max_steps": 60}, x[test], y[test], "test_mae"
    if kind == "text":
        (tmp / "book.txt").write_text("It was the best of times, it was the worst of times. " * 300)
        return "gpt-tiny", str(tmp / "book.txt"), {"batch_size": 8}, None, None, "test_loss"
    if kind == "synthetic-image":
        return "mlp", "synthetic:1x6x6", {}, None, None, "test_loss"
    if kind == "synthetic-tokens":
        return "gpt-tiny", "synthetic:16", {"batch_size": 8}, None, None, "test_loss"
    if kind == "custom-module":
        x = rng.normal(size=(160, 5)).astype(np.float32)
        y = (x.sum(1) > 0).astype(np.int64)
        return Scorer(5, 2), (x[:128], y[:128]), {"test_data": (x[128:], y[128:])}, x[128:], y[128:], "test_accuracy"
    raise AssertionError(kind)


KINDS = ["digits", "mnist-idx", "cifar", "image-folder", "npz", "npz-regression", "text", "synthetic-image",
         "synthetic-tokens", "custom-module"]


@pytest.mark.parametrize("kind", KINDS)
def test_train_load_predict_export_reload(kind, tmp_path):
    model, data, options, raw_x, raw_y, scored = case(kind, tmp_path)
    options = {"max_steps": 12, **options}
    result = dlscale.fit(model, data, run_dir=str(tmp_path / "run"), verbose=False, **options)
    loaded = dlscale.load(result.run_dir, device="cpu")

    # predict on raw inputs scores as the run's own test evaluation did
    if raw_x is not None:
        scores = loaded.evaluate((raw_x, raw_y))
        if scored == "test_accuracy":
            assert abs(float((loaded.predict(raw_x) == raw_y).mean()) - result.summary[scored]) <= 1 / len(raw_y) + 1e-9
        else:
            assert scores["mae"] == pytest.approx(result.summary["test_mae"], rel=1e-3)
            assert loaded.predict(raw_x).dtype == np.float32
    else:  # synthetic or text: the test split as the reader prepares it
        assert loaded.evaluate(data)["loss"] == pytest.approx(result.summary["test_loss"], rel=1e-3)
        if loaded.is_language_model:
            assert isinstance(loaded.generate("It was", max_new_tokens=5, temperature=0), str)

    # export and reload: the same outputs as the loaded model
    batch = _prepared_batch(loaded, raw_x)
    expected = loaded.module(batch)
    exported = export(result.run_dir, "pt2", tmp_path / "model.pt2")
    assert exported["max_abs_diff"] <= exported["tolerance"]
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    torch.testing.assert_close(program(batch), expected, atol=1e-4, rtol=1e-4)
    export(result.run_dir, "safetensors", tmp_path / "weights.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "weights.safetensors"), "pt") as handle:
        spec = json.loads(handle.metadata()[SPEC_KEY])
    rebuilt = load_weights(tmp_path / "weights.safetensors", build_from_spec(spec, Scorer if kind == "custom-module" else None))
    torch.testing.assert_close(rebuilt.eval()(batch), expected, atol=0, rtol=0)


def _prepared_batch(loaded, raw_x):
    from dlscale.inference.inputs import model_inputs

    if raw_x is None:
        shape = loaded.spec["input_shape"]
        if loaded.is_language_model:
            return torch.randint(0, loaded.spec["num_outputs"], (3, shape[0]))
        return torch.randn(3, *shape)
    return model_inputs(loaded.spec, raw_x[:5])[0]
