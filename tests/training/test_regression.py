"""Float targets are regression: MSE (or MAE, Huber) training, MAE and R² instead of accuracy."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import dlscale
from dlscale.data.npz import load_npz
from dlscale.errors import UserError
from dlscale.models.flops import count, loss_for
from dlscale.progress import TrainProgress
from dlscale.training import config as config_mod
from dlscale.data.loader import Feed
from dlscale.training.evaluate import evaluate
from dlscale.training.step import build_stepper
from tests.conftest import last_json, run_cli

FAST = {"batch_size": 32, "device": "cpu", "precision": "fp32", "verbose": False}


def linear_problem(n=480, features=6, outputs=None, seed=0):
    """y = x @ w + noise, as (N,) targets or, with ``outputs``, (N, outputs)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(size=(features, outputs or 1))
    y = x @ w + 0.05 * rng.normal(size=(n, outputs or 1))
    return x, (y if outputs else y[:, 0]).astype(np.float32)


def r2_score(pred: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's r2_score: 1 - SSE/SST per output column, averaged."""
    pred, y = pred.reshape(len(y), -1), y.reshape(len(y), -1)
    return float(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))


def val_records(result):
    return [r for r in result.history if r["kind"] == "val"]


def test_a_linear_problem_trains_to_a_high_r2_with_mae_reported(tmp_path):
    x, y = linear_problem()
    result = dlscale.fit("mlp", (x[:360], y[:360]), val_data=(x[360:420], y[360:420]), test_data=(x[420:], y[420:]),
                         epochs=10, run_dir=str(tmp_path / "r"), **FAST)
    s = result.summary
    assert s["test_r2"] > 0.9 and s["test_mae"] > 0 and s["test_accuracy"] is None
    assert result.model.net[-1].out_features == 1
    pred = result.model.cpu().eval()(torch.from_numpy(x[420:])).detach().numpy()
    assert s["test_r2"] == pytest.approx(r2_score(pred, y[420:]), rel=1e-4)
    assert s["test_mae"] == pytest.approx(float(np.abs(pred[:, 0] - y[420:]).mean()), rel=1e-4)
    last = val_records(result)[-1]
    assert {"val_loss", "val_mae", "val_r2"} <= set(last) and "val_accuracy" not in last
    assert json.loads((tmp_path / "r/summary.json").read_text())["test_r2"] == s["test_r2"]


def test_two_target_columns_give_a_model_with_two_outputs(tmp_path):
    x, y = linear_problem(outputs=2)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    result = dlscale.fit(model, (x[:400], y[:400]), test_data=(x[400:], y[400:]), epochs=10, lr=0.01,
                         run_dir=str(tmp_path / "r"), **FAST)
    assert result.summary["test_r2"] > 0.9
    pred = model.eval()(torch.from_numpy(x[400:])).detach().numpy()
    assert result.summary["test_r2"] == pytest.approx(r2_score(pred, y[400:]), rel=1e-4)


def test_one_output_against_flat_targets_is_compared_value_for_value():
    out, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.0, 1.0, 1.0])
    assert loss_for("values", "mse")(out, y).item() == pytest.approx((0 + 1 + 9) / 3)  # not (B, B) broadcast
    assert loss_for("values", "mae")(out, y).item() == pytest.approx((0 + 1 + 3) / 3)
    assert loss_for("values", "huber")(out, y).item() == pytest.approx((0 + 0.5 + 2.5) / 3)  # quadratic below 1, linear above
    with pytest.raises(UserError, match="outputs 2 values per sample but the targets have 1"):
        loss_for("values", "mse")(torch.zeros(3, 2), y)


def test_the_flop_count_runs_the_regression_loss():
    model = torch.nn.Linear(4, 1)
    flops = count(model, torch.zeros(2, 4), torch.zeros(2), loss_for("values", "mae"))
    assert flops is not None and flops.forward_per_sample == 2 * 4


def test_an_npz_with_float_targets_trains_from_the_cli(tmp_path):
    x, y = linear_problem(n=600, features=5, outputs=2)
    np.savez(tmp_path / "f.npz", x=x, y=y)
    done = run_cli(["train", "--data", "f.npz", "--model", "mlp", "--max-steps", "50", "--run-dir", "r", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = last_json(done.stdout)
    assert summary["test_accuracy"] is None and summary["test_r2"] > 0.5 and summary["test_mae"] > 0
    assert "test R²" in done.stderr and "test accuracy" not in done.stderr
    saved = config_mod.build(config_mod.read_toml(tmp_path / "r/config.toml"))  # re-read as --config and workers do
    assert saved.loss == "mse" and saved.metrics == "mae,r2"


def test_evaluation_sums_are_exact_however_the_samples_are_split():
    """Workers add up their shares' sums; batches of any size must add up to the whole."""
    x, y = linear_problem(n=100, outputs=2)
    model = torch.nn.Linear(6, 2)
    config = config_mod.build(precision="fp32", compile=False, channels_last=False, lr=0.01, weight_decay=0.0, warmup_steps=0)
    stepper = build_stepper(config, model, torch.device("cpu"), 1, loss_for("values"))
    data = Feed(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)))
    whole = evaluate(stepper, data, 100, lambda: None, "values")
    assert evaluate(stepper, data, 7, lambda: None, "values") == pytest.approx(whole, rel=1e-6)  # the loss sums in float32
    pred = model(torch.from_numpy(x)).detach().numpy()
    assert whole["r2"] == pytest.approx(r2_score(pred, y), rel=1e-6)
    assert whole["mae"] == pytest.approx(float(np.abs(pred - y).mean()), rel=1e-6)
    assert whole["mse"] == pytest.approx(whole["loss"]) and "accuracy" not in whole


