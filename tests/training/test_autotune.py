"""Measured choice of CPU precision and memory format: the decision rule and the cache
with a fake timer (no timing assertions: the machine is noisy), and one real run."""

from __future__ import annotations

import json
import time

import pytest
import torch

from dlscale.training import autotune
from dlscale.models import build_model


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_CACHE_DIR", str(tmp_path / "cache"))


def _images(batch: int = 32):
    torch.manual_seed(0)
    return torch.randn(batch, 1, 8, 8), torch.randint(0, 10, (batch,))


def _fake_timer(monkeypatch, times: dict[tuple[str, bool], float]) -> list:
    """Replace the timer with fixed ms per (precision, channels_last); returns its call log."""
    calls = []
    probe = []

    def fake(model, x, y, precision, channels_last, warmup_limit_s=float("inf"), timed_steps=3):
        probe.append(probe[0] if probe else len(x))  # the baseline is timed on the whole probe
        calls.append((precision, channels_last, tuple(x.shape)))
        return times[(precision, channels_last)] * len(x) / probe[0]  # a step's time, linear in the samples

    monkeypatch.setattr(autotune, "median_step_ms", fake)
    return calls


def _choose(model=None, x=None, y=None, *, key="cnn|data", precision="auto", channels_last=None, conv=True):
    if x is None:
        x, y = _images()
    model = model if model is not None else build_model("cnn", (1, 8, 8), 10)
    return autotune.choose_cpu_settings(
        model, x, y, key=key, precision=precision, channels_last=channels_last, conv=conv
    )


def _cache_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").glob("settings-*.json")) if (tmp_path / "cache").exists() else []


@pytest.mark.parametrize("precision, channels_last", [("fp32", False), ("bf16", True), ("bf16", None)])
def test_fixed_settings_are_returned_without_measuring(monkeypatch, tmp_path, precision, channels_last):
    calls = _fake_timer(monkeypatch, {})
    conv = channels_last is not None  # None on a non-conv model leaves only NCHW
    choice = _choose(precision=precision, channels_last=channels_last, conv=conv)
    assert choice == autotune.Choice(precision, bool(channels_last), {}, cached=False)
    assert calls == []
    assert _cache_files(tmp_path) == []


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        _choose(precision="fp16")


# ------------------------------------------------------------------ the decision rule

@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """The load average must not decide whether a cached answer is re-measured in these tests."""
    from dlscale.hardware import contention

    monkeypatch.setattr(contention, "machine_busy", lambda: False)


FP32, FP32_CL, BF16, BF16_CL = ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)


@pytest.mark.parametrize(
    "times, expected",
    [
        ({FP32: 10.0, FP32_CL: 10.0, BF16: 10.0, BF16_CL: 10.0}, FP32),  # ties keep fp32/NCHW
        ({FP32: 10.0, FP32_CL: 9.8, BF16: 9.5, BF16_CL: 9.5}, FP32),  # 2% and 5%: below both margins
        ({FP32: 10.0, FP32_CL: 9.6, BF16: 20.0, BF16_CL: 20.0}, FP32_CL),  # channels_last 4% faster
        ({FP32: 10.0, FP32_CL: 10.0, BF16: 8.9, BF16_CL: 8.9}, BF16),  # bf16 11% faster
        ({FP32: 10.0, FP32_CL: 10.0, BF16: 8.9, BF16_CL: 8.0}, BF16_CL),
        ({FP32: 10.0, FP32_CL: 10.0, BF16: 8.9, BF16_CL: 8.7}, BF16),  # bf16 CL only 2% better than bf16
        # bf16 is compared with the best fp32 variant, even one the 3% margin did not pick
        ({FP32: 10.0, FP32_CL: 9.8, BF16: 8.9, BF16_CL: 8.9}, FP32),
        # the measured gpt-tiny case: bf16 slower
        ({FP32: 15.1, FP32_CL: 15.1, BF16: 19.0, BF16_CL: 19.0}, FP32),
        # the measured resnet18 case
        ({FP32: 1603.0, FP32_CL: 1125.0, BF16: 628.0, BF16_CL: 593.0}, BF16_CL),
    ],
)
def test_decision_rule(monkeypatch, times, expected):
    calls = _fake_timer(monkeypatch, times)
    choice = _choose()
    assert (choice.precision, choice.channels_last) == expected
    assert sorted({(p, cl) for p, cl, _ in calls}) == sorted(times)
    assert choice.step_ms == {
        "fp32": times[FP32], "fp32+channels_last": times[FP32_CL], "bf16": times[BF16], "bf16+channels_last": times[BF16_CL]
    }
    assert choice.cached is False


