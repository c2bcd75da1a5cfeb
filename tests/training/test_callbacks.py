import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import dlscale
from dlscale.api import _hold_out
from dlscale.errors import Stopped, UserError
from dlscale.runs import checkpoint
from dlscale.training import config as config_mod
from dlscale.training.callbacks import EarlyStopping, Monitor, PlateauLR, resolve_mode

RNG = np.random.default_rng(0)
X = RNG.normal(size=(600, 8)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)
TEST = (X[:100], Y[:100])
# a min_delta no change can beat: the first validation is the best, every later one waits
PLATEAU = dict(epochs=10, batch_size=120, lr=0.01, schedule="constant", warmup_steps=0, devices="cpu",
               precision="fp32", verbose=False, min_delta=10.0)
STEPS_PER_EPOCH = 4  # 480 training samples (validation_split=0.2 of 600) / 120


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def _record(step, **values):
    return {"kind": "val", "step": step, "epoch": 0, **values}


# --------------------------------------------------------------------------- the pieces


def test_monitor_mode_auto_maximises_accuracy_and_r2_and_minimises_losses():
    assert resolve_mode("val_accuracy", "auto") == "max" and resolve_mode("val_r2", "auto") == "max"
    assert resolve_mode("val_loss", "auto") == "min" and resolve_mode("val_mae", "auto") == "min"
    assert resolve_mode("val_accuracy", "min") == "min"


def test_early_stopping_counts_validations_without_improvement_beyond_min_delta():
    config = config_mod.TrainConfig(monitor="val_accuracy", min_delta=0.01, early_stop_patience=2)
    monitor = Monitor(config, {})
    early = EarlyStopping(monitor, 2, {})
    fired = []
    for step, accuracy in enumerate([0.5, 0.7, 0.705, 0.69, 0.8, 0.8, 0.8], 1):
        monitor.update(_record(step, val_accuracy=accuracy))
        early.on_validation({})
        fired.append(early.fired)
    assert fired == [False, False, False, True, False, False, True]
    assert (monitor.best, monitor.best_step) == (0.8, 5)


def test_monitor_names_the_keys_it_can_watch_when_the_metric_is_missing():
    monitor = Monitor(config_mod.TrainConfig(monitor="val_r2"), {})
    with pytest.raises(UserError, match="--monitor val_r2 is not in the validation record; monitor one of val_accuracy, val_loss"):
        monitor.update(_record(1, val_loss=0.5, val_accuracy=0.9))


def test_plateau_scales_the_schedule_and_the_current_rate():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    monitor = Monitor(config_mod.TrainConfig(), {})
    plateau = PlateauLR(monitor, scheduler, patience=2, factor=0.1, saved={})
    for step, loss in enumerate([1.0, 1.0, 1.0], 1):
        monitor.update(_record(step, val_loss=loss))
        plateau.on_validation({})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05) and plateau.wait == 0
    optimizer.step()
    scheduler.step()  # the schedule keeps working on the lowered base rate
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05) and scheduler.base_lrs == [pytest.approx(0.1)]


@pytest.mark.parametrize("values, message", [
    ({"early_stop_patience": 0}, "--early-stop-patience must be at least 1"),
    ({"reduce_lr_factor": 1.5}, "--reduce-lr-factor .* must be in"),
    ({"min_delta": -1.0}, "--min-delta must be"),
    ({"monitor_mode": "up"}, "--monitor-mode must be one of auto, min, max"),
    ({"logger": "wandb"}, "--logger must be one of none, tensorboard"),
])
def test_bad_callback_settings_are_refused_naming_the_flag(values, message):
    with pytest.raises(UserError, match=message):
        config_mod.build({}, **values)


