import json
import re

import torch

from conftest import run_cli


def test_quick_lab_measures_predicts_and_reports(tmp_path):
    done = run_cli(["lab", "--quick", "-o", "lab"], cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    lab = tmp_path / "lab"
    notes = json.loads((lab / "lab.json").read_text())["notes"]
    if not torch.cuda.is_available():
        assert any(n.startswith("No GPU was found: the CPU row stands alone") for n in notes)
    assert (lab / "train" / "summary.json").exists() and (lab / "bench-infer-cpu" / "bench-infer.json").exists()
    measured = json.loads((lab / "bench-scaling" / "bench-scaling.json").read_text())["results"]
    predicted = json.loads((lab / "forecast-scaling.json").read_text())["results"]
    assert [r["workers"] for r in measured][:2] == [1, 2]
    assert all(r["predicted"] for r in predicted) and max(r["workers"] for r in predicted) > max(r["workers"] for r in measured)
    html = (lab / "report.html").read_text()
    assert "data:image/png;base64," in html and "No GPU was found" in html
    assert "lab report:" in done.stderr
    # without a terminal, one plain line as each experiment finishes, and no ANSI codes
    assert "\x1b[" not in done.stderr
    finished = re.findall(r"^\[(\d+)/4\] (lab \([a-d]\))", done.stderr, re.M)
    assert finished == [(str(n), f"lab ({c})") for n, c in zip(range(1, 5), "abcd")], done.stderr[-3000:]


def test_lab_refuses_a_folder_that_holds_something(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "keep.txt").write_text("mine")
    done = run_cli(["lab", "--quick", "-o", "lab"], cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: lab folder lab already exists")
    assert (tmp_path / "lab" / "keep.txt").read_text() == "mine"