def test_only_the_open_settings_are_measured(monkeypatch):
    calls = _fake_timer(monkeypatch, {FP32_CL: 10.0, BF16_CL: 8.0, BF16: 1.0})
    choice = _choose(precision="auto", channels_last=True)
    assert [(p, cl) for p, cl, _ in calls] == [FP32_CL, BF16_CL]
    assert (choice.precision, choice.channels_last) == BF16_CL

    calls = _fake_timer(monkeypatch, {BF16: 10.0, BF16_CL: 9.0})
    choice = _choose(key="other", precision="bf16", channels_last=None)
    assert [(p, cl) for p, cl, _ in calls] == [BF16, BF16_CL]
    assert (choice.precision, choice.channels_last) == BF16_CL
    assert choice.step_ms == {"bf16": 10.0, "bf16+channels_last": 9.0}


def test_non_conv_model_never_gets_channels_last(monkeypatch):
    calls = _fake_timer(monkeypatch, {FP32: 10.0, BF16: 5.0})
    choice = _choose(build_model("mlp", (1, 8, 8), 10), conv=False)
    assert [(p, cl) for p, cl, _ in calls] == [FP32, BF16]
    assert (choice.precision, choice.channels_last) == BF16


def test_probe_is_at_most_probe_samples_of_the_batch(monkeypatch):
    monkeypatch.setattr(autotune, "PROBE_SAMPLES", 16)
    calls = _fake_timer(monkeypatch, {FP32: 1.0, FP32_CL: 1.0, BF16: 1.0, BF16_CL: 1.0})
    _choose()  # a batch of 32
    assert {shape for _, _, shape in calls} == {(16, 1, 8, 8)}
    x, y = _images(batch=5)
    _choose(x=x, y=y, key="small")
    assert {shape for _, _, shape in calls[4:]} == {(5, 1, 8, 8)}


def test_a_first_step_over_the_limit_stops_measuring(monkeypatch):
    calls = _fake_timer(monkeypatch, {FP32: 6000.0, FP32_CL: 1.0, BF16: 1.0, BF16_CL: 1.0})
    choice = _choose()
    assert calls == [("fp32", False, (32, 1, 8, 8))]
    assert choice == autotune.Choice("fp32", False, {"fp32": 6000.0}, cached=False)

    calls = _fake_timer(monkeypatch, {FP32_CL: 6000.0, BF16_CL: 1.0})
    choice = _choose(key="other", channels_last=True)
    assert (choice.precision, choice.channels_last, len(calls)) == ("fp32", True, 1)


def test_the_real_timer_gives_up_after_a_slow_warmup():
    x, y = _images(batch=4)
    model = build_model("cnn", (1, 8, 8), 10)
    # a limit of 0 s: only the warm-up step is run and its time returned
    assert autotune.median_step_ms(model, x, y, "fp32", False, warmup_limit_s=0.0) > 0


# ------------------------------------------------------------------ the cache


def test_second_call_reads_the_cache(monkeypatch, tmp_path):
    times = {FP32: 10.0, FP32_CL: 9.0, BF16: 8.0, BF16_CL: 7.0}
    calls = _fake_timer(monkeypatch, times)
    first = _choose()
    assert len(calls) == 4 and first.cached is False
    (name,) = _cache_files(tmp_path)
    assert name.startswith("settings-") and name.endswith(".json")

    second = _choose()
    assert len(calls) == 4  # not measured again
    assert second == autotune.Choice(first.precision, first.channels_last, first.step_ms, cached=True)

    data = json.loads((tmp_path / "cache" / name).read_text())
    assert list(data["choices"]) == ["cnn|data|auto|None|32x1x8x8"]
    assert data["choices"]["cnn|data|auto|None|32x1x8x8"] == {
        "precision": "bf16", "channels_last": True, "step_ms": first.step_ms, "busy": False
    }


def test_a_choice_timed_on_a_busy_machine_is_measured_again_once_it_is_quiet(monkeypatch, tmp_path):
    from dlscale.hardware import contention

    calls = _fake_timer(monkeypatch, {FP32: 10.0, FP32_CL: 9.0, BF16: 8.0, BF16_CL: 7.0})
    monkeypatch.setattr(contention, "machine_busy", lambda: True)
    _choose()
    assert _choose().cached is True and len(calls) == 4  # still busy: the busy answer is better than none
    monkeypatch.setattr(contention, "machine_busy", lambda: False)
    assert _choose().cached is False and len(calls) == 8  # quiet now: measured again
    assert _choose().cached is True and len(calls) == 8


