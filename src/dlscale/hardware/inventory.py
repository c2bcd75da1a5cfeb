"""What machine a run ran on, and how fast it can go: CPU, memory, GPUs, the software
stack, the datasheet peak FLOP/s of known GPUs and the *measured* peaks of every device.

Written to every run directory as hardware.json (``hw_report()``) so a figure can
always be traced to the hardware that produced it, and printed by ``dlscale hw``.

Measured peaks, per device:

- large-GEMM rate: square ``C = A @ B`` of n x n random matrices, 2 n^3 FLOPs a call,
  timed after warm-up with the device synchronised (CUDA events on GPUs). CPU: fp32 and
  bf16, n grown until one call takes about 0.1 s (at most 4096), with
  ``torch.get_num_threads()`` threads. CUDA: fp32 (IEEE, TF32 off), tf32, bf16, fp16
  at n = 8192 (smaller when memory is short).
- copy bandwidth: ``dst.copy_(src)`` of a large buffer (256 MiB on CPU, 1 GiB on a
  GPU), counted as 2 x bytes per copy (read + write), as STREAM's "copy" counts it.

The figure kept is the *best* of the timed repeats (the highest rate): a peak is what
the hardware can do, and interference (other processes, clock ramps, page faults) only
ever slows a repeat down. The median is kept beside it.

The measurement takes a few seconds, so it is cached per machine as JSON in the user
cache folder ($DLSCALE_CACHE_DIR, else $XDG_CACHE_HOME/dlscale, else ~/.cache/dlscale),
one file per fingerprint (hostname, CPU model, threads, GPU names, torch version),
with its provenance. ``measured_peaks(remeasure=True)`` (``dlscale hw --remeasure``)
refreshes it; a corrupt or foreign file is measured again, never a crash. Processes of
one machine take turns through a lock beside the file; one that waits longer than
``LOCK_WAIT_S`` (the holder was stopped with Ctrl-Z or ``scontrol suspend``) says so on
stderr and measures without the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import socket
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from dlscale.hardware import datasheet as peaks

MEASUREMENT_METHOD = 1  # bump when the way peaks are measured changes: old caches are then ignored

CPU_GEMM_PRECISIONS = ("fp32", "bf16")  # fp16 on CPU is not used for training here
CPU_GEMM_MAX_N = 4096
CPU_GEMM_CALL_SECONDS = 0.1  # grow n until one call takes about this long
CPU_GEMM_BUDGET_SECONDS = 1.0  # timed repeats per precision
CPU_COPY_BYTES = 256 * 2**20
CUDA_GEMM_N = 8192
CUDA_COPY_BYTES = 2**30
MIN_REPEATS, MAX_REPEATS = 3, 10
CUDA_REPEATS = 5

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- inventory


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


def inventory() -> dict[str, Any]:
    from dlscale import __version__

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "dlscale": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
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


def _gpu_names() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


# --------------------------------------------------------------------------- datasheet peaks


def tf32_matmul_enabled() -> bool:
    """Whether fp32 matmuls on CUDA run as TF32 in this process (either of torch's switches)."""
    matmul = torch.backends.cuda.matmul
    try:
        mode = getattr(matmul, "fp32_precision", None)  # torch >= 2.9: "tf32" | "ieee" | "none" (inherit)
    except RuntimeError:
        mode = None
    if isinstance(mode, str) and mode != "none":
        return mode == "tf32"
    try:  # older torch, or nothing set through the new switch
        return bool(matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # torch refuses to read the legacy flag after the new one was set
        return False


@contextlib.contextmanager
def _fp32_matmul_mode(tf32: bool) -> Iterator[None]:
    """Run fp32 CUDA matmuls as TF32 (or not) inside the block; restore the caller's setting."""
    matmul = torch.backends.cuda.matmul
    if isinstance(getattr(matmul, "fp32_precision", None), str):
        saved = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = saved
    else:
        saved = matmul.allow_tf32
        matmul.allow_tf32 = tf32
        try:
            yield
        finally:
            matmul.allow_tf32 = saved


def _datasheet_for(name: str, precision: str, visible_multiprocessors: int | None) -> tuple[float, str] | None:
    """The table's figure, unless fewer SMs are visible than the full chip has (a MIG slice
    or a partition would otherwise get the whole chip's peak)."""
    expected = peaks.expected_multiprocessors(name)
    if expected is not None and visible_multiprocessors is not None and visible_multiprocessors != expected:
        return None
    return peaks.datasheet_peak(name, precision)


def datasheet_peaks(index: int) -> dict[str, Any]:
    """Every precision's dense datasheet peak for CUDA device ``index``, with sources."""
    props = torch.cuda.get_device_properties(index)
    name, visible = props.name, props.multi_processor_count
    part = peaks.find_part(name)
    note = None
    if part is None:
        note = f"{name} is not in dlscale's datasheet table: no datasheet peak, MFU is null (never a guessed peak)"
    elif part.multiprocessors is not None and visible != part.multiprocessors:
        note = (
            f"{visible} multiprocessors visible where the full {part.part} has {part.multiprocessors} "
            "(a MIG slice or partition?): the full chip's peak would be wrong, so none is given"
        )
    table = {}
    for precision in peaks.PRECISIONS:
        found = _datasheet_for(name, precision, visible)
        table[precision] = {"flops_per_second": found[0], "source": found[1]} if found else None
    return {
        "name": name,
        "part": part.part if part else None,
        "source": part.source if part else None,
        "multiprocessors": visible,
        "note": note,
        "peaks": table,
    }


# --------------------------------------------------------------------------- measuring


def _stats(values: list[float]) -> tuple[float, float]:
    return max(values), statistics.median(values)


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _cpu_gemm(precision: str) -> dict[str, Any]:
    """Best and median FLOP/s of an n x n matmul on the CPU, n grown until a call takes ~0.1 s."""
    dtype = _DTYPES[precision]
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        c = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=c)  # warm-up: the first call at a size pays for the library's set-up
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        seconds = time.perf_counter() - start
        if seconds >= CPU_GEMM_CALL_SECONDS / 2 or n >= CPU_GEMM_MAX_N:
            break
        # cubic growth of the work; small sizes run below peak, so this never overshoots by much
        grow = (CPU_GEMM_CALL_SECONDS / max(seconds, 1e-6)) ** (1 / 3)
        n = min(CPU_GEMM_MAX_N, max(2 * n if grow >= 2 else n + 256, _round_up(n * grow, 256)))
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < MAX_REPEATS and (len(times) < MIN_REPEATS or time.perf_counter() - begin < CPU_GEMM_BUDGET_SECONDS):
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - start)
    best, median = _stats([2 * n**3 / t for t in times])
    return {"n": n, "repeats": len(times), "best": best, "median": median}


