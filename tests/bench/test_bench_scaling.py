import json

import pytest

from conftest import last_json, run_cli
from dlscale.bench.scaling import add_speedup
from dlscale.cli import main


def rows(*pairs):
    return [{"workers": n, "step_time_s": t, "samples_per_second": s} for n, t, s in pairs]


def test_weak_scaling_compares_throughput_with_n_times_one_worker():
    got = add_speedup(rows((1, 0.10, 320.0), (2, 0.125, 512.0), (4, 0.2, 640.0)), strong=False)
    assert [r["speedup"] for r in got] == pytest.approx([1.0, 1.6, 2.0])
    assert [r["efficiency"] for r in got] == pytest.approx([1.0, 0.8, 0.5])


def test_strong_scaling_compares_step_times():
    got = add_speedup(rows((1, 0.40, 160.0), (2, 0.25, 256.0), (4, 0.16, 400.0)), strong=True)
    assert [r["speedup"] for r in got] == pytest.approx([1.0, 1.6, 2.5])
    assert [r["efficiency"] for r in got] == pytest.approx([1.0, 0.8, 0.625])


def test_a_real_one_and_two_worker_study(tmp_path):
    done = run_cli(["bench", "scaling", "--nproc", "1,2", "--model", "mlp", "--batch-size", "16", "--steps", "3",
                    "--repeats", "2", "--warmup", "1", "--run-dir", "s", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    one, two = result["results"]
    assert (one["workers"], two["workers"]) == (1, 2) and result["mode"] == "weak"
    assert two["global_batch"] == 32 and two["per_worker_batch"] == 16
    assert two["efficiency"] == pytest.approx(two["samples_per_second"] / (2 * one["samples_per_second"]))
    for row in (one, two):
        for key in ("samples_per_second", "speedup", "efficiency", "compute_s", "comm_exposed_s", "data_wait_s"):
            assert row[key] is not None and row[key] >= 0, key
    assert result["provenance"]["torch"]
    assert json.loads((tmp_path / "s" / "bench-scaling.json").read_text()) == result
    assert list((tmp_path / "s" / "logs" / "2-workers").rglob("stderr.log"))


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--nproc", "0,2"], "--nproc takes worker counts of at least 1"),
        (["--nproc", "two"], "--nproc takes worker counts like 1,2,4"),
        (["--strong", "--batch-size", "30", "--nproc", "1,4"], "does not split over [4] workers"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, fragment):
    assert main(["bench", "scaling", "--run-dir", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert not (tmp_path / "s").exists()