def test_cache_file_follows_the_peaks_fingerprint(monkeypatch, tmp_path):
    _fake_timer(monkeypatch, {FP32: 10.0, FP32_CL: 9.0, BF16: 8.0, BF16_CL: 7.0})
    _choose()
    (name,) = _cache_files(tmp_path)
    from dlscale.hardware import peaks

    assert name == "settings-" + peaks.cache_path().name.removeprefix("peaks-")
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")  # another torch: another file
    calls = _fake_timer(monkeypatch, {FP32: 10.0, FP32_CL: 9.0, BF16: 8.0, BF16_CL: 7.0})
    assert _choose().cached is False and len(calls) == 4
    assert len(_cache_files(tmp_path)) == 2


def test_other_keys_and_settings_are_measured_again_and_all_are_kept(monkeypatch, tmp_path):
    calls = _fake_timer(monkeypatch, {FP32: 10.0, FP32_CL: 10.0, BF16: 5.0, BF16_CL: 5.0})
    _choose(key="a")
    _choose(key="b")
    _choose(key="a", channels_last=False)  # other user settings: another entry
    x, y = _images(batch=8)
    _choose(x=x, y=y, key="a")  # another probe shape: another entry
    assert len(calls) == 4 + 4 + 2 + 4
    assert all(_choose(key=k).cached for k in ("a", "b"))
    assert _choose(key="a", channels_last=False).cached
    (name,) = _cache_files(tmp_path)
    data = json.loads((tmp_path / "cache" / name).read_text())
    assert sorted(data["choices"]) == [
        "a|auto|False|32x1x8x8", "a|auto|None|32x1x8x8", "a|auto|None|8x1x8x8", "b|auto|None|32x1x8x8"
    ]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        '{"choices": [1]}',
        '{"choices": {"cnn|data|auto|None|32x1x8x8": {"precision": "fp16", "channels_last": false, "step_ms": {}}}}',
        '{"choices": {"cnn|data|auto|None|32x1x8x8": {"precision": "bf16", "channels_last": "yes", "step_ms": {}}}}',
        "\udcff",
    ],
)
def test_a_corrupt_cache_is_ignored_and_overwritten(monkeypatch, tmp_path, content):
    calls = _fake_timer(monkeypatch, {FP32: 10.0, FP32_CL: 10.0, BF16: 5.0, BF16_CL: 5.0})
    _choose(key="warm")  # creates the file
    (name,) = _cache_files(tmp_path)
    (tmp_path / "cache" / name).write_bytes(content.encode("utf-8", "surrogateescape"))
    choice = _choose()
    assert choice.cached is False and len(calls) == 8
    assert (choice.precision, choice.channels_last) == BF16
    assert _choose().cached is True


