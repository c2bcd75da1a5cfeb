"""What a person sees while a run trains or a bench sweeps its settings: a rich progress
bar on a terminal; plain lines without one (a line per metrics interval, at most one per
``LINE_EVERY_S``, per epoch and per finished setting), and a summary table at the end.
Everything goes to stderr so that stdout stays free for ``--json``; with no terminal
attached there is no bar and no ANSI code, so logs stay readable.
"""

from __future__ import annotations

import functools
import threading
import time
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


LINE_EVERY_S = 10.0  # off a terminal: the most a long run or setting stays silent, and the least between interval lines


def say(console: Any, text: str) -> None:
    """A plain line: no markup (paths and error messages hold brackets), no wrapping."""
    console.print(text, markup=False, soft_wrap=True)


@functools.cache
def make_console() -> Console:
    """The process's one stderr console: a bar started inside another (a lab experiment's
    training under the lab's bar) then nests in one live display instead of fighting it."""
    return Console(stderr=True, highlight=False)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


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
        self._total_steps = 0
        self._first_step = 0
        self._started = time.perf_counter()
        self._last_line: float | None = None  # when the last plain interval line was printed

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def start(self, total_steps: int, done_steps: int) -> None:
        self._total_steps, self._first_step, self._started = total_steps, done_steps, time.perf_counter()
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

    def interval(self, step: int, epoch: int, epochs: int, loss: float, rate: float | None, unit: str) -> None:
        """One metrics interval: the bar's rate and loss on a terminal; elsewhere a plain line
        (the first interval's, then at most one per LINE_EVERY_S), so a log shows the run moving."""
        if self._progress is not None:
            if rate is not None:
                self._progress.update(self._task, rate=f"{rate:,.0f} {unit}/s", loss=f"{loss:.4f}")
            return
        now = time.perf_counter()
        if not self.enabled or (self._last_line is not None and now - self._last_line < LINE_EVERY_S):
            return
        self._last_line = now
        parts = [f"step {step}/{self._total_steps}", f"epoch {epoch + 1}/{epochs}", f"loss {loss:.4f}"]
        if rate is not None:
            parts.append(f"{rate:,.0f} {unit}/s")
        if step > self._first_step:
            parts.append(f"eta {_clock((now - self._started) / (step - self._first_step) * (self._total_steps - step))}")
        self.console.print("  ".join(parts), markup=False, soft_wrap=True, highlight=False)

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


class SweepProgress:
    """Progress over a bench's settings (batch sizes, worker counts, message sizes, lab
    experiments). On a terminal: a bar naming the setting that runs now, with an ETA from
    the settings done so far. Everywhere: one plain line per setting as it finishes; off a
    terminal also a "still running" line when nothing was said for ``LINE_EVERY_S``, so a
    log never looks hung. ``console=None`` says nothing (library calls without a display)."""

    def __init__(self, console: Console | None, total: int | None = None) -> None:
        self.console, self.total = console, total
        self.done = 0
        self.spent = 0.0  # seconds the finished settings took
        self.label: str | None = None  # the setting running now
        self.counted = False  # whether ``label`` is a setting (counted) or work between settings
        self._setting_began = self._last_line = time.perf_counter()
        self._bar: Progress | None = None
        self._task = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> SweepProgress:
        if self.console is None:
            return self
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}", markup=False, style="bold"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"), console=self.console, transient=True,
            )
            self._task = self._bar.add_task("starting", total=self.total, eta="?")
            self._bar.start()
        else:
            self._heartbeat = threading.Thread(target=self._keep_talking, name="sweep-heartbeat", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.finish()
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1)
        if self._bar is not None:
            self._bar.stop()

    def set_total(self, total: int) -> None:
        """The number of settings, once the caller knows it (a tuning grid, a schedule)."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def start(self, label: str) -> None:
        """A setting starts; the one running before it (if any) is done."""
        self.finish()
        self.label, self.counted, self._setting_began = label, True, time.perf_counter()
        self._show(label)

    def describe(self, label: str) -> None:
        """Work between settings (an accuracy pass, a search): shown, not counted."""
        self.finish()
        self.label, self.counted, self._setting_began = label, False, time.perf_counter()
        self._show(label)

    def finish(self, outcome: str = "") -> None:
        """The running setting is done: one line with what it measured, its time and the ETA."""
        if self.label is None or not self.counted:
            self.label = None
            return
        self.done += 1
        took = time.perf_counter() - self._setting_began
        self.spent += took
        eta = self.eta()
        line = f"[{self.done}/{self.total or '?'}] {self.label}{': ' + outcome if outcome else ''} ({took:.1f} s"
        self.say(line + (f"; eta {_clock(eta)})" if eta is not None and self.done != self.total else ")"))
        self.label = None
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, eta=_clock(eta))

    def eta(self) -> float | None:
        """Seconds left, from the mean time of the settings done so far."""
        if not self.done or self.total is None:
            return None
        return self.spent / self.done * max(0, self.total - self.done)

    def say(self, text: str) -> None:
        """A plain line (no markup: paths and errors hold brackets), above the bar if there is one."""
        if self.console is not None:
            self.console.print(text, markup=False, soft_wrap=True, highlight=False)
            self._last_line = time.perf_counter()

    def note(self, text: str) -> None:
        self.say(f"note: {text}")

    def _show(self, label: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=label)

    def _keep_talking(self) -> None:
        while not self._stop.wait(1.0):
            label = self.label
            if label is not None and time.perf_counter() - self._last_line >= LINE_EVERY_S:
                where = f"[{self.done + 1}/{self.total or '?'}] " if self.counted else ""
                self.say(f"... {where}{label}: running for {time.perf_counter() - self._setting_began:.0f} s")
