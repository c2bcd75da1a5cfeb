"""Where a number came from: software versions, devices, command line, date, commit.

Every benchmark result carries this block (as `accelerate env` prints beside a bug
report), so a figure can be traced and compared only with its like.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dlscale import __version__
from dlscale.hardware.inventory import cpu_model


def driver_version() -> str | None:
    """The NVIDIA driver, through nvidia-ml-py when it is installed."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # not installed, no driver, no GPU: the field is simply unknown
        return None


def git_commit() -> str | None:
    """The commit of the dlscale source, when it runs from a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def device_names() -> list[str]:
    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def provenance() -> dict[str, Any]:
    return {
        "dlscale": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": driver_version(),
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "gpus": device_names(),
        "command": shlex.join(["dlscale", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
