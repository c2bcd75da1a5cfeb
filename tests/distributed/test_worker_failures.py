"""Why workers failed is said on the launcher's one error line, never only in a log: a
worker's traceback is read back for its exception; settings that cannot run together, and
a device this machine lacks, are refused before any worker starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dlscale.distributed.elastic import failure_line, raised_exception

CNN_2 = ["train", "--model", "cnn", "--data", "digits", "--max-steps", "2", "--batch-size", "32", "--nproc", "2"]


def _dlscale(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "dlscale", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env={**os.environ, **(env or {})})


def test_the_exception_at_the_bottom_of_a_traceback_is_read_back():
    log = textwrap.dedent("""\
        [rank0]: Traceback (most recent call last):
        [rank0]:   File "/x/parallel.py", line 44, in wrap
        [rank0]:     fully_shard(model, mp_policy=policy)
        [rank0]: NotImplementedError: FSDP does not support non-contiguous parameters yet: param.shape=torch.Size([64, 32, 3, 3])
        some later output
        """).splitlines()
    assert raised_exception(log) == (
        "NotImplementedError: FSDP does not support non-contiguous parameters yet: param.shape=torch.Size([64, 32, 3, 3])")
    chained = ["Traceback (most recent call last):", '  File "a"', "KeyError: 'x'", "",
               "During handling of the above exception, another exception occurred:", "",
               "Traceback (most recent call last):", '  File "b"', "torch.distributed.DistBackendError: gloo timed out"]
    assert raised_exception(chained) == "DistBackendError: gloo timed out"  # the one that ended the process
    assert raised_exception(["all fine", "Traceback is a word here"]) is None


def test_an_error_line_is_preferred_to_a_traceback(tmp_path):
    log = tmp_path / "run" / "attempt_0" / "1" / "stderr.log"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last):\n  x\nRuntimeError: inner\nerror: the data folder is empty\n")
    assert failure_line(tmp_path) == "error: the data folder is empty"
    log.write_text("Traceback (most recent call last):\n  x\nRuntimeError: inner\n")
    assert failure_line(tmp_path) == f"error: RuntimeError: inner (see {log})"


@pytest.mark.slow
def test_a_worker_that_cannot_import_says_why_on_the_launchers_line(tmp_path):
    """A broken install on the workers' side (here: an import that fails only in worker
    processes, before their process group forms) ends the launcher with the worker's own
    exception on its one error line."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""\
        import os, sys

        class Broken:
            def find_spec(self, name, path=None, target=None):
                if name == "dlscale.training.worker" and os.environ.get("DLSCALE_LAUNCHER_PID"):
                    raise ImportError("dlscale.training.worker is broken on this node")
                return None

        sys.meta_path.insert(0, Broken())
    """))
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    done = _dlscale([*CNN_2, "--run-dir", "run"], tmp_path, env={"PYTHONPATH": pythonpath})
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    # the rank whose failure the agent saw first is named; the other may show the agent's SIGTERM
    assert last.startswith("error: worker rank 0 failed (exit code "), last
    assert "): ImportError: dlscale.training.worker is broken on this node (see " in last, last
    assert "stderr.log)" in last


@pytest.mark.parametrize("flags, message", [
    (["--strategy", "fsdp", "--channels-last"], "--channels-last with --strategy fsdp on 2 workers"),
    (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a GPU"),
    (["--device", "cuda"], "no usable CUDA GPU"),
])
def test_settings_that_cannot_run_together_are_refused_before_any_worker_starts(tmp_path, flags, message):
    if "cuda" in flags:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    done = _dlscale([*CNN_2, *flags, "--run-dir", "run"], tmp_path)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], done.stderr
    assert "starting 2 workers" not in done.stdout + done.stderr
    assert not Path(tmp_path / "run").exists()  # nothing left on disk
