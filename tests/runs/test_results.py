"""The typed result files: every object names its kind and schema version, and a reader
knows a file by that kind, or an old file by its name, never by guessing from its keys."""

import json

import pytest

from dlscale.errors import UserError
from dlscale.runs import results
from dlscale.runs.metrics_log import MetricsLog, read_metrics


def test_written_results_name_their_kind_and_schema_version_first(tmp_path):
    path = results.write_summary(tmp_path, {"model": "cnn", "kind": "ignored", "schema_version": 7})
    assert path == tmp_path / "summary.json"
    written = json.loads(path.read_text())
    assert list(written)[:2] == ["kind", "schema_version"]
    assert written == {"kind": "summary", "schema_version": results.SCHEMA_VERSION, "model": "cnn"}
    assert results.read_summary(tmp_path) == written
    results.write_hardware(tmp_path, {"cpu": {}})
    assert results.read_hardware(tmp_path) == {"kind": "hardware", "schema_version": 1, "cpu": {}}


def test_a_result_of_an_unknown_kind_is_never_written(tmp_path):
    with pytest.raises(ValueError):
        results.write_result(tmp_path / "x.json", "guess", {})
    with pytest.raises(ValueError):
        results.write_bench(tmp_path, "summary", {})


def test_the_kind_comes_from_the_object_whatever_the_file_is_called(tmp_path):
    path = results.write_result(tmp_path / "anything.json", "forecast", {"results": [{"gpus": 1}]})
    found = results.read_result(path)
    assert (found.kind, found.schema_version, found.path) == ("forecast", 1, path)
    (tmp_path / "early-lab.json").write_text(json.dumps({"kind": "predict", "results": []}))  # early labs wrote "predict"
    assert results.read_result(tmp_path / "early-lab.json").kind == "forecast"


@pytest.mark.parametrize("name, kind", [
    ("summary.json", "summary"), ("hardware.json", "hardware"), ("bench-comm.json", "comm"),
    ("bench-scaling.json", "scaling"), ("predict.json", "forecast"), ("compute.json", "compute"),
])
def test_a_file_from_before_kinds_is_known_by_its_name_only(tmp_path, name, kind):
    (tmp_path / name).write_text(json.dumps({"results": [{"gpus": 1}], "total_flops": 1.0}))
    found = results.read_result(tmp_path / name)
    assert (found.kind, found.schema_version) == (kind, 1)


def test_keys_alone_never_make_a_result(tmp_path):
    """A summary's keys, or a prediction's, in a file of another name: refused, not guessed."""
    summary_like = tmp_path / "run.json"
    summary_like.write_text(json.dumps({"model": "cnn", "total_flops": 1.0, "samples_per_second": 2.0}))
    predict_like = tmp_path / "p.json"
    predict_like.write_text(json.dumps({"assumptions": [], "results": [{"gpus": 1}]}))
    for path in (summary_like, predict_like):
        with pytest.raises(UserError, match="is not a dlscale result"):
            results.read_result(path)


def test_a_newer_or_corrupt_schema_version_is_refused(tmp_path):
    newer = tmp_path / "bench-train.json"
    newer.write_text(json.dumps({"kind": "train", "schema_version": results.SCHEMA_VERSION + 1, "results": []}))
    with pytest.raises(UserError, match="written by a newer dlscale"):
        results.read_result(newer)
    corrupt = tmp_path / "summary.json"
    corrupt.write_text(json.dumps({"kind": "summary", "schema_version": "one"}))
    with pytest.raises(UserError, match="schema_version is 'one'"):
        results.read_summary(tmp_path)


def test_readers_refuse_another_kind(tmp_path):
    results.write_result(tmp_path / "summary.json", "compute", {"pfs_days": 1.0})
    with pytest.raises(UserError, match="is not a run summary"):
        results.read_summary(tmp_path)
    with pytest.raises(UserError, match="is not a run summary"):
        results.read_result(tmp_path / "summary.json", kinds=("summary",))


def test_a_saved_json_stdout_is_read_from_its_last_line(tmp_path):
    saved = tmp_path / "out.txt"
    saved.write_text("a human line\n" + json.dumps(results.stamp("compute", {"pfs_days": 2.0})) + "\n")
    assert results.read_result(saved, saved_stdout=True).data["pfs_days"] == 2.0
    with pytest.raises(UserError, match="cannot read"):
        results.read_result(saved)


def test_bench_rows_are_read_from_the_file_or_its_run_directory(tmp_path):
    results.write_bench(tmp_path, "comm", {"results": [{"op": "all_reduce"}]})
    assert results.read_bench_rows(tmp_path, "comm") == [{"op": "all_reduce"}]
    with pytest.raises(UserError, match="is not a 'dlscale bench scaling' result with rows"):
        results.read_bench_rows(tmp_path / "bench-comm.json", "scaling")


def test_metrics_lines_carry_their_record_kind_and_schema_version(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"kind": "train", "step": 1, "loss": 2.0})
    log.write({"kind": "val", "step": 1, "val_loss": 1.0})
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert list(first)[:2] == ["kind", "schema_version"] and first["schema_version"] == 1
    assert [r["kind"] for r in read_metrics(tmp_path / "metrics.jsonl")] == ["train", "val"]
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"kind": "train", "schema_version": 99, "step": 2}) + "\n")
    with pytest.raises(UserError, match="written by a newer dlscale"):
        read_metrics(tmp_path / "metrics.jsonl")
