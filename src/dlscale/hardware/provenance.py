"""Where a number came from: software versions, machine, command line, date, commit.

One builder, ``measured_on()``, says which machine and software produced a figure; the
measured-peak cache (its provenance and fingerprint) and every benchmark result
(``provenance()``, as `accelerate env` prints beside a bug report) are made from it, so
a figure can be traced and compared only with its like.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dlscale.hardware.inventory import cpu_model, driver_version, gpu_names, software


def measured_on() -> dict[str, Any]:
    """The software and machine of a measurement: dlscale, torch, cuda, hip, hostname, cpu,
    threads (torch's CPU threads) and gpus (their names)."""
    return {
        **software(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "gpus": gpu_names(),
    }


def now() -> str:
    """UTC, to the second, ISO 8601: the date every provenance record carries."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def provenance() -> dict[str, Any]:
    """The block every benchmark result carries (its keys are part of the result files)."""
    machine = measured_on()
    return {
        "dlscale": machine["dlscale"],
        "torch": machine["torch"],
        "cuda": machine["cuda"],
        "driver": driver_version(),
        "python": sys.version.split()[0],
        "cpu": machine["cpu"],
        "cpu_threads": machine["threads"],
        "gpus": machine["gpus"],
        "command": shlex.join(["dlscale", *sys.argv[1:]]),
        "date": now(),
        "git_commit": git_commit(),
    }
