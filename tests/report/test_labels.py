"""Keys shown as labels in human units, the compute trend fit, and the lab's resolved settings."""

from __future__ import annotations

import pytest

from dlscale.report.labels import Explainer, describe, format_value, label
from dlscale.report.landmarks import LANDMARKS, Landmark, doubling_trend
from dlscale.report.ranges import folded_keys, value_range


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("total_flops", 173124157440, "173.1 GFLOP"),
        ("peak_memory_bytes", 357564416, "341.0 MiB"),
        ("mfu", 0.0935, "9.35%"),
        ("samples_per_second", 1409.2, "1,409 samples/s"),
        ("step_time_median_s", 0.0123, "12.3 ms"),
        ("latency_p99_ms", 12.3, "12.3 ms"),
        ("wall_seconds", 200.0, "3 min 20 s"),
        ("achieved_flops_per_second", 2.5e13, "25.0 TFLOP/s"),
        ("compiled", False, "no"),
        ("test_accuracy", None, "-"),
        ("speedup", 3.21, "3.21×"),
    ],
)
def test_known_keys_read_in_units(key, value, shown):
    assert format_value(key, value) == shown


@pytest.mark.parametrize(
    "key, words, value, shown",
    [
        ("load_average_before", "load average before", 0.5, "0.5"),
        ("samples_per_second_p90", "throughput p90", 1500.0, "1,500 samples/s"),
        ("queue_wait_ms", "queue wait", 4.0, "4 ms"),
        ("activation_bytes", "activation", 2048, "2.0 KiB"),
        ("images_per_second", "images per second", 12.5, "12.5 images/s"),
        ("unreliable_reason", "why not reliable", "load 3.1 on 2 cores", "load 3.1 on 2 cores"),
        ("superlinear", "faster than linear", True, "yes"),
    ],
)
def test_unknown_and_new_keys_get_words_and_units(key, words, value, shown):
    assert label(key) == words and "_" not in label(key)
    assert format_value(key, value) == shown


def test_every_known_label_is_words():
    from dlscale.report.labels import GROUPS, KEYS

    for key, entry in KEYS.items():
        assert "_" not in entry.label, key
        assert entry.group in GROUPS, key
    assert describe("no_such_key").group == "other"


def test_each_term_is_explained_once():
    explain = Explainer()
    first = explain(["mfu", "samples_per_second"])
    assert len(first) == 1 and first[0].startswith("MFU")
    assert explain(["mfu_measured_peak"]) == []
    assert explain(["latency_p50_ms"])[0].startswith("p50, p90 and p99")


def test_ranges_come_from_percentiles_step_times_or_repeated_rates():
    row = {"batch_size": 64, "samples_per_second": 50.0, "step_times_s": [1.0, 1.6, 1.28], "step_time_spread_s": 0.6}
    low, high, what = value_range(row, "samples_per_second")
    assert (low, high) == (40.0, 64.0) and "3 repeats" in what
    assert value_range(row, "step_time_median_s")[:2] == (1.0, 1.6)
    assert value_range({"x_p10": 3, "x_p90": 5, "x": 4}, "x") == (3.0, 5.0, "p10-p90")
    assert value_range({"samples_per_second": 9.0, "repeats": [8.0, 9.0, 10.0]}, "samples_per_second")[:2] == (8.0, 10.0)
    assert value_range({"samples_per_second": 9.0, "repeats": 3}, "samples_per_second") is None
    assert folded_keys([row]) >= {"step_times_s", "step_time_spread_s"}


def test_the_landmarks_double_every_three_to_four_months():
    trend = doubling_trend()
    assert 3.0 < trend.doubling_months < 4.0
    assert trend.points == sum(1 for e in LANDMARKS if 2012 <= e.year <= 2018)
    assert trend.pfs_days_at(2018) > trend.pfs_days_at(2012)


def test_the_trend_fit_is_least_squares_on_log2():
    line = tuple(Landmark(f"p{year}", year, 2.0 ** (3 * (year - 2012)), "test") for year in range(2012, 2019))
    trend = doubling_trend(line)
    assert trend.doubling_months == pytest.approx(4.0)
    with pytest.raises(ValueError, match="two years"):
        doubling_trend(line[:1])


def test_the_lab_times_its_cpu_row_with_the_training_runs_resolved_settings(tmp_path):
    from dlscale.report.lab import _resolved_settings

    (tmp_path / "config.toml").write_text('precision = "bf16"\ncompile = false\nchannels_last = true\ndevice = "cpu"\n')
    assert _resolved_settings(tmp_path) == {"precision": "bf16", "compile": False, "channels_last": True}
    (tmp_path / "config.toml").write_text('precision = "auto"\n')
    assert _resolved_settings(tmp_path) == {}
    assert _resolved_settings(tmp_path / "missing") == {}
