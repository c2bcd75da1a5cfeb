"""What machine this is: CPU, cores, memory, GPUs, the NVIDIA driver and the software
stack, read from the system (nothing measured, nothing cached).

The lowest module of ``hardware``: provenance, the measured-peak cache and the report
all describe the machine with these functions.
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


def physical_cores() -> int | None:
    """Distinct (socket, core) pairs in /proc/cpuinfo; None where that file says nothing."""
    cores = set()
    try:
        with open("/proc/cpuinfo") as handle:
            socket_id = core_id = None
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    socket_id = value.strip()
                elif key == "core id":
                    core_id = value.strip()
                elif not line.strip():
                    if core_id is not None:
                        cores.add((socket_id, core_id))
                    socket_id = core_id = None
            if core_id is not None:
                cores.add((socket_id, core_id))
    except OSError:
        return None
    return len(cores) or None


def usable_cores() -> int | None:
    """Cores this process may run on (a container or taskset may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


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


def gpu_names() -> list[str]:
    """The visible GPUs as torch names them; empty without CUDA."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


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


def software() -> dict[str, Any]:
    """The versions a figure depends on: dlscale, torch and torch's CUDA or ROCm build."""
    from dlscale.version import __version__

    return {
        "dlscale": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
    }


def inventory() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **software(),
        "cpu": {
            "model": cpu_model(),
            "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(),
            "usable_cores": usable_cores(),
            "torch_threads": torch.get_num_threads(),
            "memory_bytes": memory_bytes(),
        },
        "gpus": gpus(),
    }
