"""dlscale bench comm: size parsing, nccl-tests' bandwidth definitions, a one-rank run in
this process, and real multi-process runs through the CLI (torchrun's elastic agent) and
under an external torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlscale.cli import main

from dlscale.bench.comm import (
    algbw_gbps,
    busbw_factor,
    busbw_gbps,
    human_bytes,
    shape_for,
)
from dlscale.cli import bench_comm
from dlscale.cli.bench_comm import parse_ops, parse_sizes
from dlscale.errors import UserError

from conftest import last_json

ROW_KEYS = {"op", "bytes", "world_size", "time_s", "algbw_gbps", "busbw_gbps"}
K, M = 2**10, 2**20


@pytest.fixture
def registered():
    """The CLI subprocess tests need ``comm`` in dlscale/commands/bench.py's kinds."""
    from dlscale.cli import build_parser

    try:
        build_parser().parse_args(["bench", "comm", "--help"])
    except SystemExit:
        return  # --help printed: registered
    except UserError:
        pass
    pytest.fail("bench comm is not registered: add bench_comm to the kinds tuple in src/dlscale/commands/bench.py")


def check_rows(rows: list[dict], world: int, ops: list[str], sizes: list[int]) -> None:
    assert [(r["op"], r["requested_bytes"]) for r in rows] == [(op, s) for op in ops for s in sizes]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["world_size"] == world and r["time_s"] > 0 and r["time_avg_s"] <= r["time_s"]
        assert r["algbw_gbps"] == pytest.approx(r["bytes"] / r["time_s"] / 1e9)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * busbw_factor(r["op"], world))


# --------------------------------------------------------------------------- parsing


def test_sizes_as_a_list_a_range_or_plain_bytes():
    assert parse_sizes("1K,1M,64M") == [K, M, 64 * M]
    assert parse_sizes("1K:1M:4") == [K, 4 * K, 16 * K, 64 * K, 256 * K, M]
    assert parse_sizes("1K:16M:16") == [K, 16 * K, 256 * K, 4 * M]  # stops at the last size <= TO
    assert parse_sizes("4096, 100,1g") == [4096, 100, 2**30]
    assert parse_sizes("8KB,8KiB,1M") == [8 * K, M]  # repeats dropped
    assert parse_sizes("1K:1K:2") == [K]
    assert parse_sizes("100,1K:4K:2,1M") == [100, K, 2 * K, 4 * K, M]  # ranges and sizes mixed


@pytest.mark.parametrize("text, words", [
    ("1X", "is not a size"), ("0", "zero bytes"), ("64M:1K:2", "runs backwards"),
    ("1K:1M:1", "2 or more"), ("1K:1M:0", "2 or more"), ("1K:1M:1.5", "whole number"),
    ("1K:1M", "FROM:TO:FACTOR"), ("1.5M", "is not a size"), ("", "empty"), ("-1K", "is not a size"),
    ("1:1G:1.0001", "whole number"), ("1:1T:2", "is not a size"), ("1:1G:2,3:1G:2,5:1G:2", "more than 64 sizes"),
])
def test_bad_sizes_are_user_errors(text, words):
    with pytest.raises(UserError, match=words):
        parse_sizes(text)


def test_ops_parse_with_aliases_and_refuse_unknown_names():
    assert parse_ops("allreduce,all-gather,broadcast,all_reduce") == ["all_reduce", "all_gather", "broadcast"]
    with pytest.raises(UserError, match="reduce_scatter"):
        parse_ops("reduce_scatter")


def test_sizes_round_down_to_whole_elements_and_all_gather_to_whole_ranks():
    assert shape_for("all_reduce", 1001, "fp32", 2) == (250, 1000)
    assert shape_for("broadcast", 3, "bf16", 4) == (1, 2)
    assert shape_for("all_gather", 1024, "fp32", 3) == (85, 85 * 3 * 4)  # 256 elements -> 255 gathered
    assert shape_for("all_gather", 4, "fp32", 8) == (1, 8 * 4)  # below one element per rank: one each
    with pytest.raises(UserError, match="less than one fp32 element"):
        shape_for("all_reduce", 3, "fp32", 2)
    assert human_bytes(1024) == "1 KiB" and human_bytes(64 * M) == "64 MiB" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(1000) == "1,000 B" and human_bytes(2**20 - 4) == "1,048,572 B" and human_bytes(3 * 2**29) == "1.5 GiB"


# --------------------------------------------------------------------------- definitions


