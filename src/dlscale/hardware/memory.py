"""How many more bytes this process may use, so a job that cannot fit is refused with a
reason instead of being ended without a word by the kernel's OOM killer.

On a CPU the smallest of: the memory limit of this process's cgroup and of every cgroup
above it (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``; SLURM's ``--mem`` and
containers set these) less what the cgroup already uses, page cache left out (the
kernel drops that before it kills); ``RLIMIT_AS`` less the process's virtual size and
``RLIMIT_DATA`` less its data size (``ulimit -v``/``-d``); and ``MemAvailable`` of
/proc/meminfo. On a GPU, the free memory of the device (``torch.cuda.mem_get_info``).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

import torch

GiB = 2**30
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/memory"))


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # what sets the limit, in words: "cgroup /sys/fs/cgroup/job/memory.max (3.0 GiB)"
    shared: bool = True  # by every process of the machine (a cgroup, MemAvailable); False: per process (ulimit)


def available(device: torch.device, processes: int = 1) -> Available | None:
    """The bytes this process may still allocate on ``device``, when ``processes`` of this
    machine (this one included) are about to share its memory alike; None when nothing says."""
    if device.type == "cuda":  # each worker has a GPU of its own
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        free += torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)  # this process's cache is free to it
        return Available(int(free), f"free memory of cuda:{index} ({torch.cuda.get_device_name(index)})", shared=False)
    if device.type != "cpu":
        return None
    shares = [
        Available(a.bytes // processes, f"{a.source}, shared by {processes} workers") if a.shared and processes > 1 else a
        for a in (*cgroup_limits(), *rlimits(), *mem_available())
    ]
    return min(shares, key=lambda a: a.bytes) if shares else None


def mem_available() -> list[Available]:
    meminfo = key_values(Path("/proc/meminfo"))
    if "MemAvailable" not in meminfo:
        return []
    return [Available(meminfo["MemAvailable"] * 1024, "MemAvailable in /proc/meminfo")]


def rlimits() -> list[Available]:
    """``ulimit -v`` and ``ulimit -d``, less what the process already has of each."""
    status = key_values(Path("/proc/self/status"))  # "VmSize: 123 kB"
    found = []
    for limit, name, field in ((resource.RLIMIT_AS, "RLIMIT_AS", "VmSize"), (resource.RLIMIT_DATA, "RLIMIT_DATA", "VmData")):
        soft, _hard = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY and field in status:
            left = max(0, soft - status[field] * 1024)
            found.append(Available(left, f"{name} ({soft / GiB:.1f} GiB, ulimit)", shared=False))
    return found


def cgroup_limits(membership: Path = Path("/proc/self/cgroup")) -> list[Available]:
    """The limit less the use of this process's cgroup and of each one above it (a
    parent's limit binds its children too), cgroup v2 and v1."""
    found = []
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return []
    for line in lines:  # "0::/job/step" (v2) or "4:memory:/job/step" (v1)
        _id, controllers, path = line.split(":", 2)
        if controllers == "":
            files = ("memory.max", "memory.current", "memory.stat", ("inactive_file", "active_file"))
        elif "memory" in controllers.split(","):
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", ("total_inactive_file", "total_active_file"))
        else:
            continue
        # the cgroup's own folder; or the root, where a container sees its cgroup as the root
        starts = [folder for root in CGROUP_ROOTS for folder in (root / path.lstrip("/"), root)]
        start = next((folder for folder in starts if (folder / files[0]).is_file()), None)
        for folder in [start, *start.parents] if start is not None else []:
            if not (folder / files[0]).is_file():
                break  # above the cgroup tree's root
            entry = cgroup_entry(folder, *files)
            if entry is not None:
                found.append(entry)
    return found


def cgroup_entry(folder: Path, limit_file: str, usage_file: str, stat_file: str, cache_keys: tuple[str, ...]) -> Available | None:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 2**62:  # v1 says "no limit" with a huge number
        return None
    stat = key_values(folder / stat_file)
    cache = sum(stat.get(key, 0) for key in cache_keys)
    limit = int(limit_text)
    return Available(max(0, limit - max(0, usage - cache)), f"cgroup {folder / limit_file} ({limit / GiB:.1f} GiB)")


def key_values(path: Path) -> dict[str, int]:
    """``key value`` or ``key: value unit`` lines as integers (/proc/meminfo, memory.stat)."""
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":" if ":" in line else " ")
            with_number = rest.split()
            if with_number and with_number[0].isdigit():
                values[key.strip()] = int(with_number[0])
    except OSError:
        pass
    return values
