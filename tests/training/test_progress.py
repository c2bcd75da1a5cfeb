"""What the training display says at the end: the input-bound warning of the summary."""

from __future__ import annotations

from rich.console import Console

from dlscale.progress import TrainProgress
from dlscale.runs.results import SUMMARY_KEYS


def summary_with(data_wait_fraction: float | None) -> dict:
    summary = dict.fromkeys(SUMMARY_KEYS)
    summary.update(model="cnn", data="digits", device="cpu", precision="fp32", steps=10, epochs=1,
                   train_seconds=1.0, wall_seconds=2.0, data_wait_fraction=data_wait_fraction)
    return summary


def test_the_summary_warns_when_more_than_a_tenth_of_training_waited_for_data():
    for wait, warned in ((0.23, True), (0.10, False), (0.02, False), (None, False)):
        console = Console(record=True, width=300)
        TrainProgress(console).summary_table(summary_with(wait), "runs/r")
        text = console.export_text()
        assert ("warning: the steps waited for data 23% of the training time" in text) == warned, text
        assert ("--workers" in text) == warned


def test_one_console_per_process_and_a_plain_line_each_time_it_is_said():
    """A bar started under another nests only on the same console; a line said twice is printed twice."""
    import io

    from rich.console import Console

    from dlscale.progress import make_console, say

    assert make_console() is make_console()
    out = io.StringIO()
    console = Console(file=out, width=40)
    say(console, "[not markup] result: /tmp/x")
    say(console, "[not markup] result: /tmp/x")
    assert out.getvalue() == "[not markup] result: /tmp/x\n" * 2
