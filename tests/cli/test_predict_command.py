"""`dlscale predict RUN INPUTS...`: a trained run's predictions on files, as a user runs it
(one real subprocess; the rest through the same main() in-process)."""

from __future__ import annotations

import contextlib
import io
import subprocess

import numpy as np
import pytest
from PIL import Image

import dlscale
from dlscale.cli import main
from tests.conftest import last_json


def run_main(argv: list[str]) -> subprocess.CompletedProcess:
    """`dlscale ARGV` in-process, answered like a finished subprocess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict-cli")
    digits = dlscale.fit("cnn", "digits", max_steps=40, run_dir=str(root / "digits"), verbose=False)
    text = root / "book.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    gpt = dlscale.fit("gpt-tiny", str(text), max_steps=10, batch_size=8, run_dir=str(root / "gpt"), verbose=False)
    return digits.run_dir, gpt.run_dir


def test_predict_on_an_npz_and_an_image_file_prints_one_row_each_as_json(runs, cli, tmp_path):
    digits, _ = runs
    x = np.random.default_rng(0).uniform(0, 16, size=(3, 64))
    np.savez(tmp_path / "three.npz", x=x)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "blank.png")
    done = cli(["predict", str(digits), str(tmp_path / "three.npz"), str(tmp_path / "blank.png"), "--json", "--device", "cpu"])
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["kind"] == "predictions"
    assert [row["input"] for row in result["predictions"]] == [
        f"{tmp_path / 'three.npz'}[{i}]" for i in range(3)
    ] + [str(tmp_path / "blank.png")]
    expected = dlscale.load(digits, device="cpu").predict(x)
    assert [row["class"] for row in result["predictions"][:3]] == expected.tolist()
    assert all(0 < row["probability"] <= 1 for row in result["predictions"])


def test_predict_given_the_scaling_models_flags_says_to_use_forecast():
    done = run_main(["predict", "--model", "resnet50", "--batch-size", "32", "--gpus", "1,8", "--network", "ib-hdr"])
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "dlscale forecast" in done.stderr and "--gpus" in done.stderr


def test_a_prompt_continues_text_with_a_language_model_run(runs):
    _, gpt = runs
    done = run_main(["predict", str(gpt), "--prompt", "the quick", "--max-new-tokens", "12", "--temperature", "0", "--json"])
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["prompt"] == "the quick" and len(result["completion"].encode("utf-8", "surrogatepass")) <= 12 * 3
    assert result["completion"] == dlscale.load(gpt, device="cpu").generate("the quick", 12, temperature=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict"], "give a run directory"),
        (["predict", "{gpt}", "x.png"], "--prompt"),
        (["predict", "{digits}", "--prompt", "hi"], "classifier"),
        (["predict", "{digits}", "missing.png"], "does not exist"),
        (["predict", "{digits}"], "at least one input"),
    ],
)
def test_mistakes_are_one_error_line(runs, args, message):
    digits, gpt = runs
    done = run_main([a.format(digits=digits, gpt=gpt) for a in args])
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr and "Traceback" not in done.stderr
