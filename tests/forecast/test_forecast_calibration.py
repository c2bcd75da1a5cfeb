"""The forecast calibrated from this machine's own benchmark results."""

import json

import pytest

from dlscale.forecast.calibrate import fit_overhead, network_from_comm
from dlscale.cli import main
from dlscale.errors import UserError


def write(path, kind, rows):
    path.write_text(json.dumps({"kind": kind, "results": rows, "provenance": {}}))
    return path


def comm_rows(world=2):
    return [
        {"op": "all_reduce", "bytes": 1024, "world_size": world, "time_s": 100e-6, "algbw_gbps": 0.01, "busbw_gbps": 0.01},
        {"op": "all_reduce", "bytes": 2**24, "world_size": world, "time_s": 0.01, "algbw_gbps": 1.6, "busbw_gbps": 1.6},
        {"op": "broadcast", "bytes": 2**24, "world_size": world, "time_s": 0.004, "algbw_gbps": 4.0, "busbw_gbps": 4.0},
    ]


def test_bench_comm_sets_the_links_bandwidth_and_latency(tmp_path):
    net = network_from_comm(write(tmp_path / "bench-comm.json", "comm", comm_rows()))
    assert net.bandwidth == pytest.approx(1.6e9)  # all_reduce busbw at the largest size
    assert net.latency == pytest.approx(100e-6 / 2)  # smallest size's time over 2(N-1) ring steps
    assert "calibrated from" in net.source


def test_a_run_directory_is_read_like_its_result_file(tmp_path):
    write(tmp_path / "bench-comm.json", "comm", comm_rows())
    assert network_from_comm(tmp_path).bandwidth == pytest.approx(1.6e9)


def test_files_that_are_not_bench_results_are_refused(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(UserError, match="is not a 'dlscale bench comm' result"):
        network_from_comm(tmp_path / "x.json")
    with pytest.raises(UserError, match="over 2 or more ranks"):
        network_from_comm(write(tmp_path / "one.json", "comm", comm_rows(world=1)))


def test_fit_overhead_finds_the_overhead_that_matches_the_measurement():
    def efficiency(overhead):  # a step of 10 ms plus the overhead
        return 0.010 / (0.010 + overhead)

    got = fit_overhead({"efficiency": 0.5}, efficiency)
    assert got == pytest.approx(0.010, rel=1e-6)
    assert fit_overhead({"efficiency": 0.99}, lambda o: 0.9) == 0.0  # the model is already pessimistic


def test_calibrated_prediction_reproduces_the_measured_efficiency(tmp_path, capsys):
    scaling = write(tmp_path / "bench-scaling.json", "scaling", [
        {"workers": 1, "per_worker_batch": 32, "samples_per_second": 10000.0, "efficiency": 1.0},
        {"workers": 2, "per_worker_batch": 32, "samples_per_second": 8000.0, "efficiency": 0.4},
    ])
    comm = write(tmp_path / "bench-comm.json", "comm", comm_rows())
    assert main(["forecast", "--model", "cnn", "--batch-size", "32", "--gpus", "1,2,8", "--gpus-per-node", "2",
                 "--network", "eth-25g", "--calibrate-comm", str(comm), "--calibrate-scaling", str(scaling), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    two = next(r for r in result["results"] if r["gpus"] == 2)
    assert two["efficiency"] == pytest.approx(0.4, abs=1e-3)
    assert result["inputs"]["single_throughput"] == 10000.0
    assert result["inputs"]["intra_network"]["name"] == "measured"