def test_an_unwritable_cache_never_fails(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DLSCALE_CACHE_DIR", str(blocker / "cache"))  # mkdir fails, even as root
    calls = _fake_timer(monkeypatch, {FP32: 10.0, FP32_CL: 10.0, BF16: 5.0, BF16_CL: 5.0})
    choice = _choose()
    assert (choice.precision, choice.channels_last, choice.cached) == ("bf16", False, False)
    assert _choose().cached is False and len(calls) == 8  # measured again: nothing was kept


# ------------------------------------------------------------------ real measurements


def test_real_run_on_a_cnn_measures_every_variant_and_leaves_the_model_alone():
    torch.manual_seed(1)
    model = build_model("cnn", (1, 8, 8), 10).train()
    x, y = _images(batch=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any("running_mean" in k for k in before)
    rng = torch.get_rng_state()

    choice = _choose(model, x, y)

    # every variant, but bf16+channels_last where bf16's warm-up was hopeless on this CPU
    assert {"fp32", "fp32+channels_last", "bf16"} <= set(choice.step_ms) <= {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert all(ms > 0 for ms in choice.step_ms.values())
    assert choice.precision in ("fp32", "bf16") and isinstance(choice.channels_last, bool)
    assert choice.cached is False
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # not converted to channels_last
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert _choose(model, x, y) == autotune.Choice(
        choice.precision, choice.channels_last, choice.step_ms, cached=True
    )


def test_real_run_on_a_language_model():
    torch.manual_seed(0)
    model = build_model("gpt-tiny", (16,), 50)
    x, y = torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice = _choose(model, x, y, key="gpt-tiny|tokens", conv=False)
    assert set(choice.step_ms) == {"fp32", "bf16"}
    assert choice.channels_last is False and choice.precision in ("fp32", "bf16")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_stopped_process_holding_the_cache_lock_does_not_stop_this_one(monkeypatch, tmp_path, capfd):
    """Ctrl-Z or ``scontrol suspend`` on a run that holds the settings-cache lock: this one
    waits at most LOCK_WAIT_S, measures for real without the cache and writes nothing."""
    from stopped_process import stopped_lock_holder

    from dlscale.hardware import contention

    monkeypatch.setattr(contention, "LOCK_WAIT_S", 0.5)
    path = autotune.cache_path()
    with stopped_lock_holder(path) as holder:
        started = time.monotonic()
        choice = _choose()
        elapsed = time.monotonic() - started
        assert choice.cached is False and {"fp32", "fp32+channels_last", "bf16"} <= set(choice.step_ms) <= {
            "fp32", "fp32+channels_last", "bf16", "bf16+channels_last"
        }
        assert all(ms > 0 for ms in choice.step_ms.values())
        assert not path.exists()
    assert elapsed < 0.5 + 30  # the wait, then a real measurement of a tiny model
    (line,) = [l for l in capfd.readouterr().err.splitlines() if l.startswith("dlscale:") and "lock" in l]
    assert str(path) in line and f"process {holder.pid}" in line and line.endswith("measuring without it")
    assert _choose().cached is False and _choose().cached is True  # free again: cached as before


def test_a_variant_whose_warm_up_is_several_times_the_best_is_not_timed_further(monkeypatch, tmp_path):
    """bf16 on a CPU without bf16 units took 29 s a step against fp32's 1.8 s for resnet18: the
    probe stops timing a variant once its warm-up step is HOPELESS_WARMUP times the best median."""
    limits = {}

    def fake(model, x, y, precision, channels_last, warmup_limit_s=float("inf")):
        limits[(precision, channels_last)] = warmup_limit_s
        return {("fp32", False): 10.0, ("fp32", True): 8.0, ("bf16", False): 90.0, ("bf16", True): 70.0}[(precision, channels_last)]

    monkeypatch.setattr(autotune, "median_step_ms", fake)
    choice = _choose()
    assert (choice.precision, choice.channels_last) == ("fp32", True)
    assert limits[("fp32", False)] == autotune.FIRST_STEP_LIMIT_S
    assert limits[("fp32", True)] == pytest.approx(autotune.HOPELESS_WARMUP * 10.0 / 1e3)
    assert limits[("bf16", False)] == pytest.approx(autotune.HOPELESS_WARMUP * 8.0 / 1e3)
    # bf16's warm-up (90 ms) was over 3 x 8 ms: its channels_last layout is not tried at all
    assert ("bf16", True) not in limits and set(choice.step_ms) == {"fp32", "fp32+channels_last", "bf16"}


def test_slow_steps_scout_a_later_variant_on_a_few_samples_first(monkeypatch, capfd):
    """When the baseline's steps are slow (a limit over SCOUT_ABOVE_S), a later variant is first
    timed on SCOUT_SAMPLES samples and scaled up; over the limit, it is hopeless at that cost."""
    calls = []
    per_sample = {("fp32", False): 10.0, ("fp32", True): 9.0, ("bf16", False): 200.0, ("bf16", True): 150.0}

    def fake(model, x, y, precision, channels_last, warmup_limit_s=float("inf"), timed_steps=3):
        calls.append((precision, channels_last, len(x)))
        return per_sample[(precision, channels_last)] * len(x)  # ms, linear in the samples

    monkeypatch.setattr(autotune, "median_step_ms", fake)
    choice = _choose(x=torch.randn(64, 1, 8, 8), y=torch.randint(0, 10, (64,)))
    # fp32: 640 ms a step, a limit of 1.92 s: the others are scouted on 8 samples first
    assert calls[0] == ("fp32", False, 64)
    assert ("fp32", True, 8) in calls and ("fp32", True, 64) in calls  # 576 ms: not hopeless, timed in full
    assert ("bf16", False, 8) in calls and ("bf16", False, 64) not in calls  # 12.8 s: hopeless from 8 samples
    assert all(p != "bf16" or cl is False for p, cl, _ in calls)  # nor is bf16's other layout tried
    assert (choice.precision, choice.channels_last) == ("fp32", True)
    assert choice.step_ms["bf16"] == pytest.approx(200.0 * 64)
    assert "timing fp32, fp32+channels_last, bf16, bf16+channels_last training steps" in capfd.readouterr().err
