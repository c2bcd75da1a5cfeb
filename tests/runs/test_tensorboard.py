import importlib.util

import numpy as np
import pytest
import torch

import dlscale
from dlscale.errors import UserError
from dlscale.runs import tensorboard

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 8)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)


def _scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_with_the_tensorboard_logger_mirrors_metrics_jsonl(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    result = dlscale.fit(model, (X, Y), validation_split=0.2, epochs=3, batch_size=40, log_every=2, devices="cpu",
                         precision="fp32", logger="tensorboard", run_dir=str(tmp_path / "r"), verbose=False)
    scalars = _scalars(result.run_dir)
    train = [r for r in result.history if r["kind"] == "train"]
    val = [r for r in result.history if r["kind"] == "val"]
    for key in ("loss", "lr"):
        assert [step for step, _ in scalars[f"train/{key}"]] == [r["step"] for r in train]
        assert [value for _, value in scalars[f"train/{key}"]] == pytest.approx([r[key] for r in train], rel=1e-6)
    assert [step for step, _ in scalars["train/samples_per_second"]] == [r["step"] for r in train if r["samples_per_second"]]
    for key in ("val_loss", "val_accuracy"):
        assert scalars[f"val/{key}"] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in val]
    assert [step for step, _ in scalars.get("train/mfu", [])] == [r["step"] for r in train if r.get("mfu")]


def test_a_resumed_session_drops_what_the_interrupted_one_wrote_after_its_checkpoint(tmp_path):
    log = tensorboard.TensorBoardLog(tmp_path)
    for step in (1, 2, 3, 4):
        log({"kind": "train", "step": step, "loss": float(step), "lr": 0.1, "samples_per_second": None})
    log.close()
    log = tensorboard.TensorBoardLog(tmp_path, purge_step=3)  # resumed from the checkpoint at step 2
    log({"kind": "train", "step": 3, "loss": 30.0, "lr": 0.1, "samples_per_second": None})
    log.close()
    assert _scalars(tmp_path)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_without_tensorboard_the_run_is_refused_before_it_starts(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    with pytest.raises(UserError, match="pip install tensorboard"):
        dlscale.fit(torch.nn.Linear(8, 2), (X, Y), logger="tensorboard", run_dir=str(tmp_path / "r"), verbose=False)
    assert not (tmp_path / "r").exists()
