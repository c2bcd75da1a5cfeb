"""`dlscale train` on bad input: the CLI contract for a user's mistake.

A user's mistake (unknown model, bad path, corrupt file, impossible value) prints
ONE line ``error: ...`` on stderr that says what is wrong and how to fix it, exits
with code 2, prints no traceback, and destroys nothing already on disk.

Most tests call ``dlscale.cli.main`` in-process (fast); three run the real
``python -m dlscale train`` in a subprocess to prove the exit code and the absence
of a traceback for real. No case trains for more than a couple of steps: every
mistake is caught before the first step.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlscale.cli import main

# --------------------------------------------------------------------------- helpers

FAST = ["--max-steps", "2", "--device", "cpu"]  # should a case ever get as far as training


def assert_user_error(rc: int, out: str, err: str, *fragments: str) -> str:
    """The contract: exit 2, stdout empty, stderr exactly one non-empty `error: ` line, no
    traceback, and the line names the problem (every fragment occurs in it)."""
    assert rc == 2, f"exit code {rc}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err, f"a traceback on stderr:\n{err}"
    assert out == "", f"stdout should be empty on an error, got:\n{out}"
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr should be exactly one line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("error: ") and line[len("error: "):].strip(), f"not an 'error: ...' line: {line!r}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in the error line: {line!r}"
    return line


def expect_train_error(capsys, *argv: str, fragments: tuple[str, ...] = ()) -> str:
    """Run `dlscale train ARGV...` in-process and check the user-error contract."""
    rc = main(["train", *argv])
    captured = capsys.readouterr()
    return assert_user_error(rc, captured.out, captured.err, *fragments)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and directory under root, with the bytes of each file (None for a directory)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def assert_no_finished_run(tmp_path: Path) -> None:
    """A failed run leaves nothing under runs/ that looks like a run (summary.json, config.toml)."""
    runs = tmp_path / "runs"
    if runs.exists():
        found = sorted(str(p) for p in runs.rglob("*") if p.name in ("summary.json", "config.toml"))
        assert not found, f"a failed run left files that look like a run: {found}"


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, cut: int | None = None) -> None:
    """An IDX file (big-endian magic, dimensions, uint8 values); `cut` keeps only that many bytes."""
    array = np.asarray(array, np.uint8)
    magic = 0x00000800 | array.ndim if magic is None else magic
    content = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(content if cut is None else content[:cut])


def make_mnist(directory: Path, n_images: int = 20, n_labels: int = 20, **images_kwargs) -> Path:
    """The four MNIST file names with tiny 8x8 images; `images_kwargs` damage train-images."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n_images, 8, 8))
        labels = np.arange(n_labels) % 10
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, **(images_kwargs if prefix == "train" else {}))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)
    return directory


# --------------------------------------------------------------------------- names


def test_unknown_model_lists_valid_names(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, "--model", "resnet19", *FAST, fragments=("'resnet19'", "resnet18", "cnn", "mlp"))
    assert_no_finished_run(tmp_path)


def test_unknown_data_name_lists_valid_names(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, "--data", "imagenet", *FAST, fragments=("'imagenet'", "digits", "synthetic", ".npz"))
    assert_no_finished_run(tmp_path)


def test_missing_data_path(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, "--data", "./nope/mnist", *FAST, fragments=("./nope/mnist", "does not exist"))
    assert_no_finished_run(tmp_path)
    assert not (tmp_path / "nope").exists()


# --------------------------------------------------------------------------- corrupt data files


@pytest.mark.parametrize(
    "magic",
    [pytest.param(0x00000801, id="labels-magic-in-images-file"), pytest.param(0xDEADBEEF, id="garbage-magic")],
)
def test_idx_wrong_magic(capsys, monkeypatch, tmp_path, magic):
    monkeypatch.chdir(tmp_path)
    mnist = make_mnist(tmp_path / "mnist", magic=magic)
    before = snapshot(mnist)
    expect_train_error(capsys, "--data", "mnist", *FAST, fragments=("train-images-idx3-ubyte", f"0x{magic:08x}", "magic"))
    assert snapshot(mnist) == before
    assert_no_finished_run(tmp_path)