def test_validation_split_holds_out_the_last_fraction():
    train, val = _hold_out((X, Y), None, 0.1)
    assert (len(train), len(val)) == (540, 60)
    assert torch.equal(val.tensors[0], torch.from_numpy(X[540:]))
    with pytest.raises(UserError, match="either val_data or validation_split"):
        _hold_out((X, Y), (X, Y), 0.1)
    with pytest.raises(UserError, match="brings its own splits"):
        dlscale.fit("mlp", "digits", validation_split=0.1)
    with pytest.raises(UserError, match=r"in \(0, 1\)"):
        _hold_out((X, Y), None, 1.0)


def test_a_flag_that_needs_validation_is_refused_on_data_without_it(tmp_path):
    with pytest.raises(UserError, match="--keep-best needs a validation set"):
        dlscale.fit(_net(), (X, Y), keep_best=True, run_dir=str(tmp_path / "r"), **{**PLATEAU, "min_delta": 0.0})
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="--early-stop-patience needs a validation after each epoch, but eval_every_epoch is off"):
        dlscale.fit("mlp", "digits", eval_every_epoch=False, early_stop_patience=2, run_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_callbacks_are_refused_with_several_worker_processes():
    with pytest.raises(UserError, match="nproc > 1"):
        dlscale.fit("mlp", "digits", nproc=2, callbacks=[object()])


def test_the_cli_refuses_a_bad_patience_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dlscale", "train", "--early-stop-patience", "0", "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --early-stop-patience must be at least 1 (validations without improvement), got 0"]


# --------------------------------------------------------------------------- in a run


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory):
    """Early stopping (patience 3), --keep-best and plateau (patience 1) on a metric that
    never improves after the first validation."""
    run_dir = tmp_path_factory.mktemp("plateau") / "r"
    return dlscale.fit(_net(), (X, Y), validation_split=0.2, test_data=TEST, run_dir=str(run_dir),
                       early_stop_patience=3, reduce_lr_patience=1, keep_best=True, **PLATEAU)


def test_early_stopping_ends_the_run_as_a_finished_one(plateau_run):
    summary = plateau_run.summary
    assert summary["steps"] == 4 * STEPS_PER_EPOCH < 10 * STEPS_PER_EPOCH  # validations 2, 3, 4 did not improve
    assert summary["stopped_early"] is True
    assert (summary["monitor"], summary["best_step"]) == ("val_loss", STEPS_PER_EPOCH)
    val = [r for r in plateau_run.history if r["kind"] == "val"]
    assert summary["best_value"] == val[0]["val_loss"]
    assert (summary["val_loss"], summary["val_accuracy"]) == (val[-1]["val_loss"], val[-1]["val_accuracy"])
    assert plateau_run.val_metrics == {"val_loss": val[-1]["val_loss"], "val_accuracy": val[-1]["val_accuracy"]}
    assert json.loads((plateau_run.run_dir / "summary.json").read_text())["stopped_early"] is True
    assert checkpoint.newest_checkpoint(plateau_run.run_dir).name == f"step-{4 * STEPS_PER_EPOCH}"


