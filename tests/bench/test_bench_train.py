import json

import pytest
import torch

from dlscale.bench.train import Setting, Workload, find_max_batch, measure
from dlscale.cli import main
from dlscale.models import model_info

ROW_KEYS = {"model", "batch_size", "precision", "compiled", "samples_per_second", "tokens_per_second", "seq_len",
            "flops_per_sample", "flops_per_token", "achieved_flops_per_second", "mfu", "mfu_measured_peak",
            "peak_memory_bytes", "step_time_median_s", "step_time_spread_s", "warmup_s"}


def json_line(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_bench_train_reports_every_contract_key_with_provenance(tmp_path, capsys):
    assert main(["bench", "train", "--model", "mlp", "--batch-size", "32", "--steps", "4", "--repeats", "3",
                 "--run-dir", str(tmp_path / "b"), "--json"]) == 0
    result = json_line(capsys)
    (row,) = result["results"]
    assert ROW_KEYS <= set(row) and ROW_KEYS <= set(result)  # the first row is repeated flat
    assert row["samples_per_second"] == pytest.approx(32 / row["step_time_median_s"])
    assert len(row["step_times_s"]) == 3 and row["step_time_spread_s"] == pytest.approx(max(row["step_times_s"]) - min(row["step_times_s"]))
    assert row["achieved_flops_per_second"] == pytest.approx(row["flops_per_sample"] * row["samples_per_second"])
    assert row["mfu"] is None  # no datasheet peak for a CPU
    assert 0 < row["mfu_measured_peak"] < 5
    assert row["peak_memory_bytes"] > 0
    assert result["provenance"]["torch"] == torch.__version__ and result["provenance"]["date"]
    assert json.loads((tmp_path / "b" / "bench-train.json").read_text()) == result


def test_measure_runs_warmup_then_repeats_times_steps():
    calls = []
    info = model_info("mlp")
    workload = Workload(info, info.default_input_shape, info.default_num_classes)
    row = measure(workload, Setting(8, "fp32", False, False), torch.device("cpu"), steps=5, warmup=2, repeats=3,
                  on_step=lambda: calls.append(1))
    assert len(calls) == 2 + 5 * 3 and row["loss_finite"]


def test_language_models_report_tokens(tmp_path, capsys):
    assert main(["bench", "train", "--model", "gpt-tiny", "--data", "synthetic:32", "--batch-size", "4",
                 "--steps", "2", "--repeats", "2", "--run-dir", str(tmp_path / "b"), "--json"]) == 0
    row = json_line(capsys)["results"][0]
    assert row["seq_len"] == 32 and row["tokens_per_second"] == pytest.approx(row["samples_per_second"] * 32)
    assert row["flops_per_token"] == pytest.approx(row["flops_per_sample"] / 32)


def test_find_max_batch_doubles_then_bisects():
    tried = []

    def fits_below_38(batch):
        tried.append(batch)
        return batch <= 37

    assert find_max_batch(fits_below_38) == 37
    assert tried[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert find_max_batch(lambda b: True, limit=100) == 100
    assert find_max_batch(lambda b: False) is None


def test_auto_batch_size_stops_at_the_limit_when_memory_allows(tmp_path, capsys):
    assert main(["bench", "train", "--model", "mlp", "--batch-size", "auto", "--max-batch", "48", "--memory-cap", "20",
                 "--steps", "2", "--repeats", "1", "--run-dir", str(tmp_path / "b"), "--json"]) == 0
    result = json_line(capsys)
    assert result["auto_batch"] and result["results"][0]["batch_size"] == 48


def test_auto_batch_size_under_a_tiny_cap_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "train", "--model", "mlp", "--batch-size", "auto", "--memory-cap", "0.01",
                 "--run-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: not even a batch of 1 fits") and sum(l.startswith("error") for l in err) == 1
    assert not (tmp_path / "b").exists()  # a failed benchmark leaves no run directory


def test_tune_orders_settings_fastest_first(tmp_path, capsys):
    assert main(["bench", "train", "--model", "mlp", "--tune", "--no-compile", "--batch-size", "32", "--steps", "3",
                 "--repeats", "2", "--run-dir", str(tmp_path / "b"), "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out.strip().splitlines()[-1])["results"]
    assert {(r["batch_size"], r["precision"]) for r in rows} == {(16, "fp32"), (16, "bf16"), (32, "fp32"), (32, "bf16")}
    speeds = [r["samples_per_second"] for r in rows]
    assert speeds == sorted(speeds, reverse=True)
    assert "fastest safe setting: batch" in captured.err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--batch-size", "lots"], "--batch-size must be a whole number or 'auto'"),
        (["--data", "digits"], "bench train runs on synthetic data"),
        (["--model", "gpt-tiny", "--data", "synthetic:3x32x32"], "needs synthetic:SEQ_LEN"),
        (["--model", "nope"], "unknown model"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, fragment):
    assert main(["bench", "train", "--run-dir", str(tmp_path / "b"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_bench_train_at_its_defaults_times_the_settings_train_would_use(tmp_path, capsys):
    """One resolver decides "auto" for both: seed this machine's CPU choice for cnn with
    bf16 + channels_last (a choice the old bench, fixed at fp32 on CPUs, never made) and
    both commands must run exactly that, with compile off as train picks it on a CPU."""
    import tomllib

    from dlscale.training import autotune, settings

    info = model_info("cnn")
    entry = "|".join([settings.probe_key("cnn", info.default_input_shape, info.default_num_classes), "auto", "None",
                      "x".join(map(str, (64, *info.default_input_shape)))])
    path = autotune.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = path.read_text() if path.exists() else None
    try:
        path.write_text(json.dumps({"choices": {entry: {
            "precision": "bf16", "channels_last": True, "step_ms": {"fp32": 2.0, "bf16+channels_last": 1.0}, "busy": False,
        }}}))
        assert main(["train", "--model", "cnn", "--data", "synthetic", "--max-steps", "1", "--batch-size", "64",
                     "--run-dir", str(tmp_path / "run")]) == 0
        trained = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
        capsys.readouterr()
        assert main(["bench", "train", "--model", "cnn", "--batch-size", "64", "--steps", "1", "--repeats", "1",
                     "--warmup", "0", "--run-dir", str(tmp_path / "bench"), "--json"]) == 0
        row = json_line(capsys)
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(saved)
    assert (trained["precision"], trained["compile"], trained["channels_last"]) == ("bf16", False, True)
    assert (row["precision"], row["compiled"], row["channels_last"]) == ("bf16", False, True)
