"""Energy a run used, from the GPU's own power readings (nvidia-ml-py), when it can tell.

A thread reads the device's power draw every ``interval_s`` and integrates it over time
(trapezoids). No reading, no figure: on CPUs, or without nvidia-ml-py, the energy stays
null rather than being estimated from a TDP.
"""

from __future__ import annotations

import threading
import time


def _nvml():
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class PowerSampler:
    """Integrates one GPU's power (watts) into joules while it runs."""

    def __init__(self, gpu_index: int, interval_s: float = 0.5) -> None:
        self.gpu_index = gpu_index
        self.interval_s = interval_s
        self.joules = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = _nvml()
        self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> "PowerSampler":
        if self._nvml is None:
            return self
        try:
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.gpu_index)
            self._read()
        except Exception:  # no driver, no permission, no such GPU: no energy figure
            self._handle = None
            return self
        self._thread = threading.Thread(target=self._run, name="dlscale-power", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._handle is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def _read(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0  # milliwatts

    def _run(self) -> None:
        last_time, last_watts = time.monotonic(), self._read()
        while not self._stop.wait(self.interval_s):
            now, watts = time.monotonic(), self._read()
            self.joules += (watts + last_watts) / 2 * (now - last_time)
            self.samples += 1
            last_time, last_watts = now, watts

    @property
    def kwh(self) -> float | None:
        return self.joules / 3.6e6 if self.available and self.samples else None
