import json
import math
import stat

from dlscale.runs import files as runs


def test_atomic_json_writes_valid_json_with_normal_permissions(tmp_path):
    target = tmp_path / "summary.json"
    runs.write_json(target, {"a": 1.0, "bad": math.nan})
    assert json.loads(target.read_text()) == {"a": 1.0, "bad": None}
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # readable by others, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