def test_keep_best_tests_the_best_checkpoint_kept_out_of_the_rotation(plateau_run):
    run_dir, model = plateau_run.run_dir, plateau_run.model
    best = checkpoint.checkpoints_dir(run_dir) / "best"
    assert json.loads((best / "meta.json").read_text())["step"] == STEPS_PER_EPOCH
    assert [step for step, _ in checkpoint.complete_steps(run_dir)] == [4 * STEPS_PER_EPOCH]  # best is no step-N
    from_best, final = _net(), _net()
    checkpoint.load_model(best, from_best)
    checkpoint.load_model(checkpoint.newest_checkpoint(run_dir), final)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), from_best.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), final.state_dict().values()))
    with torch.no_grad():
        logits = from_best(torch.from_numpy(TEST[0]))
    labels = torch.from_numpy(TEST[1])
    assert plateau_run.summary["test_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), abs=1e-5)
    assert plateau_run.summary["test_accuracy"] == int((logits.argmax(-1) == labels).sum()) / len(labels)


def test_plateau_lowers_the_learning_rate_after_each_validation_without_improvement(plateau_run):
    lr = {r["step"]: r["lr"] for r in plateau_run.history if r["kind"] == "train"}  # the rate of the next step
    assert lr[STEPS_PER_EPOCH * 2 - 1] == pytest.approx(0.01)
    assert lr[STEPS_PER_EPOCH * 2 + 1] == pytest.approx(0.001)
    assert lr[STEPS_PER_EPOCH * 3 + 1] == pytest.approx(0.0001)


class Recorder:
    """A user callback that writes down its calls and stops the run after ``stop_at`` steps."""

    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def on_train_start(self, run):
        self.calls.append(("train_start", run.step, run.run_dir.name))

    def on_step_end(self, run, step, logs):
        assert step == run.step and set(logs) == {"loss", "lr"} and run.optimizer.param_groups[0]["lr"] == logs["lr"]
        self.calls.append(("step_end", step))
        if step == self.stop_at:
            run.stop_training = True

    def on_epoch_end(self, run, epoch, logs):
        self.calls.append(("epoch_end", epoch, "val_loss" in logs, isinstance(run.model, torch.nn.Sequential)))

    def on_train_end(self, run, summary):
        self.calls.append(("train_end", summary["steps"]))


def test_user_callbacks_hooks_in_order_and_stop_training_from_a_callback(tmp_path):
    recorder = Recorder(stop_at=6)  # mid-way through the second epoch
    result = dlscale.fit(_net(), (X[:480], Y[:480]), val_data=(X[480:], Y[480:]), run_dir=str(tmp_path / "r"),
                         callbacks=[recorder], **PLATEAU)
    assert recorder.calls == [
        ("train_start", 0, "r"),
        *[("step_end", step) for step in range(1, 5)],
        ("epoch_end", 0, True, True),
        ("step_end", 5), ("step_end", 6),
        ("epoch_end", 1, False, True),  # cut short: no validation, as Keras
        ("train_end", 6),
    ]
    summary = result.summary
    assert summary["steps"] == 6 and summary["stopped_early"] is False and summary["monitor"] is None
    assert [r["step"] for r in result.history if r["kind"] == "train"][-1] == 6  # the last steps are logged
    assert checkpoint.newest_checkpoint(result.run_dir).name == "step-6"
    # no test data: the last validation's figures are still in the summary
    val = [r for r in result.history if r["kind"] == "val"]
    assert summary["test_loss"] is None and summary["val_loss"] == val[-1]["val_loss"] is not None


class StopAfterEpoch:
    """Sends this process SIGTERM at the end of an epoch: the run saves after its next step and stops."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, run, epoch, logs):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_early_stopping_plateau_and_best_survive_a_resume(tmp_path, plateau_run):
    options = dict(validation_split=0.2, test_data=TEST, early_stop_patience=3, reduce_lr_patience=1, keep_best=True, **PLATEAU)
    run_dir = str(tmp_path / "r")
    with pytest.raises(Stopped):  # after validation 2 (one lr reduction, one validation waited)
        dlscale.fit(_net(), (X, Y), run_dir=run_dir, callbacks=[StopAfterEpoch(1)], **options)
    assert checkpoint.newest_checkpoint(tmp_path / "r").name == f"step-{2 * STEPS_PER_EPOCH + 1}"
    resumed = dlscale.fit(_net(), (X, Y), run_dir=run_dir, resume=run_dir, **options)
    keys = ("steps", "stopped_early", "best_step", "best_value", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
    assert {k: resumed.summary[k] for k in keys} == pytest.approx({k: plateau_run.summary[k] for k in keys}, abs=1e-6)
    lrs = [[r["lr"] for r in run.history if r["kind"] == "train"] for run in (resumed, plateau_run)]
    assert lrs[0] == pytest.approx(lrs[1])
