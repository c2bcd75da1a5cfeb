"""Training on a folder of real JPEGs: augmentation, loader processes, exact resume, data wait."""

import signal
import subprocess
import sys
import time

from conftest import last_json, make_photo_folder, run_cli


RUN = ["train", "--model", "cnn", "--data", "photos", "--augment", "standard", "--image-size", "32",
       "--workers", "1", "--batch-size", "8", "--max-steps", "10", "--checkpoint-every", "4",
       "--precision", "fp32", "--no-channels-last", "--seed", "2"]


def test_a_photo_folder_trains_with_augmentation_and_workers_and_resumes_exactly(tmp_path):
    make_photo_folder(tmp_path / "photos")
    whole = run_cli([*RUN, "--run-dir", "whole", "--json"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    expected = last_json(whole.stdout)
    assert expected["steps"] == 10 and 0 <= expected["data_wait_fraction"] < 1
    assert expected["test_loss"] is not None and "Traceback" not in whole.stderr

    proc = subprocess.Popen([sys.executable, "-m", "dlscale", *RUN, "--run-dir", "killed"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step-4").exists():  # 4 steps an epoch: mid-run, at an epoch end
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(["train", "--resume", "killed", "--json"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    got = last_json(resumed.stdout)
    # the same crops and flips after the resume: the same losses to the last bit
    assert (got["final_loss"], got["test_loss"]) == (expected["final_loss"], expected["test_loss"])


def test_a_broken_photo_stops_training_with_one_line_or_is_skipped_and_counted(tmp_path):
    make_photo_folder(tmp_path / "photos" / "train", per_class=2)  # 6 photos, all in one step of 6
    broken = tmp_path / "photos" / "train" / "green" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    args = [*RUN, "--batch-size", "6", "--max-steps", "2", "--checkpoint-every", "0"]
    stopped = run_cli([*args, "--run-dir", "stopped"], cwd=tmp_path)
    assert stopped.returncode == 2
    assert stopped.stderr.strip().splitlines()[-1].startswith("error: cannot read image photos/train/green/1.jpg (Truncated")
    assert "Traceback" not in stopped.stderr and not (tmp_path / "stopped").exists()
    skipped = run_cli([*args, "--skip-bad-files", "--run-dir", "skipped", "--json"], cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert last_json(skipped.stdout)["skipped_files"] == 1  # met in both epochs, counted once
    assert "1 unreadable image files were skipped" in skipped.stderr
