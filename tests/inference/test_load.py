"""dlscale.load: a trained run as a ready model, with its preprocessing, and nothing in the
run directory that could run code when it is loaded."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import dlscale
from dlscale.data.digits import read_digits
from dlscale.data.splits import split_indices
from dlscale.errors import UserError


class TinyNet(nn.Module):
    """A user's own module that keeps its constructor arguments, so the run can rebuild it."""

    def __init__(self, features: int, hidden: int = 16, classes: int = 10):
        super().__init__()
        self.features, self.hidden, self.classes = features, hidden, classes
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class Opaque(nn.Module):
    """Keeps its argument under another name: the run cannot rebuild it alone."""

    def __init__(self, width: int):
        super().__init__()
        self.layer = nn.Linear(64, width)

    def forward(self, x):
        return self.layer(x.flatten(1))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("load") / "cnn"
    result = dlscale.fit("cnn", "digits", max_steps=60, run_dir=str(run_dir), verbose=False)
    return result


def _raw_digits_test_split():
    images, labels = read_digits()  # sklearn's raw 0..16 pixels, 64 per image
    _, _, test = split_indices(len(labels), val_pct=15, test_pct=15)
    return images[test], labels[test]


def test_load_predicts_raw_digits_with_the_runs_test_accuracy(digits_run):
    model = dlscale.load(digits_run.run_dir)
    x, y = _raw_digits_test_split()
    predicted = model.predict(x)
    assert predicted.shape == (len(y),)
    accuracy = float((predicted == y).mean())
    assert accuracy > 0.8
    assert abs(accuracy - digits_run.summary["test_accuracy"]) <= 1 / len(y)  # at most one sample apart
    scores = model.evaluate((x, y))
    assert abs(scores["accuracy"] - accuracy) < 1e-9
    assert abs(scores["loss"] - digits_run.summary["test_loss"]) < 0.02


def test_predict_proba_is_a_distribution_and_agrees_with_predict(digits_run):
    model = dlscale.load(digits_run.run_dir, device="cpu")
    x, _ = _raw_digits_test_split()
    probabilities = model.predict_proba(x[:20])
    assert probabilities.shape == (20, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(1) == model.predict(x[:20])).all()


def test_one_sample_in_any_of_its_shapes_is_a_batch_of_one(digits_run):
    model = dlscale.load(digits_run.run_dir, device="cpu")
    x, _ = _raw_digits_test_split()
    flat, square, tensor = x[0], x[0].reshape(8, 8), torch.tensor(x[0]).reshape(1, 1, 8, 8)
    assert model.predict(flat).tolist() == model.predict(square).tolist() == model.predict(tensor).tolist()
    with pytest.raises(UserError, match="do not fit the model"):
        model.predict(np.zeros((3, 5)))


def test_the_module_is_a_plain_module_in_eval_mode(digits_run):
    model = dlscale.load(digits_run.run_dir, device="cpu")
    assert isinstance(model.module, nn.Module) and not model.module.training
    assert model.spec["model"] == "cnn" and model.spec["preprocess"]["kind"] == "standardise"


def test_an_unfinished_run_loads_from_its_newest_checkpoint(digits_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(digits_run.run_dir, copy)
    (copy / "model.safetensors").unlink()
    x, _ = _raw_digits_test_split()
    assert (dlscale.load(copy, device="cpu").predict(x) == dlscale.load(digits_run.run_dir, device="cpu").predict(x)).all()


def test_a_custom_module_is_rebuilt_from_its_import_path_or_from_the_class(tmp_path):
    x, y = _raw_digits_test_split()
    run = dlscale.fit(TinyNet(64, hidden=12), (x.astype(np.float32), y), epochs=2, batch_size=32,
                      run_dir=str(tmp_path / "tiny"), verbose=False)
    spec = json.loads((run.run_dir / "model.json").read_text())
    assert spec["module"] == {"import_path": f"{TinyNet.__module__}:TinyNet", "kwargs": {"features": 64, "hidden": 12, "classes": 10}}
    expected = run.model.cpu().eval()(torch.tensor(x[:5], dtype=torch.float32)).argmax(1).numpy()
    for model in (dlscale.load(run.run_dir, device="cpu"), dlscale.load(run.run_dir, module=TinyNet, device="cpu"),
                  dlscale.load(run.run_dir, module=TinyNet(64, 12), device="cpu")):
        assert model.module.hidden == 12
        assert (model.predict(x[:5]) == expected).all()


def test_a_module_that_cannot_be_rebuilt_alone_asks_for_an_instance(tmp_path):
    x, y = _raw_digits_test_split()
    run = dlscale.fit(Opaque(10), (x.astype(np.float32), y), epochs=1, batch_size=32, run_dir=str(tmp_path / "o"), verbose=False)
    with pytest.raises(UserError, match=r"module=Opaque\(\.\.\.\)"):
        dlscale.load(run.run_dir)
    assert dlscale.load(run.run_dir, module=Opaque(10), device="cpu").predict(x[:3]).shape == (3,)


# ---------------------------------------------------------------------------- attacks


def _tamper_spec(run_dir, tmp_path, **changes):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(run_dir, copy)
    spec = json.loads((copy / "model.json").read_text())
    spec.update(changes)
    (copy / "model.json").write_text(json.dumps(spec))
    return copy


@pytest.mark.parametrize(
    "import_path",
    ["os:system", "subprocess:Popen", "builtins:exec", "numpy:save", "torch.hub:load", "dlscale.cli:main", "os.path:join"],
)
def test_a_recorded_module_that_is_not_a_model_class_is_never_called(digits_run, tmp_path, import_path):
    marker = tmp_path / "ran"
    copy = _tamper_spec(digits_run.run_dir, tmp_path, model=None,
                        module={"import_path": import_path, "kwargs": {"command": f"touch {marker}", "args": ["touch", str(marker)]}})
    with pytest.raises(UserError):
        dlscale.load(copy)
    assert not marker.exists()


def test_weights_replaced_by_a_pickle_are_refused_without_running_it(digits_run, tmp_path):
    import shutil

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    copy = tmp_path / "pickled"
    shutil.copytree(digits_run.run_dir, copy)
    (copy / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError, match="model.safetensors"):
        dlscale.load(copy)
    torch.save({"net": Payload()}, copy / "model.safetensors")
    with pytest.raises(UserError, match="model.safetensors"):
        dlscale.load(copy)
    assert not marker.exists()


def test_a_damaged_or_oversized_spec_is_one_error(digits_run, tmp_path):
    copy = _tamper_spec(digits_run.run_dir, tmp_path, input_shape="big")
    with pytest.raises(UserError, match="input_shape"):
        dlscale.load(copy)
    (copy / "model.json").write_text(" " * (2 << 20))
    with pytest.raises(UserError, match="larger than"):
        dlscale.load(copy)
    (copy / "model.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        dlscale.load(copy)


def test_a_missing_run_or_a_run_of_an_older_dlscale_says_what_to_do(digits_run, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        dlscale.load(tmp_path / "nowhere")
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.toml").write_text('model = "cnn"\n')
    with pytest.raises(UserError, match="older dlscale"):
        dlscale.load(old)


def test_an_npz_whose_header_declares_terabytes_is_refused_before_numpy_allocates(digits_run, tmp_path):
    """predict and evaluate read .npz files as training does: a 200-byte archive declaring
    4 Ti floats is one error, not an allocation."""
    import zipfile

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20)})
    model = dlscale.load(digits_run.run_dir, device="cpu")
    for call in (model.predict, model.evaluate):
        with pytest.raises(UserError, match="needs about .* TiB of memory"):
            call(str(path))
