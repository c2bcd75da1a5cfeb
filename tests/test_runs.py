import json
import math
import stat

import pytest
import torch

from dlscale import runs
from dlscale.errors import UserError


def test_default_run_dir_names_time_model_and_data(tmp_path):
    path = runs.default_run_dir("cnn", "/data/my mnist/", root=tmp_path)
    assert path.parent == tmp_path and path.name.endswith("-cnn-my-mnist")
    path.mkdir()
    assert runs.default_run_dir("cnn", "/data/my mnist/", root=tmp_path) != path


def test_atomic_json_writes_valid_json_with_normal_permissions(tmp_path):
    target = tmp_path / "summary.json"
    runs.write_json(target, {"a": 1.0, "bad": math.nan})
    assert json.loads(target.read_text()) == {"a": 1.0, "bad": None}
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # readable by others, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_create_refuses_a_directory_holding_a_run(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        runs.create_run_dir(tmp_path)


def test_metrics_truncate_after_drops_lines_past_the_checkpoint(tmp_path):
    log = runs.MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        log.write({"step": step})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')  # cut off by a crash
    log.truncate_after(2)
    assert [r["step"] for r in runs.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_find_resumable_picks_the_newest_unfinished_run_with_a_checkpoint(tmp_path):
    from dlscale import checkpoint

    old, new, done = (tmp_path / n for n in ("20260101T000000Z-cnn-digits", "20260102T000000Z-cnn-digits", "20260103T000000Z-cnn-digits"))
    for run in (old, new, done):
        checkpoint.save(run, 1, {"x": torch.ones(1)}, {"step": 1}, {}, keep=0)
    (done / "summary.json").write_text("{}")
    (tmp_path / "20260104T000000Z-mlp-digits").mkdir()
    assert runs.find_resumable(tmp_path, "cnn", "digits") == new
    assert runs.find_resumable(tmp_path, "resnet18", "digits") is None
