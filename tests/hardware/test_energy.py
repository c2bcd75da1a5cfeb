import sys
import time
import types

import pytest

from dlscale.hardware.energy import PowerSampler


@pytest.fixture
def fake_nvml(monkeypatch):
    """A stand-in for nvidia-ml-py: one GPU drawing a steady 250 W."""
    calls = {"init": 0, "shutdown": 0}
    module = types.SimpleNamespace(
        nvmlInit=lambda: calls.__setitem__("init", calls["init"] + 1),
        nvmlShutdown=lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1),
        nvmlDeviceGetHandleByIndex=lambda index: f"gpu{index}",
        nvmlDeviceGetPowerUsage=lambda handle: 250_000,  # milliwatts
    )
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return calls


def test_steady_power_integrates_to_watts_times_seconds(fake_nvml):
    start = time.monotonic()
    with PowerSampler(0, interval_s=0.05) as sampler:
        time.sleep(0.6)
    elapsed = time.monotonic() - start
    assert sampler.samples >= 5
    assert 250 * 0.45 <= sampler.joules <= 250 * elapsed
    assert sampler.kwh == pytest.approx(sampler.joules / 3.6e6)
    assert fake_nvml == {"init": 1, "shutdown": 1}


def test_without_nvidia_ml_py_there_is_no_figure(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with PowerSampler(0, interval_s=0.01) as sampler:
        time.sleep(0.05)
    assert not sampler.available and sampler.kwh is None


def test_a_driver_error_means_no_figure_not_a_crash(monkeypatch):
    def broken():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=broken))
    with PowerSampler(0) as sampler:
        pass
    assert sampler.kwh is None
