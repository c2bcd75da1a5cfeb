"""What a person sees while a run trains: a rich progress bar on a terminal, one plain
line per epoch, and a summary table at the end. Everything goes to stderr so that
stdout stays free for ``--json``; with no terminal attached the bar is off and the
output is plain lines.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def make_console() -> Console:
    return Console(stderr=True, highlight=False)


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _peak(summary: dict[str, Any]) -> str:
    peak = summary["peak_flops_per_second"]
    if peak is None:
        return "unknown (no MFU)"
    kind = "measured GEMM" if "measured" in (summary.get("peak_source") or "") else "datasheet"
    return f"{_si(peak, 'FLOP/s')} ({kind})"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


METRIC_LABELS = {"accuracy": "acc", "mae": "MAE", "mse": "MSE", "r2": "R²"}


def _metric(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return _percent(value) if name == "accuracy" else f"{value:.4f}"


def _test_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Test accuracy for classifiers; MAE and R² for regression (float targets)."""
    found = [name for name in ("accuracy", "mae", "r2") if summary.get(f"test_{name}") is not None]
    if not found:
        return [("test accuracy", "n/a")]
    return [(f"test {METRIC_LABELS[name]}" if name != "accuracy" else "test accuracy", _metric(name, summary[f"test_{name}"]))
            for name in found]


DATA_WAIT_WARNING = 0.10  # above this share of the training time spent waiting for batches, the summary warns


class TrainProgress:
    """The training display; ``enabled=False`` makes every call a no-op (quiet runs, ranks > 0)."""

    def __init__(self, console: Console | None, enabled: bool = True) -> None:
        self.console = console or make_console()
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def start(self, total_steps: int, done_steps: int) -> None:
        if not self.enabled or not self.console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=done_steps, rate="", loss="-"
        )
        self._progress.start()

    def advance(self, epoch: int, epochs: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=f"epoch {epoch + 1}/{epochs}")

    def show_rate(self, samples_per_second: float, loss: float, unit: str) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task, rate=f"{samples_per_second:,.0f} {unit}/s", loss=f"{loss:.4f}"
            )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def epoch_line(self, record: dict[str, Any], epochs: int) -> None:
        parts = [f"epoch {record['epoch'] + 1}/{epochs}", f"step {record['step']}"]
        if record.get("train_loss") is not None:
            parts.append(f"train loss {record['train_loss']:.4f}")
        if record.get("val_loss") is not None:
            parts.append(f"val loss {record['val_loss']:.4f}")
            for name in ("accuracy", "mae", "mse", "r2"):
                if f"val_{name}" in record:
                    parts.append(f"val {METRIC_LABELS[name]} {_metric(name, record[f'val_{name}'])}")
        self.print("  ".join(parts))

    def summary_table(self, summary: dict[str, Any], run_dir: str) -> None:
        if not self.enabled:
            return
        table = Table(title="dlscale run summary", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        rows = [
            ("model / data", f"{summary['model']} / {summary['data']}"),
            ("device / precision", f"{summary['device']} / {summary['precision']}"),
            ("steps / epochs", f"{summary['steps']} / {summary['epochs']}"),
            *_test_rows(summary),
            ("test loss", "n/a" if summary["test_loss"] is None else f"{summary['test_loss']:.4f}"),
            ("final train loss", "n/a" if summary["final_loss"] is None else f"{summary['final_loss']:.4f}"),
            ("samples/s", "n/a" if summary["samples_per_second"] is None else f"{summary['samples_per_second']:,.0f}"),
            ("FLOPs per sample (train)", _si(summary["flops_per_sample"], "FLOP")),
            ("total FLOPs", _si(summary["total_flops"], "FLOP")),
            ("achieved", _si(summary["achieved_flops_per_second"], "FLOP/s")),
            ("peak", _peak(summary)),
            ("MFU", _percent(summary["mfu"])),
            ("waiting for data", _percent(summary.get("data_wait_fraction"))),
            ("train time", f"{summary['train_seconds']:.2f} s"),
            ("wall time", f"{summary['wall_seconds']:.2f} s"),
            ("run directory", run_dir),
        ]
        if summary.get("time_to_target_seconds") is not None:
            rows.insert(4, ("time to target accuracy", f"{summary['time_to_target_seconds']:.2f} s"))
        if summary.get("best_value") is not None:  # early stopping, --keep-best or plateau watched a metric
            stopped = "stopped early; " if summary.get("stopped_early") else ""
            rows.insert(3, ("best validation", f"{stopped}{summary['monitor']} {summary['best_value']:.4g} at step {summary['best_step']}"))
        for name, value in rows:
            table.add_row(name, value)
        self.console.print(table)
        wait = summary.get("data_wait_fraction")
        if wait is not None and wait > DATA_WAIT_WARNING:
            self.console.print(
                f"warning: the steps waited for data {100 * wait:.0f}% of the training time: the run is input-bound; "
                "give the loader more processes (--workers) or keep the data in memory (an .npz)",
                markup=False, soft_wrap=True,
            )
