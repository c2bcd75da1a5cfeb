"""`dlscale bench infer`: rows per batch size x precision x mode, honest latency figures,
a trained run's test accuracy beside each setting, skipped settings kept as rows, and
the CLI contract (one JSON object last on stdout, one `error:` line on a mistake).

Small models (mlp, gpt-tiny on short sequences) and tiny batches keep the file fast;
one test compiles (on CPU, seconds), CUDA paths run only where there is a GPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

import dlscale
from dlscale.bench import infer, targets
from dlscale.bench.reliability import overlap
from dlscale.cli import main
from dlscale.errors import UserError

CPU = torch.device("cpu")
ROW_KEYS = {
    "batch_size", "precision", "device", "mode", "predictions_per_second", "latency_p50_ms",
    "latency_p90_ms", "latency_p99_ms", "test_accuracy", "flops_per_prediction", "tokens_per_second", "skipped",
}
NUMBERS = ("predictions_per_second", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms")


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    """`dlscale ARGV` in-process, with sys.argv as a shell would set it (provenance reads it)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["dlscale", *argv])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def settings(**changes) -> infer.InferSettings:
    values = {"batch_sizes": (1, 4), "precisions": ("fp32",), "modes": ("eager",), "batches": 50, "warmup": 2}
    return infer.InferSettings(**{**values, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """An mlp trained two epochs on digits, on the CPU."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    dlscale.fit("mlp", "digits", epochs=2, run_dir=str(run_dir), device="cpu", verbose=False)
    return run_dir


@pytest.fixture(scope="module")
def run_bench(trained, tmp_path_factory) -> dict:
    """`bench infer --run` of the trained mlp at fp32, bf16 and int8, with --json."""
    out_dir = tmp_path_factory.mktemp("bench") / "infer"
    argv = ["bench", "infer", "--run", str(trained), "--batch-sizes", "1,8", "--precisions", "fp32,bf16,int8",
            "--device", "cpu", "--warmup", "2", "--run-dir", str(out_dir), "--json"]
    rc, out, err = run_main(argv)
    assert rc == 0, err
    return {"out": out, "err": err, "dir": out_dir, "summary": json.loads((trained / "summary.json").read_text())}


def rows_by(rows: list[dict], precision: str, mode: str = "eager") -> list[dict]:
    return [r for r in rows if r["precision"] == precision and r["mode"] == mode]


# --------------------------------------------------------------------------- rows and timing


def test_a_row_for_each_batch_size_and_precision_with_consistent_figures():
    rows = infer.benchmark(targets.zoo_target("mlp"), settings(precisions=("fp32", "bf16", "int8")), CPU)
    assert [(r["precision"], r["batch_size"]) for r in rows] == [
        (p, b) for p in ("fp32", "bf16", "int8") for b in (1, 4)
    ]
    for row in rows:
        assert ROW_KEYS <= row.keys()
        assert row["skipped"] is None and row["mode"] == "eager" and row["device"] == "cpu"
        assert 0 < row["latency_p50_ms"] <= row["latency_p90_ms"] <= row["latency_p99_ms"]
        # predictions/s is batch size over the mean latency of the timed batches
        assert row["predictions_per_second"] == pytest.approx(row["batch_size"] / (row["latency_mean_ms"] / 1e3))
        assert row["test_accuracy"] is None  # no trained run given
        assert row["timed_batches"] == 50
        # mlp on 1x8x8: 64*256 + 256*256 + 256*10 multiply-adds, 2 FLOPs each
        assert row["flops_per_prediction"] == 2 * (64 * 256 + 256 * 256 + 256 * 10)
        assert row["tokens_per_second"] is None
    assert "convolutions" in rows_by(rows, "int8")[0]["note"]


def test_every_timed_batch_is_a_model_call():
    target = targets.zoo_target("mlp")
    calls = []
    target.model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    rows = infer.benchmark(target, settings(batch_sizes=(1, 3), precisions=("fp32", "bf16"), batches=60, warmup=3), CPU)
    # the hook travels with the bf16 copy: 2 precisions x (3 warm-up + 60 timed) per batch size
    # (the FLOP count adds calls of batch 2 on a meta copy)
    assert calls.count(1) == calls.count(3) == 2 * (3 + 60)
    assert all(r["timed_batches"] == 60 and r["warmup_batches"] == 3 for r in rows)


def test_fp16_on_cpu_is_a_skipped_row_with_its_reason():
    rows = infer.benchmark(targets.zoo_target("mlp"), settings(precisions=("fp16", "fp32")), CPU)
    skipped = rows_by(rows, "fp16")
    assert len(skipped) == 2
    for row in skipped:
        assert "fp16" in row["skipped"] and "CPU" in row["skipped"]
        assert all(row[key] is None for key in NUMBERS)
    assert all(r["skipped"] is None for r in rows_by(rows, "fp32"))


def test_language_models_time_token_ids_and_report_tokens_per_second():
    rows = infer.benchmark(targets.zoo_target("gpt-tiny", (16,)), settings(batch_sizes=(2,)), CPU)
    (row,) = rows
    assert row["seq_len"] == 16
    assert row["tokens_per_second"] == pytest.approx(16 * row["predictions_per_second"])
    assert row["flops_per_prediction"] > 0


@pytest.mark.timeout(300)
def test_compiled_mode_runs_and_keeps_the_run_accuracy(trained):
    """torch.compile on CPU: the compile lands in warm-up, and the compiled model (fed a
    padded last batch) scores the same test accuracy as eager."""
    target = targets.run_target(trained)
    rows = infer.benchmark(target, settings(batch_sizes=(2,), modes=("eager", "compiled")), CPU)
    eager, compiled = rows
    assert compiled["mode"] == "compiled" and compiled["skipped"] is None, compiled["skipped"]
    assert compiled["compile_mode"] == "default" and eager["compile_mode"] is None
    assert compiled["warmup_seconds"] > 0 and compiled["timed_batches"] == 50
    assert compiled["graph_breaks"] == 0 and eager["graph_breaks"] is None  # the whole mlp compiled
    assert compiled["test_accuracy"] == pytest.approx(eager["test_accuracy"], abs=1e-9)


# --------------------------------------------------------------------------- a trained run


def test_run_reports_the_runs_test_accuracy_for_fp32_eager(run_bench):
    result = json.loads(run_bench["out"].strip().splitlines()[-1])
    for row in rows_by(result["results"], "fp32"):
        assert row["test_accuracy"] == pytest.approx(run_bench["summary"]["test_accuracy"], abs=1e-6)
    # once per precision x mode, repeated across batch sizes
    for precision in ("fp32", "bf16", "int8"):
        accuracies = {r["test_accuracy"] for r in rows_by(result["results"], precision)}
        assert len(accuracies) == 1 and None not in accuracies


def test_int8_and_bf16_accuracy_stay_close_to_fp32(run_bench):
    rows = json.loads(run_bench["out"].strip().splitlines()[-1])["results"]
    fp32 = rows_by(rows, "fp32")[0]["test_accuracy"]
    assert fp32 > 0.5  # two epochs of mlp on digits learn something
    for precision in ("int8", "bf16"):
        row = rows_by(rows, precision)[0]
        assert row["skipped"] is None
        assert abs(row["test_accuracy"] - fp32) <= 0.03, (precision, row["test_accuracy"], fp32)


def test_json_last_line_carries_provenance_and_matches_the_result_file(run_bench):
    lines = run_bench["out"].strip().splitlines()
    result = json.loads(lines[-1])
    provenance = result["provenance"]
    assert provenance["torch"] == torch.__version__
    assert provenance["command"].startswith("dlscale bench infer --run")
    assert provenance["date"] and "git_commit" in provenance and "dlscale" in provenance
    assert result["kind"] == "infer" and result["model"] == "mlp" and result["run"]
    assert len(result["results"]) == 2 * 3
    saved = run_bench["dir"] / "bench-infer.json"
    assert json.loads(saved.read_text()) == result
    # the human output: a table on stderr, the fastest setting and its accuracy
    err = run_bench["err"]
    assert "predictions/s" in err and "p99 ms" in err and "test acc" in err
    # a winner with its accuracy, or, on a machine loaded enough that the two fastest settings'
    # repeats overlap (CI runs two test files at once), no winner
    ranked = sorted((r for r in result["results"] if not r["skipped"]), key=lambda r: -r["predictions_per_second"])
    if overlap(ranked[0], ranked[1], "predictions_per_second"):
        assert "fastest: no clear winner between" in err, err
    else:
        assert "fastest:" in err and "test accuracy" in err, err
    assert "\x1b[" not in err  # no terminal: no escape codes, no progress bar


def test_a_language_model_run_reports_next_token_accuracy(tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 500)
    run_dir = tmp_path / "lm"
    fit = dlscale.fit("gpt-tiny", str(text), max_steps=3, run_dir=str(run_dir), device="cpu", verbose=False)
    rows = infer.benchmark(targets.run_target(run_dir), settings(batch_sizes=(1,)), CPU)
    assert rows[0]["test_accuracy"] == pytest.approx(fit.summary["test_accuracy"], abs=1e-6)
    assert rows[0]["tokens_per_second"] == pytest.approx(64 * rows[0]["predictions_per_second"])


def test_load_trained_run_returns_spec_model_and_splits(trained):
    spec, model, splits = targets.load_trained_run(trained)
    assert spec["model"] == "mlp" and splits.name == "digits" and splits.test is not None
    assert not model.training


def test_a_run_without_weights_or_checkpoint_is_a_user_error(trained, tmp_path):
    copy = tmp_path / "nockpt"
    copy.mkdir()
    for name in ("config.toml", "model.json"):
        (copy / name).write_text((trained / name).read_text())
    with pytest.raises(UserError, match="neither model.safetensors nor a complete checkpoint"):
        targets.load_trained_run(copy)


class OwnNet(torch.nn.Module):
    """A user's module, trained on a named data set: bench infer --run rebuilds it by import path."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.classes = classes
        self.linear = torch.nn.Linear(64, classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_a_run_of_a_users_own_module_is_timed_with_its_accuracy(tmp_path):
    fit = dlscale.fit(OwnNet(), "digits", max_steps=20, run_dir=str(tmp_path / "own"), device="cpu", verbose=False)
    target = targets.run_target(tmp_path / "own")
    assert target.name.endswith(":OwnNet") and target.test is not None
    rows = infer.benchmark(target, settings(batch_sizes=(8,)), CPU)
    assert rows[0]["test_accuracy"] == pytest.approx(fit.summary["test_accuracy"], abs=1e-6)


# --------------------------------------------------------------------------- the CLI


def test_cli_model_run_notes_skips_and_writes_the_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["bench", "infer", "--model", "mlp", "--batch-sizes", "2", "--precisions", "fp32,fp16",
                             "--device", "cpu", "--warmup", "1", "--json"])
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert [r["precision"] for r in result["results"]] == ["fp32", "fp16"]
    assert result["results"][1]["skipped"]
    assert "note: skipped fp16 eager" in err and "skipped" in err
    (bench_dir,) = (tmp_path / "runs").iterdir()
    assert bench_dir.name.endswith("bench-infer-mlp")
    assert json.loads((bench_dir / "bench-infer.json").read_text())["results"] == result["results"]


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--model", "mlp", "--batches", "10"], ("--batches", "50")),
        (["--model", "mlp", "--precisions", "fp32,fp8"], ("'fp8'", "int8")),
        (["--model", "mlp", "--modes", "jit"], ("'jit'", "compiled")),
        (["--model", "mlp", "--batch-sizes", "1,x"], ("--batch-sizes",)),
        (["--model", "nosuchnet"], ("nosuchnet",)),
        (["--run", "EMPTY"], ("no run there",)),
        (["--run", "EMPTY", "--input-shape", "1x8x8"], ("--input-shape",)),
        (["--run", "EMPTY", "--model", "mlp"], ("--model",)),
    ],
)
def test_mistakes_are_one_error_line_and_exit_2(argv, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    rc, out, err = run_main(["bench", "infer", *argv])
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "runs").exists()  # nothing written for a refused command


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(300)
def test_cuda_precisions_and_cuda_graphs():
    cuda = torch.device("cuda")
    rows = infer.benchmark(
        targets.zoo_target("cnn"),
        settings(batch_sizes=(1, 8), precisions=("fp32", "bf16", "fp16", "int8"), modes=("eager", "compiled")),
        cuda,
    )
    for row in rows:
        if row["precision"] == "int8":
            assert "CPU only" in row["skipped"]
            continue
        assert row["skipped"] is None, row["skipped"]
        assert row["device"].startswith("cuda")
        assert 0 < row["latency_p50_ms"] <= row["latency_p90_ms"] <= row["latency_p99_ms"]
        if row["mode"] == "compiled":
            assert row["compile_mode"] == "reduce-overhead"
