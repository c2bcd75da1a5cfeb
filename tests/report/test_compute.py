"""``dlscale compute`` and the landmark table (fast; one tiny real run)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

import dlscale
from dlscale.cli import compute
from dlscale.report.compute import compute_report
from dlscale.errors import UserError
from dlscale.cli import main
from dlscale.report.landmarks import LANDMARKS, landmark, nearest, rank_among
from dlscale.units import PFS_DAY_FLOPS, pfs_days


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("compute") / "r"
    dlscale.fit("mlp", "digits", max_steps=5, run_dir=str(run_dir), verbose=False)
    return run_dir


def test_pfs_day_arithmetic():
    assert PFS_DAY_FLOPS == 8.64e19
    assert pfs_days(8.64e19) == pytest.approx(1.0)
    assert pfs_days(0) == 0


def test_gpt3_is_about_3640_pfs_days():
    assert pfs_days(3.14e23) == pytest.approx(3640, rel=0.01)
    assert landmark("GPT-3 175B").pfs_days == pytest.approx(3640, rel=0.01)


def test_landmark_table_sane():
    assert len(LANDMARKS) == 18
    assert len({e.name for e in LANDMARKS}) == len(LANDMARKS)
    for entry in LANDMARKS:
        assert entry.source.strip()
        assert 2012 <= entry.year <= 2020
        assert entry.pfs_days > 0
    years = [e.year for e in LANDMARKS]
    assert years == sorted(years)
    assert landmark("AlexNet").pfs_days == 0.0058
    assert landmark("AlexNet").year == 2012
    assert landmark("AlphaGo Zero").pfs_days == 1860


def test_rank_among_boundaries():
    smallest = min(e.pfs_days for e in LANDMARKS)
    largest = max(e.pfs_days for e in LANDMARKS)
    assert rank_among(0.0) == 0
    assert rank_among(smallest) == 0  # a tie is not "less"
    assert rank_among(math.nextafter(smallest, math.inf)) == 1
    assert rank_among(largest) == len(LANDMARKS) - 1
    assert rank_among(largest * 1.0001) == len(LANDMARKS)
    assert rank_among(0.0058) == 2  # above DQN and Dropout, tied with AlexNet


def test_nearest():
    assert [e.name for e in nearest(3640)][-1] == "GPT-3 175B"
    assert len(nearest(1e-12)) == 2


def test_cli_on_a_real_run(tiny_run, capsys):
    assert main(["compute", str(tiny_run), "--json"]) == 0
    out, err = capsys.readouterr()
    obj = json.loads(out.strip().splitlines()[-1])
    summary = json.loads((tiny_run / "summary.json").read_text())
    for key in ("total_flops", "pfs_days", "device_hours", "energy_kwh", "landmarks", "rank_among_landmarks",
                "device_hours_basis"):
        assert key in obj
    assert obj["total_flops"] == summary["total_flops"] > 0
    assert obj["pfs_days"] == pytest.approx(summary["total_flops"] / 8.64e19)
    assert obj["pfs_days"] == pytest.approx(summary["pfs_days"], rel=1e-9)
    assert obj["device_hours"] == pytest.approx(summary["wall_seconds"] * summary["world_size"] / 3600)
    assert obj["energy_kwh"] is None
    assert obj["rank_among_landmarks"] == 0  # a 5-step MLP is below DQN
    assert obj["fraction_of_alexnet"] == pytest.approx(obj["pfs_days"] / 0.0058)
    assert len(obj["landmarks"]) == len(LANDMARKS)
    assert set(obj["landmarks"][0]) == {"name", "year", "pfs_days", "source"}
    assert "AlexNet" in err and "GPT-3" in err


def test_chart_without_matplotlib_is_a_note(tiny_run, tmp_path, capsys, monkeypatch):
    import dlscale.report.compute as history

    monkeypatch.setattr(history, "have_matplotlib", lambda: False)
    args = argparse.Namespace(run_dir=str(tiny_run), json=True, chart=str(tmp_path / "c.png"))
    assert compute.run(args) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert obj["chart"] is None
    assert any("install matplotlib" in n for n in obj["notes"])
    assert not (tmp_path / "c.png").exists()


def test_summary_pfs_days_mismatch_is_noted(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"total_flops": 8.64e19, "pfs_days": 2.0, "wall_seconds": 7200, "world_size": 4}))
    obj = compute_report(tmp_path)
    assert obj["pfs_days"] == pytest.approx(1.0)
    assert obj["device_hours"] == pytest.approx(8.0)
    assert any("recomputed" in n for n in obj["notes"])


@pytest.mark.parametrize("case", ["missing", "no_summary", "corrupt", "not_object", "bad_flops", "no_flops"])
def test_errors_are_one_line_exit_2(case, tmp_path, capsys):
    target = tmp_path / "run"
    if case != "missing":
        target.mkdir()
    contents = {
        "corrupt": "{not json",
        "not_object": "[1, 2]",
        "bad_flops": json.dumps({"total_flops": "lots"}),
        "no_flops": json.dumps({"model": "mlp"}),
    }
    if case in contents:
        (target / "summary.json").write_text(contents[case])
    assert main(["compute", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    if case == "no_summary":
        assert err[0] == f"error: {target} has no summary.json: it is not a finished run"
    with pytest.raises(UserError):
        compute.run(argparse.Namespace(run_dir=str(target), json=False, chart=None))
