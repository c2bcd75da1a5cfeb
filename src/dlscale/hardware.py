"""What machine a run ran on: CPU, memory, GPUs and the software stack.

Written to every run directory as hardware.json so a figure can always be traced to
the hardware that produced it.
"""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(
            {
                "index": index,
                "name": props.name,
                "memory_bytes": int(props.total_memory),
                "compute_capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
            }
        )
    return found


def inventory() -> dict[str, Any]:
    from dlscale import __version__

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "dlscale": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": {
            "model": cpu_model(),
            "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "memory_bytes": memory_bytes(),
        },
        "gpus": gpus(),
    }
