"""Shared helpers for the tests: run the real CLI in a subprocess, read a run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# CI runs two test files at once on two cores, most of them training in subprocesses. One
# intra-op thread per process (as torchrun gives its workers) keeps them from spinning on
# threads the other file holds: two concurrent cnn trainings took 19.6 s wall and 28.8 s of
# CPU with two threads each, 11.6 s and 17.4 s with one. Set before torch is imported here or
# in any subprocess; a developer's own OMP_NUM_THREADS is kept. Tests that need more threads
# set it themselves (test_memory).
os.environ.setdefault("OMP_NUM_THREADS", "1")


# The test files that take longest (minutes of real multi-process runs; CI's --durations on
# 2026-12-01), started first: CI runs two files at a time (pytest-xdist, --dist loadfile), and
# a long file started last leaves the other worker idle. Only the order changes.
LONG_FILES_FIRST = (
    "training/test_combinations_two_workers.py", "training/test_combinations.py", "distributed/test_distributed.py",
    "training/test_train.py", "training/test_signals.py", "distributed/test_slurm.py", "distributed/test_multinode.py",
    "benchmarks/test_gpu_check.py", "report/test_lab.py", "training/test_custom_modules.py",
    "benchmarks/test_peers.py", "training/test_memory.py", "runs/test_checkpoint.py", "bench/test_bench_scaling.py",
    "training/test_image_training.py",
)


def pytest_collection_modifyitems(config, items):
    """Run the files of LONG_FILES_FIRST first, in that order; the rest keep theirs."""
    tests = Path(__file__).parent

    def rank(item) -> int:
        try:
            return LONG_FILES_FIRST.index(Path(item.path).relative_to(tests).as_posix())
        except ValueError:
            return len(LONG_FILES_FIRST)

    items.sort(key=rank)  # stable: within a file and among the rest, the order is kept


def run_cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `python -m dlscale ...` as a user would; stdout/stderr captured as text."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dlscale", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture
def cli(tmp_path):
    """`cli(args)` runs the command in a fresh working directory."""
    return lambda args, **kw: run_cli(args, cwd=tmp_path, **kw)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Measured peaks are cached per machine; tests use their own cache, shared by the session
    (so the few-second measurement runs once) and inherited by CLI subprocesses."""
    os.environ["DLSCALE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dlscale-cache"))
    yield


# cnn on digits, 20 steps: the run every multi-node and SLURM job in tests/distributed must end like
NPROC2_REFERENCE = ["train", "--model", "cnn", "--data", "digits", "--max-steps", "20", "--batch-size", "32", "--seed", "0",
                    "--precision", "fp32", "--no-channels-last", "--no-compile", "--nproc", "2", "--json"]


@pytest.fixture(scope="session")
def nproc2_loss(tmp_path_factory) -> float:
    """The final loss of NPROC2_REFERENCE: one launcher, two workers. torchrun gives each of them
    one thread (OMP_NUM_THREADS=1); the multi-node and SLURM tests give their workers the same,
    as kernels with another thread count add in another order. Shared, so it runs once."""
    done = run_cli(NPROC2_REFERENCE, cwd=tmp_path_factory.mktemp("nproc2-reference"))
    assert done.returncode == 0, done.stderr[-2000:]
    return last_json(done.stdout)["final_loss"]


def make_photo_folder(root, per_class=16):
    """Three classes of 160x120 JPEGs (a few grey, a few oddly sized), told apart by colour."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = (160, 120) if i % 5 else (211, 97)
            pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
            pixels[..., c] += 150
            image = Image.fromarray(pixels)
            (image.convert("L") if i % 7 == 3 else image).save(root / name / f"{i}.jpg", quality=90)