def test_an_npz_splits_say_values_and_their_column_count(tmp_path):
    x, y = linear_problem(n=50)
    np.savez(tmp_path / "f.npz", x=x, y=y)
    splits = load_npz(tmp_path / "f.npz", "f")
    assert splits.targets == "values" and splits.num_classes == 1
    assert splits.train.tensors[1].dtype == torch.float32
    assert torch.equal(torch.sort(torch.cat([splits.train.tensors[1], splits.val.tensors[1], splits.test.tensors[1]]))[0],
                       torch.sort(torch.from_numpy(y))[0])  # targets used as given, not standardised
    np.savez(tmp_path / "c.npz", x=x, y=(y > 0).astype(np.int64))
    assert load_npz(tmp_path / "c.npz", "c").targets == "classes"


def test_non_finite_targets_are_refused_naming_the_sample(tmp_path):
    x, y = linear_problem(n=64)
    y[5] = np.nan
    with pytest.raises(UserError, match="non-finite target .* at sample 5"):
        dlscale.fit("mlp", (x, y), max_steps=1, run_dir=str(tmp_path / "r"), **FAST)
    np.savez(tmp_path / "f.npz", x=x, y=y)
    with pytest.raises(UserError, match="y in .* non-finite target .* at sample 5"):
        load_npz(tmp_path / "f.npz", "f")


def test_mae_loss_trains_and_is_the_reported_loss(tmp_path):
    x, y = linear_problem(n=320)
    result = dlscale.fit("mlp", (x[:256], y[:256]), val_data=(x[256:], y[256:]), epochs=2, loss="mae",
                         run_dir=str(tmp_path / "r"), **FAST)
    last = val_records(result)[-1]
    assert last["val_loss"] == pytest.approx(last["val_mae"])  # L1 loss is the MAE
    assert 'loss = "mae"' in (tmp_path / "r/config.toml").read_text()


@pytest.mark.parametrize("targets, options, message", [
    ("values", {"loss": "cross_entropy"}, "loss cross_entropy is for classes but the data holds float regression targets"),
    ("classes", {"loss": "mse"}, "loss mse is for values but the data holds integer class labels"),
    ("values", {"metrics": ["accuracy"]}, "metric accuracy does not fit data holding float regression targets"),
    ("classes", {"metrics": ["r2"]}, "metric r2 does not fit data holding integer class labels"),
    ("values", {"target_accuracy": 0.9}, "--target-accuracy needs class labels"),
])
def test_a_loss_or_metric_that_does_not_fit_the_targets_is_refused(tmp_path, targets, options, message):
    x, y = linear_problem(n=64)
    if targets == "classes":
        y = (y > 0).astype(np.int64)
    with pytest.raises(UserError, match=message):
        dlscale.fit("mlp", (x, y), max_steps=1, run_dir=str(tmp_path / "r"), **FAST, **options)


def test_unknown_loss_and_metric_names_are_refused_by_the_config():
    with pytest.raises(UserError, match="--loss must be one of"):
        config_mod.build(loss="l2")
    with pytest.raises(UserError, match="--metrics must be one of"):
        config_mod.build(metrics=["mae", "rmse"])


def test_chosen_metrics_are_what_the_records_carry(tmp_path):
    x, y = linear_problem(n=320)
    result = dlscale.fit("mlp", (x[:256], y[:256]), val_data=(x[256:288], y[256:288]), test_data=(x[288:], y[288:]),
                         epochs=1, metrics=["mse"], run_dir=str(tmp_path / "r"), **FAST)
    last = val_records(result)[-1]
    assert {k for k in last if k.startswith("val_")} == {"val_loss", "val_mse"}
    assert last["val_mse"] == pytest.approx(last["val_loss"])  # the default loss is MSE
    assert result.summary["test_mae"] is None and result.summary["test_r2"] is None
    assert 'metrics = "mse"' in (tmp_path / "r/config.toml").read_text()


def test_classifiers_keep_accuracy_and_no_regression_figures(tmp_path):
    x, y = linear_problem(n=256)
    labels = (y > 0).astype(np.int64)
    result = dlscale.fit("mlp", (x[:192], labels[:192]), val_data=(x[192:], labels[192:]), test_data=(x[192:], labels[192:]),
                         epochs=1, run_dir=str(tmp_path / "r"), **FAST)
    assert result.summary["test_accuracy"] is not None and result.summary["test_mae"] is None
    assert {k for k in val_records(result)[-1] if k.startswith("val_")} == {"val_loss", "val_accuracy"}


def test_the_epoch_line_and_summary_show_mae_and_r2():
    from rich.console import Console

    console = Console(record=True, width=200)
    progress = TrainProgress(console)
    progress.epoch_line({"epoch": 0, "step": 5, "train_loss": 0.5, "val_loss": 0.25, "val_mae": 0.4, "val_r2": 0.91}, 3)
    line = console.export_text()
    assert "val MAE 0.4000" in line and "val R² 0.9100" in line and "acc" not in line
