from dlscale.runs import metrics_log as runs


def test_metrics_truncate_after_drops_lines_past_the_checkpoint(tmp_path):
    log = runs.MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        log.write({"step": step})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')  # cut off by a crash
    log.truncate_after(2)
    assert [r["step"] for r in runs.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