def test_bus_bandwidth_factors_follow_nccl_tests():
    assert busbw_factor("all_reduce", 2) == 1.0
    assert busbw_factor("all_reduce", 4) == 1.5
    assert busbw_factor("all_reduce", 8) == pytest.approx(1.75)
    assert busbw_factor("all_gather", 2) == 0.5
    assert busbw_factor("all_gather", 4) == 0.75
    assert busbw_factor("broadcast", 4) == 1.0
    assert busbw_factor("all_reduce", 1) == 0.0
    assert algbw_gbps(10**9, 0.5) == 2.0  # GB/s are 1e9 bytes/s
    assert busbw_gbps("all_reduce", 10**9, 0.5, 4) == 3.0
    assert busbw_gbps("all_gather", 10**9, 0.5, 4) == 1.5
    with pytest.raises(ValueError):
        busbw_factor("reduce_scatter", 4)


# --------------------------------------------------------------------------- runs


def test_one_rank_runs_in_this_process(tmp_path, capsys):
    run_dir = tmp_path / "b"
    assert main(["bench", "comm", "--nproc", "1", "--sizes", "1K,4K", "--ops", "all_reduce,all_gather,broadcast",
                       "--dtype", "bf16", "--iters", "2", "--warmup", "1", "--run-dir", str(run_dir), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    rows = result["results"]
    check_rows(rows, 1, ["all_reduce", "all_gather", "broadcast"], [K, 4 * K])
    assert all(r["dtype"] == "bf16" and r["backend"] == "gloo" for r in rows)
    assert [r["busbw_gbps"] for r in rows if r["op"] != "broadcast"] == [0.0] * 4
    assert json.loads((run_dir / "bench-comm.json").read_text()) == result
    assert "bench comm: 1 ranks" in captured.err and "busbw" in captured.err


def test_launcher_repeats_a_failed_workers_error(tmp_path, capsys, monkeypatch):
    import dlscale.distributed.elastic

    def failing(worker_args, plan, log_dir):
        assert worker_args[:3] == ["bench", "comm", "--worker-of"] and plan.nproc == 2
        assert "--json" not in worker_args and "--sizes" in worker_args
        log = Path(log_dir) / "run" / "attempt_0" / "1" / "stderr.log"
        log.parent.mkdir(parents=True)
        log.write_text("error: rank 1: all_reduce broke\n")
        return {1: 2}

    monkeypatch.setattr(dlscale.distributed.elastic, "run_workers", failing)
    assert main(["bench", "comm", "--nproc", "2", "--device", "cpu", "--sizes", "1K",
                       "--run-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: worker rank 1 failed (exit code 2): rank 1: all_reduce broke"
    assert not (tmp_path / "b" / "bench-comm.json").exists()


def test_table_fits_80_columns():
    from rich.console import Console

    rows = [{"op": op, "bytes": b, "time_s": t, "algbw_gbps": 123.456, "busbw_gbps": 1234.567}
            for op in ("all_reduce", "all_gather") for b, t in ((K, 1.23e-5), (2**30, 12.5))]
    result = {"world_size": 1024, "backend": "nccl", "device": "cuda (NVIDIA H100 80GB HBM3)", "dtype": "bf16",
              "results": rows}
    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(bench_comm.results_table(result))
    assert max(len(line) for line in console.export_text().splitlines()) <= 80


def test_two_workers_through_the_cli(cli, tmp_path, registered):
    done = cli(["bench", "comm", "--nproc", "2", "--sizes", "1K,64K", "--iters", "3", "--warmup", "1", "--json"])
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    check_rows(result["results"], 2, ["all_reduce", "all_gather", "broadcast"], [K, 64 * K])
    assert result["kind"] == "comm" and result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["provenance"]["torch"] and "bench comm --nproc 2" in result["provenance"]["command"]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("-bench-comm-2ranks")
    assert json.loads((run_dir / "bench-comm.json").read_text()) == result
    assert not (run_dir / "comm-rows.json").exists()
    logs = sorted(p.parent.name for p in (run_dir / "logs").rglob("stderr.log"))
    assert logs == ["0", "1"]  # one log per rank
    assert "loopback TCP" in done.stderr and "all_gather" in done.stderr


def test_a_bad_size_is_one_error_line_and_leaves_nothing(cli, tmp_path, registered):
    done = cli(["bench", "comm", "--nproc", "2", "--sizes", "1K,1X"])
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --sizes: '1X' is not a size"), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()


def test_under_an_external_torchrun_rank_0_reports(tmp_path, registered):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dlscale",
         "bench", "comm", "--sizes", "4K", "--ops", "all_reduce", "--iters", "2", "--warmup", "1",
         "--run-dir", str(tmp_path / "b"), "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env,
    )
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    check_rows(result["results"], 2, ["all_reduce"], [4 * K])
    assert json.loads((tmp_path / "b" / "bench-comm.json").read_text()) == result
