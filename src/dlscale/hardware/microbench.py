"""The micro-benchmarks behind the measured peaks: a large GEMM per precision and a
memory copy, on the CPU and on each GPU.

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

Also here: the TF32 switches, since "fp32" on a GPU is measured (and its peak chosen)
as IEEE fp32 or TF32 by them.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Callable, Iterator

import torch

from dlscale.hardware.device import DTYPES
from dlscale.hardware.inventory import cpu_model, memory_bytes

CPU_GEMM_PRECISIONS = ("fp32", "bf16")  # fp16 on CPU is not used for training here
CPU_GEMM_MAX_N = 4096
CPU_GEMM_CALL_SECONDS = 0.1  # grow n until one call takes about this long
CPU_GEMM_BUDGET_SECONDS = 1.0  # timed repeats per precision
CPU_COPY_BYTES = 256 * 2**20
CUDA_GEMM_N = 8192
CUDA_COPY_BYTES = 2**30
MIN_REPEATS, MAX_REPEATS = 3, 10
CUDA_REPEATS = 5


# --------------------------------------------------------------------------- TF32 switches


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
def fp32_matmul_mode(tf32: bool) -> Iterator[None]:
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


def _dtype(precision: str) -> torch.dtype:
    """TF32 is fp32 storage; only the matmul mode differs."""
    return DTYPES["fp32" if precision == "tf32" else precision]


# --------------------------------------------------------------------------- CPU


def _stats(values: list[float]) -> tuple[float, float]:
    return max(values), statistics.median(values)


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _cpu_gemm(precision: str) -> dict[str, Any]:
    """Best and median FLOP/s of an n x n matmul on the CPU, n grown until a call takes ~0.1 s."""
    dtype = _dtype(precision)
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


def measure_cpu() -> dict[str, Any]:
    """The CPU's GEMM rates (fp32, bf16) and copy bandwidth, as one device entry."""
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


# --------------------------------------------------------------------------- CUDA


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


def measure_cuda(index: int) -> dict[str, Any]:
    """GPU ``index``'s GEMM rates (fp32, tf32, bf16, fp16 as the chip has them) and copy
    bandwidth, as one device entry. Raises RuntimeError when the GPU is out of memory or busy."""
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
            dtype = _dtype(precision)
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            c = torch.empty(n, n, device=device, dtype=dtype)
            with fp32_matmul_mode(precision == "tf32"):
                gemm[precision] = {"n": n, **_cuda_time(lambda: torch.mm(a, b, out=c), 2 * n**3, device)}
            del a, b, c
        nbytes = min(CUDA_COPY_BYTES, _round_up(free // 8, 2**20))
        src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
        dst = torch.empty_like(src)
        copy = {"bytes": src.nbytes, **_cuda_time(lambda: dst.copy_(src), 2 * src.nbytes, device, repeats=10)}
        del src, dst
        torch.cuda.empty_cache()
    return _device_entry(props.name, gemm, copy, time.perf_counter() - start)