@pytest.mark.parametrize(
    "cut", [pytest.param(6, id="inside-header"), pytest.param(16 + 100, id="inside-pixels")]
)
def test_idx_truncated(capsys, monkeypatch, tmp_path, cut):
    monkeypatch.chdir(tmp_path)
    mnist = make_mnist(tmp_path / "mnist", cut=cut)
    before = snapshot(mnist)
    expect_train_error(capsys, "--data", "mnist", *FAST, fragments=("train-images-idx3-ubyte", "truncated"))
    assert snapshot(mnist) == before
    assert_no_finished_run(tmp_path)


def test_idx_image_label_count_mismatch(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    make_mnist(tmp_path / "mnist", n_images=20, n_labels=19)
    expect_train_error(capsys, "--data", "mnist", *FAST, fragments=("20 images", "19 labels"))
    assert_no_finished_run(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"PK\x03\x04" + bytes(200), id="zip-header-then-zeros"),
        pytest.param(bytes(range(7, 256)) * 4, id="random-bytes"),
    ],
)
def test_broken_npz(capsys, monkeypatch, tmp_path, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.npz").write_bytes(content)
    line = expect_train_error(
        capsys, "--data", "broken.npz", *FAST, fragments=("broken.npz", "not a readable .npz", "np.savez")
    )
    # NumPy takes any non-zip file for a pickle; garbage must not be reported as "Python objects".
    assert "Python objects" not in line and "pickle" not in line, line
    assert (tmp_path / "broken.npz").read_bytes() == content
    assert_no_finished_run(tmp_path)


def test_npz_missing_y(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "xonly.npz", x=np.zeros((40, 8, 8), np.float32), labels=np.zeros(40, np.int64))
    expect_train_error(capsys, "--data", "xonly.npz", *FAST, fragments=("xonly.npz", "no array y", "labels"))
    assert_no_finished_run(tmp_path)


def test_unreadable_image_in_image_folder(capsys, monkeypatch, tmp_path):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "pics"
    for label, shade in (("cat", 40), ("dog", 200)):
        (folder / "train" / label).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), shade + i, np.uint8), mode="L").save(folder / "train" / label / f"{i}.png")
    (folder / "train" / "dog" / "bad.png").write_bytes(b"this is not a png\x00\x01\x02" * 8)
    before = snapshot(folder)
    # images are checked when read, not at start-up (a folder of a million files starts in seconds):
    # the first batch holds all 11 images and meets it, after the run's header lines; the error is the last line
    rc = main(["train", "--data", "pics", *FAST, "--batch-size", "11"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image pics/train/dog/bad.png (not an image") and "remove or replace" in last
    assert snapshot(folder) == before
    assert_no_finished_run(tmp_path)


@pytest.mark.parametrize("contents", [pytest.param({}, id="empty-dir"), pytest.param({"table.csv": b"a,b\n1,2\n"}, id="only-csv")])
def test_directory_without_usable_data(capsys, monkeypatch, tmp_path, contents):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "stuff"
    folder.mkdir()
    for name, payload in contents.items():
        (folder / name).write_bytes(payload)
    expect_train_error(capsys, "--data", "stuff", *FAST, fragments=("no usable data", "stuff", "train-images-idx3-ubyte"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(contents)
    assert_no_finished_run(tmp_path)


# --------------------------------------------------------------------------- config files


def test_bad_toml_syntax(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.toml"
    config.write_bytes(b"model = \"cnn\"\nbatch_size = = 32\n")
    before = snapshot(tmp_path)
    expect_train_error(capsys, "--config", "run.toml", *FAST, fragments=("run.toml", "not valid TOML", "line 2"))
    assert snapshot(tmp_path) == before  # the config file untouched, nothing new made


def test_unknown_toml_key(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text("batchsize = 32\n")
    before = snapshot(tmp_path)
    expect_train_error(capsys, "--config", "run.toml", *FAST, fragments=("'batchsize'", "run.toml", "batch_size"))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "toml, fragments",
    [
        pytest.param('batch_size = "big"\n', ("batch_size", "an integer", "'big'"), id="batch_size-string"),
        pytest.param("epochs = true\n", ("epochs", "an integer", "True"), id="epochs-bool"),
    ],
)
def test_wrong_value_type_in_toml(capsys, monkeypatch, tmp_path, toml, fragments):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(toml)
    before = snapshot(tmp_path)
    expect_train_error(capsys, "--config", "run.toml", "--device", "cpu", fragments=fragments)
    assert snapshot(tmp_path) == before


def test_missing_config_file(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, "--config", "missing.toml", *FAST, fragments=("missing.toml", "does not exist"))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- impossible values


@pytest.mark.parametrize(
    "argv, fragments",
    [
        pytest.param(["--batch-size", "0"], ("--batch-size", "at least 1", "0"), id="batch-size-0"),
        pytest.param(["--epochs", "-1"], ("--epochs", "at least 1", "-1"), id="epochs-negative"),
        pytest.param(["--max-steps", "0"], ("--max-steps", "at least 1", "0"), id="max-steps-0"),
        pytest.param(["--grad-accum", "0", "--max-steps", "2"], ("--grad-accum", "at least 1", "0"), id="grad-accum-0"),
    ],
)
def test_zero_or_negative_sizes(capsys, monkeypatch, tmp_path, argv, fragments):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, *argv, "--device", "cpu", fragments=fragments)
    assert list(tmp_path.iterdir()) == []  # refused before a run directory is made


@pytest.mark.parametrize(
    "lr, fragments",
    [
        pytest.param("nan", ("--lr", "finite", "nan"), id="nan"),
        pytest.param("inf", ("--lr", "finite", "inf"), id="inf"),
        pytest.param("-0.1", ("--lr", "greater than 0", "-0.1"), id="negative"),
        pytest.param("0", ("--lr", "greater than 0"), id="zero"),
    ],
)
def test_bad_learning_rate(capsys, monkeypatch, tmp_path, lr, fragments):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, "--lr", lr, *FAST, fragments=fragments)
    assert list(tmp_path.iterdir()) == []


def test_batch_larger_than_data_set(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, "--batch-size", "5000", *FAST, fragments=("--batch-size 5000", "1259"))
    assert_no_finished_run(tmp_path)


def test_precision_the_machine_lacks(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, "--device", "cpu", "--precision", "fp16", "--max-steps", "2", fragments=("fp16", "bf16 or fp32"))
    assert_no_finished_run(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_device_the_machine_lacks(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    expect_train_error(capsys, "--device", "cuda", "--max-steps", "2", fragments=("--device cuda", "--device cpu"))
    assert_no_finished_run(tmp_path)


# --------------------------------------------------------------------------- run directories


@pytest.mark.parametrize("exists", [pytest.param(True, id="empty-dir"), pytest.param(False, id="nonexistent-dir")])
def test_resume_path_without_a_run(capsys, monkeypatch, tmp_path, exists):
    monkeypatch.chdir(tmp_path)
    if exists:
        (tmp_path / "oldrun").mkdir()
    expect_train_error(capsys, "--resume", "oldrun", *FAST, fragments=("--resume oldrun", "no run there"))
    assert (tmp_path / "oldrun").exists() == exists
    if exists:
        assert list((tmp_path / "oldrun").iterdir()) == []
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "run_dir, fragments",
    [
        pytest.param("afile/run", ("afile/run", "cannot create run directory", "--run-dir"), id="under-a-file"),
        pytest.param("afile", ("afile", "is a file", "--run-dir"), id="is-a-file"),
    ],
)
def test_run_dir_cannot_be_created(capsys, monkeypatch, tmp_path, run_dir, fragments):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_bytes(b"precious bytes\n")
    before = snapshot(tmp_path)
    expect_train_error(capsys, "--run-dir", run_dir, *FAST, fragments=fragments)
    assert snapshot(tmp_path) == before


def test_run_dir_with_a_finished_run_is_refused(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "done"
    (old / "checkpoints" / "step-2").mkdir(parents=True)
    (old / "summary.json").write_text('{"model": "cnn", "steps": 2, "final_loss": 1.25}\n')
    (old / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0}\n{"kind": "train", "step": 2, "loss": 1.25}\n')
    (old / "config.toml").write_text('model = "cnn"\ndata = "digits"\nmax_steps = 2\n')
    (old / "checkpoints" / "step-2" / "meta.json").write_text('{"step": 2}\n')
    before = snapshot(tmp_path)
    expect_train_error(capsys, "--run-dir", "done", *FAST, fragments=("done", "already holds a run", "--resume"))
    assert snapshot(tmp_path) == before  # summary.json and everything else byte-identical, nothing added


@pytest.mark.parametrize(
    "argv",
    [pytest.param(["--resume", "done"], id="resume-dir"), pytest.param(["--resume", "auto", "--run-dir", "done"], id="resume-auto")],
)
def test_resuming_a_finished_run_leaves_it_untouched(capsys, monkeypatch, tmp_path, argv):
    """The same promise as case 21: a finished run's files are never rewritten; resuming it is refused."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--run-dir", "done", *FAST]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "done")
    expect_train_error(capsys, *argv, fragments=("done", "already finished"))
    assert snapshot(tmp_path / "done") == before


# --------------------------------------------------------------------------- argparse


@pytest.mark.parametrize(
    "argv, fragments",
    [
        pytest.param(["--no-such-flag"], ("--no-such-flag", "--help"), id="unknown-flag"),
        pytest.param(["--epochs", "three"], ("--epochs", "'three'"), id="not-an-int"),
        pytest.param(["--precision", "fp8"], ("--precision", "'fp8'", "bf16"), id="bad-choice"),
        pytest.param(["--epochs", "2", "--max-steps", "2"], ("--max-steps", "--epochs"), id="exclusive-flags"),
    ],
)
def test_argparse_error_is_one_line(capsys, monkeypatch, tmp_path, argv, fragments):
    monkeypatch.chdir(tmp_path)
    line = expect_train_error(capsys, *argv, fragments=fragments)
    assert "usage:" not in line
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the real console script


def _setup_bad_toml(tmp_path: Path) -> list[str]:
    (tmp_path / "run.toml").write_text('model = "cnn"\nepochs = [\n')
    return ["--config", "run.toml", "--device", "cpu"]


def _setup_corrupt_idx(tmp_path: Path) -> list[str]:
    make_mnist(tmp_path / "mnist", magic=0xDEADBEEF)
    return ["--data", "mnist", *FAST]


SUBPROCESS_CASES = [
    pytest.param(lambda tmp: ["--model", "resnet19", *FAST], ("resnet19", "resnet18"), id="unknown-model"),
    pytest.param(lambda tmp: ["--no-such-flag"], ("--no-such-flag",), id="unknown-flag"),
    pytest.param(_setup_corrupt_idx, ("train-images-idx3-ubyte", "0xdeadbeef"), id="corrupt-idx"),
    pytest.param(_setup_bad_toml, ("run.toml", "not valid TOML"), id="bad-toml"),
]


@pytest.mark.slow
@pytest.mark.parametrize("setup, fragments", SUBPROCESS_CASES)
def test_console_script_exit_code_and_no_traceback(tmp_path, setup, fragments):
    argv = setup(tmp_path)
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "dlscale", "train", *argv],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert_user_error(proc.returncode, proc.stdout, proc.stderr, *fragments)
    assert_no_finished_run(tmp_path)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that was there changed
