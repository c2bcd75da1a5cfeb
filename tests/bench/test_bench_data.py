"""`dlscale bench data` on a real folder of JPEGs: loader rates by workers beside the training rate."""

import json

from conftest import last_json, make_photo_folder, run_cli

FAST = ["--model", "cnn", "--image-size", "16", "--augment", "standard", "--batch-size", "8", "--seconds", "0.6",
        "--train-steps", "1"]


def test_bench_data_times_the_loader_by_workers_and_says_whether_training_would_wait(tmp_path):
    make_photo_folder(tmp_path / "photos", per_class=8)
    done = run_cli(["bench", "data", "--data", "photos", "--workers", "0,1", *FAST, "--run-dir", "b", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["kind"] == "data" and [r["workers"] for r in result["results"]] == [0, 1]
    for row in result["results"]:
        assert row["samples_per_second"] > 0 and row["decoder"] == "simplejpeg" and len(row["repeats"]) == 3
        assert row["train_samples_per_second"] == result["train_samples_per_second"] > 0
        assert row["input_bound"] == (row["samples_per_second"] < row["train_samples_per_second"])
    assert set(result["decode"]) == {"pillow", "pillow-full", "simplejpeg"} and result["augment"] == "standard"
    assert result["workers_needed"] >= 1 and result["advice"] in done.stderr
    assert json.loads((tmp_path / "b" / "bench-data.json").read_text())["results"] == result["results"]


def test_bench_data_refuses_bad_workers_and_missing_data_in_one_line(tmp_path):
    for args, fragment in ((["--data", "photos", "--workers", "0,x"], "--workers takes process counts"),
                           (["--data", "nowhere/", "--workers", "0"], "nowhere/ does not exist")):
        done = run_cli(["bench", "data", *args, *FAST, "--run-dir", "b"], cwd=tmp_path)
        assert done.returncode == 2 and fragment in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "b").exists()