def _cpu_copy() -> dict[str, Any]:
    """Best and median bytes/s of ``dst.copy_(src)``, counting read + write (2 x bytes)."""
    memory = memory_bytes()
    nbytes = CPU_COPY_BYTES if memory is None else min(CPU_COPY_BYTES, max(memory // 32, 2**20))
    src = torch.ones(nbytes // 4, dtype=torch.float32)  # ones, not empty: the pages are touched now
    dst = torch.zeros_like(src)
    dst.copy_(src)  # warm-up
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < MAX_REPEATS and (len(times) < MIN_REPEATS or time.perf_counter() - begin < 0.5):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    best, median = _stats([2 * src.nbytes / t for t in times])
    return {"bytes": src.nbytes, "repeats": len(times), "best": best, "median": median}


def _measure_cpu() -> dict[str, Any]:
    start = time.perf_counter()
    with torch.no_grad():
        gemm = {p: _cpu_gemm(p) for p in CPU_GEMM_PRECISIONS}
        copy = _cpu_copy()
    return _device_entry(cpu_model(), gemm, copy, time.perf_counter() - start)


def _device_entry(name: str, gemm: dict[str, dict], copy: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "gemm_flops_per_second": {p: r["best"] for p, r in gemm.items()},
        "gemm_median_flops_per_second": {p: r["median"] for p, r in gemm.items()},
        "gemm_sizes": {p: r["n"] for p, r in gemm.items()},
        "gemm_repeats": {p: r["repeats"] for p, r in gemm.items()},
        "copy_bytes_per_second": copy["best"] if copy else None,
        "copy_median_bytes_per_second": copy["median"] if copy else None,
        "copy_buffer_bytes": copy["bytes"] if copy else None,
        "copy_repeats": copy["repeats"] if copy else None,
        "seconds": seconds,
    }


def _cuda_time(fn: Callable[[], Any], work: float, device: torch.device, repeats: int = CUDA_REPEATS) -> dict[str, Any]:
    """Best and median rate (``work`` per call / seconds) of ``fn`` on a GPU, timed with CUDA
    events over batches of calls long enough (~50 ms) that launch gaps do not count."""
    torch.cuda.synchronize(device)
    begin, calls = time.perf_counter(), 0
    while True:  # warm-up: clocks ramp up, cuBLAS picks its kernel, memory is allocated
        fn()
        calls += 1
        torch.cuda.synchronize(device)
        if time.perf_counter() - begin >= 0.25 or calls >= 1000:
            break
    per_call = (time.perf_counter() - begin) / calls
    inner = max(1, min(1000, math.ceil(0.05 / max(per_call, 1e-7))))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rates = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        rates.append(work * inner / (start.elapsed_time(end) / 1e3))
    best, median = _stats(rates)
    return {"repeats": repeats, "calls_per_repeat": inner, "best": best, "median": median}


def _measure_cuda(index: int) -> dict[str, Any]:
    device = torch.device("cuda", index)
    props = torch.cuda.get_device_properties(index)
    hip = getattr(torch.version, "hip", None) is not None
    precisions = ["fp32"]
    if props.major >= 8 and not hip:
        precisions.append("tf32")  # TF32 tensor cores: Ampere and later
    if props.major >= 8 or hip:
        precisions.append("bf16")
    precisions.append("fp16")
    start = time.perf_counter()
    gemm: dict[str, dict] = {}
    copy = None
    with torch.cuda.device(index), torch.no_grad():
        free, _ = torch.cuda.mem_get_info(device)
        n = CUDA_GEMM_N
        while n > 1024 and 3 * n * n * 4 > free // 2:
            n //= 2
        for precision in precisions:
            dtype = _DTYPES[precision]
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            c = torch.empty(n, n, device=device, dtype=dtype)
            with _fp32_matmul_mode(precision == "tf32"):
                gemm[precision] = {"n": n, **_cuda_time(lambda: torch.mm(a, b, out=c), 2 * n**3, device)}
            del a, b, c
        nbytes = min(CUDA_COPY_BYTES, _round_up(free // 8, 2**20))
        src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
        dst = torch.empty_like(src)
        copy = {"bytes": src.nbytes, **_cuda_time(lambda: dst.copy_(src), 2 * src.nbytes, device, repeats=10)}
        del src, dst
        torch.cuda.empty_cache()
    return _device_entry(props.name, gemm, copy, time.perf_counter() - start)


def _load_average() -> float | None:
    """Runnable processes over the last minute (POSIX), None where the system does not say."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _machine_busy() -> bool:
    load = _load_average()
    return load is not None and load > 0.5 * torch.get_num_threads()


def _worth_remeasuring(cached: dict[str, Any]) -> bool:
    """Figures taken on a busy machine are low (MFU above 100% follows): replace them as soon
    as the machine is quiet, instead of keeping them until someone asks for --remeasure."""
    return bool(cached.get("provenance", {}).get("busy")) and not _machine_busy()


def measure_peaks() -> dict[str, Any]:
    """Measure every device now (a few seconds): ``{"devices": {...}, "provenance": {...}}``."""
    from dlscale import __version__

    begin = time.perf_counter()
    load_before = _load_average()
    devices: dict[str, Any] = {"cpu": _measure_cpu()}
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        try:
            devices[f"cuda:{index}"] = _measure_cuda(index)
        except RuntimeError as exc:  # out of memory, a busy or broken GPU: say so, keep the rest
            devices[f"cuda:{index}"] = {"name": torch.cuda.get_device_name(index), "error": str(exc).splitlines()[0]}
            torch.cuda.empty_cache()
    provenance = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dlscale": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "gpus": _gpu_names(),
        "sizes": {d: e.get("gemm_sizes") for d, e in devices.items()},
        "repeats": {d: e.get("gemm_repeats") for d, e in devices.items()},
        "copy_buffer_bytes": {d: e.get("copy_buffer_bytes") for d, e in devices.items()},
        "gemm": "C = A @ B, n x n random matrices, 2 n^3 FLOPs a call; timed after warm-up, device synchronised",
        "copy": "dst.copy_(src) of one buffer; bandwidth = 2 x bytes / time (read + write, as STREAM copy)",
        "statistic": "best of the timed repeats (highest rate): interference only slows a repeat; median kept beside it",
        "timer": "time.perf_counter on CPU; CUDA events on GPUs",
        "method": MEASUREMENT_METHOD,
        "seconds": time.perf_counter() - begin,
        # other work on the machine while measuring makes the figures low: keep the evidence
        "load_average_before": load_before,
        "busy": load_before is not None and load_before > 0.5 * torch.get_num_threads(),
        "busy_means": "measured while other work ran: replaced by the next measurement on a quiet machine",
    }
    return {"devices": devices, "provenance": provenance}


# --------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """$DLSCALE_CACHE_DIR, else $XDG_CACHE_HOME/dlscale, else ~/.cache/dlscale."""
    if os.environ.get("DLSCALE_CACHE_DIR"):
        return Path(os.environ["DLSCALE_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "dlscale"
    return Path.home() / ".cache" / "dlscale"


def fingerprint() -> dict[str, Any]:
    """What makes a measurement belong to this machine: change any of it and peaks are measured again."""
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "gpus": _gpu_names(),
        "torch": torch.__version__,
        "method": MEASUREMENT_METHOD,
    }


def cache_path(print_: dict[str, Any] | None = None) -> Path:
    print_ = print_ or fingerprint()
    digest = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(print_["hostname"])).strip("-.")[:40] or "host"
    return cache_dir() / f"peaks-{host}-{digest}.json"


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _valid(data: Any, print_: dict[str, Any]) -> bool:
    """A cache file is used only when it is whole, for this machine, and its CPU figures are rates."""
    if not isinstance(data, dict) or data.get("fingerprint") != print_:
        return False
    devices = data.get("devices")
    if not isinstance(devices, dict) or not isinstance(data.get("provenance"), dict):
        return False
    cpu = devices.get("cpu")
    if not isinstance(cpu, dict) or not isinstance(cpu.get("gemm_flops_per_second"), dict):
        return False
    return all(_is_rate(v) for v in cpu["gemm_flops_per_second"].values()) and bool(cpu["gemm_flops_per_second"])


def cached_peaks() -> dict[str, Any] | None:
    """This machine's cached measurement, or None when there is none (or it is unreadable)."""
    print_ = fingerprint()
    path = cache_path(print_)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not _valid(data, print_):
        return None
    return {"devices": data["devices"], "provenance": data["provenance"], "cache": {"path": str(path), "hit": True}}


LOCK_WAIT_S = 30.0  # longest wait for another process's measurement before measuring without the cache
_LOCK_POLL_S = 0.05
_gave_up_on: set[str] = set()  # lock files already reported as stuck, so each is said once


@contextlib.contextmanager
def _machine_lock(path: Path, wait_s: float | None = None) -> Iterator[bool]:
    """One process measures at a time (several workers of one node start together): the
    others wait, then read what it wrote, instead of measuring against each other.

    Yields True when this process may use the cache file at ``path`` (it holds the lock,
    or this system has no locks), False when the lock stayed taken for ``wait_s`` seconds
    (``LOCK_WAIT_S`` by default): a holder stopped with Ctrl-Z or ``scontrol suspend``
    never lets go, so the caller then measures without the cache and writes nothing.
    """
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield True
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a")
    except OSError:
        yield True
        return
    with handle:
        if not _flock_within(handle, wait_s):
            _say_lock_is_stuck(path, lock_path, wait_s)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _flock_within(handle: Any, wait_s: float) -> bool:
    """Take an exclusive flock on ``handle``, polling until ``wait_s`` seconds have passed;
    False when another process still holds it then."""
    import fcntl

    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_LOCK_POLL_S)


def _say_lock_is_stuck(path: Path, lock_path: Path, wait_s: float) -> None:
    """One line on stderr, once per cache file and process."""
    import sys

    if str(lock_path) in _gave_up_on:
        return
    _gave_up_on.add(str(lock_path))
    holder = _flock_holder(lock_path)
    who = f"process {holder}" if holder is not None else "a process"
    if holder is not None and _is_stopped(holder):
        who += ", which is stopped (Ctrl-Z or suspended) and"
    else:
        who += ", which"
    print(f"dlscale: the cache {path} is locked by {who} has not let go for {wait_s:g} s; measuring without it", file=sys.stderr)


def _is_stopped(pid: int) -> bool:
    try:  # /proc/PID/stat: "PID (name) STATE ...", T when stopped by a signal
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def _flock_holder(lock_path: Path) -> int | None:
    """The process that holds a flock on ``lock_path``, from /proc/locks; None when unknown."""
    try:
        stat = os.stat(lock_path)
        file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
        with open("/proc/locks") as handle:
            for line in handle:  # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2150028 0 EOF"
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def measured_peaks(remeasure: bool = False) -> dict[str, Any]:
    """Measured GEMM FLOP/s per precision and copy bandwidth of every device of this machine,
    from the cache when it holds this machine's figures, else measured now (and cached).

    ``{"devices": {"cpu": {...}, "cuda:0": {...}}, "provenance": {...}, "cache": {"path", "hit"}}``
    """
    from dlscale.runs.directory import write_json

    if not remeasure:
        cached = cached_peaks()
        if cached is not None and not _worth_remeasuring(cached):
            return cached
        remeasure = cached is not None  # a busy-machine figure, and the machine is quiet now
    print_ = fingerprint()
    path = cache_path(print_)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writable = True
    except OSError:
        writable = False
    with _machine_lock(path) if writable else contextlib.nullcontext(False) as locked:
        if not remeasure:  # another process may have measured while this one waited
            cached = cached_peaks()
            if cached is not None:
                return cached
        result = measure_peaks()
        saved = False
        if locked:  # never write beside a holder that may still write (it was only stopped)
            try:
                write_json(path, {"fingerprint": print_, **result})
                saved = True
            except OSError:
                pass  # a read-only cache folder: the figures are still good, only not kept
    return {**result, "cache": {"path": str(path) if saved else None, "hit": False}}


# --------------------------------------------------------------------------- peaks for MFU


@dataclass(frozen=True)
class PeakFlops:
    datasheet: float | None  # dense datasheet FLOP/s of ONE device at this precision, None when unknown
    datasheet_source: str | None
    measured: float | None  # measured large-GEMM FLOP/s of ONE device at this precision, None if not measured


def peak_flops(device: torch.device, precision: str) -> PeakFlops:
    """The peaks MFU is computed against, for one device at ``precision`` (fp32, bf16, fp16).

    On CUDA, fp32 means TF32 when this process lets fp32 matmuls run as TF32 (and the chip
    has TF32), plain fp32 otherwise. The measured figure comes from the cache, measuring
    once when this machine has none.
    """
    peaks.check_precision(precision)
    device = torch.device(device)
    if device.type == "cpu":
        rates = measured_peaks()["devices"]["cpu"].get("gemm_flops_per_second", {})
        return PeakFlops(datasheet=None, datasheet_source=None, measured=rates.get(precision))
    if device.type != "cuda":
        return PeakFlops(datasheet=None, datasheet_source=None, measured=None)
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    tf32 = precision == "fp32" and tf32_matmul_enabled()
    key = "tf32" if tf32 and peaks.datasheet_peak(props.name, "tf32") is not None else precision
    found = _datasheet_for(props.name, key, props.multi_processor_count)
    source = None
    if found is not None:
        source = found[1]
        if key == "tf32":
            source = f"fp32 matmuls run as TF32 in this process: {source}"
    entry = measured_peaks()["devices"].get(f"cuda:{index}", {})
    rates = entry.get("gemm_flops_per_second") or {}
    measured = rates.get("tf32") if tf32 and "tf32" in rates else rates.get(precision)
    return PeakFlops(datasheet=found[0] if found else None, datasheet_source=source, measured=measured)


# --------------------------------------------------------------------------- the report


def hw_report(measure: bool = True, remeasure: bool = False) -> dict[str, Any]:
    """What ``dlscale hw --json`` prints and each run keeps as hardware.json: the inventory,
    the driver, every GPU's dense datasheet peaks (all precisions, with sources) and, when
    ``measure``, the measured peaks of every device with their provenance."""
    from dlscale.hardware.provenance import driver_version

    report = inventory()
    report["driver"] = driver_version()  # NVIDIA driver through nvidia-ml-py, when installed
    report["gpu_count"] = len(report["gpus"])
    report["datasheet_peaks"] = {f"cuda:{g['index']}": datasheet_peaks(g["index"]) for g in report["gpus"]}
    report["cpu_peak_note"] = "CPUs have no datasheet entry: MFU on a CPU uses the measured large-GEMM rate"
    report["measured_peaks"] = measured_peaks(remeasure=remeasure) if measure else None
    return report
