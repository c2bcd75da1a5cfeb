"""The report's figures, drawn with matplotlib's object API (``Figure`` + Agg canvas, no
pyplot global state, no display needed).

Every function takes plain data, the lists of dicts found in dlscale's JSON files
(metrics.jsonl records, the ``results`` rows of bench-*.json and of ``forecast --json``),
and an output stem; it writes ``<stem>.png`` and ``<stem>.svg`` and returns the PNG path.
A figure with nothing to draw raises ``ValueError`` (callers check for data first).

Series are told apart by marker shape, line style and hatching, not by colour alone, so
the figures read in grey-scale print; every axis names its unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

from dlscale.report.ranges import value_range

Row = dict[str, Any]

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)))
HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo", "---", "+++")
# dark to mid tones that stay distinct in grey-scale as well as in colour
COLOURS = ("#1b1b1b", "#1f5fa8", "#b2182b", "#2e7d32", "#6a3d9a", "#e08214", "#555555", "#01665e")
PNG_DPI = 110


def _new_figure(width: float = 8.0, height: float = 5.0) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, stem: str | Path) -> Path:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png = stem.parent / f"{stem.name}.png"
    svg = stem.parent / f"{stem.name}.svg"
    fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
    fig.savefig(svg, metadata={"Date": None})
    return png


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _positive(value: Any) -> float | None:
    value = _number(value)
    return value if value is not None and value > 0 else None


def _style(index: int) -> dict[str, Any]:
    return {
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": LINESTYLES[index % len(LINESTYLES)],
        "color": COLOURS[index % len(COLOURS)],
    }


def _int_ticks(ax: Any, values: Iterable[float], axis: str = "x") -> None:
    """Log-2 axis with a tick at each value given, labelled as a plain integer."""
    ticks = sorted({v for v in values if v and v > 0})
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=2)
    target.set_ticks(ticks)
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_locator(NullLocator())


def _si(value: float) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}"
    return f"{value:.3g}"


def _si_log_axis(axis: Any) -> None:
    """SI labels (10k, 1M) on a log axis; minor ticks labelled too when it spans under a decade."""
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _si(v)))
    lo, hi = axis.get_view_interval()
    if lo > 0 and hi / lo < 10:
        axis.set_minor_formatter(FuncFormatter(lambda v, _pos: _si(v)))
    else:
        axis.set_minor_formatter(NullFormatter())


def _worth_a_plot(values: Sequence[float], what: str) -> None:
    """One point, or points that all agree, say nothing a table does not: raise ValueError saying why."""
    if len(values) < 2:
        raise ValueError(f"only one {what} was measured, nothing to compare (the table has the figure)")
    if max(values) - min(values) <= 1e-12 * max(abs(v) for v in values):
        raise ValueError(f"every {what} gave the same value (the table has it)")


# --------------------------------------------------------------------------- training curves


def loss_accuracy(metrics_records: Sequence[Row], stem: str | Path) -> Path:
    """Loss (train per step, validation per evaluation) and validation accuracy vs step."""
    train = [(r["step"], _number(r.get("loss"))) for r in metrics_records if r.get("kind") == "train" and "step" in r]
    train = [(s, v) for s, v in train if v is not None]
    val = [r for r in metrics_records if r.get("kind") == "val" and "step" in r]
    val_loss = [(r["step"], _number(r.get("val_loss"))) for r in val]
    val_loss = [(s, v) for s, v in val_loss if v is not None]
    val_acc = [(r["step"], _number(r.get("val_accuracy"))) for r in val]
    val_acc = [(s, v) for s, v in val_acc if v is not None]
    if not train and not val_loss:
        raise ValueError("no train or val records with a loss")
    _worth_a_plot([v for _, v in train] if len(train) >= len(val_loss) else [v for _, v in val_loss], "logged loss")

    fig = _new_figure(10, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    if train:
        ax_loss.plot(*zip(*train), color=COLOURS[6], linewidth=1.0, linestyle="-", label="train loss (per step)")
    if val_loss:
        ax_loss.plot(*zip(*val_loss), color=COLOURS[0], linewidth=1.8, linestyle="--", marker="s",
                     markersize=6, label="validation loss (per evaluation)")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss (cross-entropy, nats)")
    ax_loss.set_title("loss")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend(loc="upper right", fontsize=8)

    if val_acc:
        steps, accs = zip(*val_acc)
        ax_acc.plot(steps, [100 * a for a in accs], color=COLOURS[0], linestyle="-", marker="o",
                    markerfacecolor="white", markersize=7, label="validation accuracy")
        for step, acc in val_acc[-1:]:
            ax_acc.annotate(f"{100 * acc:.1f}%", (step, 100 * acc), xytext=(-8, -14),
                            textcoords="offset points", fontsize=8, ha="right")
        ax_acc.legend(loc="lower right", fontsize=8)
    else:
        ax_acc.text(0.5, 0.5, "no validation accuracy recorded", ha="center", va="center",
                    transform=ax_acc.transAxes, color=COLOURS[6])
    ax_acc.set_xlabel("optimizer step")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("validation accuracy")
    ax_acc.grid(True, alpha=0.3)
    return _save(fig, stem)


# --------------------------------------------------------------------------- throughput


def _series_label(row: Row, keys: Sequence[str]) -> str:
    parts = []
    for key in keys:
        value = row.get(key)
        if key == "compiled":
            parts.append("compiled" if value else "eager")
        elif key == "channels_last":
            if value:
                parts.append("channels_last")
        elif value is not None:
            parts.append(str(value))
    return " ".join(parts) or "all"


def _varying(rows: Sequence[Row], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if len({repr(r.get(k)) for r in rows}) > 1]


def throughput_vs_batch(bench_train_rows: Sequence[Row], stem: str | Path) -> Path:
    """Training samples/s vs batch size (log 2), one line per precision (and device, compile mode)."""
    rows = [r for r in bench_train_rows if _positive(r.get("samples_per_second")) and _positive(r.get("batch_size"))]
    if not rows:
        raise ValueError("no rows with batch_size and samples_per_second")
    _worth_a_plot([float(r["samples_per_second"]) for r in rows], "setting")
    keys = ["precision", *_varying(rows, ("device", "compiled", "channels_last", "model"))]
    series: dict[str, list[Row]] = {}
    for row in rows:
        series.setdefault(_series_label(row, keys), []).append(row)

    fig = _new_figure(8, 5)
    ax = fig.subplots()
    for index, (label, members) in enumerate(series.items()):
        members = sorted(members, key=lambda r: r["batch_size"])
        speeds = [r["samples_per_second"] for r in members]
        spreads = [value_range(r, "samples_per_second") for r in members]
        errors = [[v - (s[0] if s else v) for v, s in zip(speeds, spreads)],
                  [(s[1] if s else v) - v for v, s in zip(speeds, spreads)]]
        ax.errorbar([r["batch_size"] for r in members], speeds, yerr=errors if any(spreads) else None, capsize=3,
                    markersize=7, linewidth=1.5, label=label, **_style(index))
    _int_ticks(ax, [r["batch_size"] for r in rows])
    ax.set_yscale("log")
    _si_log_axis(ax.yaxis)
    ax.set_xlabel("batch size (samples per step, log 2)")
    ax.set_ylabel("training throughput (samples/s, log)")
    ax.set_title("training throughput vs batch size" + (" (bars: range over repeats)" if any(
        value_range(r, "samples_per_second") for r in rows) else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="precision", fontsize=8)
    return _save(fig, stem)


# --------------------------------------------------------------------------- scaling


def _workers(row: Row) -> float | None:
    return _positive(row.get("workers", row.get("gpus")))


def scaling(measured_rows: Sequence[Row], predicted_rows: Sequence[Row], stem: str | Path,
            measured_label: str = "measured", predicted_label: str = "predicted") -> Path:
    """Speedup and efficiency vs workers (log 2): measured = solid markers and line,
    predicted = hollow markers and a dashed line, ideal = thin dotted line."""
    measured = sorted((r for r in measured_rows if _workers(r) and _number(r.get("speedup")) is not None), key=_workers)
    predicted = sorted((r for r in predicted_rows if _workers(r) and _number(r.get("speedup")) is not None), key=_workers)
    if not measured and not predicted:
        raise ValueError("no rows with workers (or gpus) and speedup")
    if len(measured) < 2 and len(predicted) < 2:
        _worth_a_plot([_workers(r) for r in (*measured, *predicted)], "worker count")
    all_n = [_workers(r) for r in (*measured, *predicted)]
    lo, hi = min(all_n), max(all_n)

    fig = _new_figure(10, 4.4)
    ax_s, ax_e = fig.subplots(1, 2)
    ideal_n = sorted({lo, hi, *all_n})
    ax_s.plot(ideal_n, ideal_n, linestyle=":", linewidth=1.0, color=COLOURS[6], label="ideal (speedup = N)")
    ax_e.plot(ideal_n, [100.0] * len(ideal_n), linestyle=":", linewidth=1.0, color=COLOURS[6], label="ideal (100%)")
    for rows, label, style in (
        (measured, measured_label, {"linestyle": "-", "marker": "o", "color": COLOURS[0], "markersize": 7}),
        (predicted, predicted_label, {"linestyle": "--", "marker": "s", "color": COLOURS[1], "markersize": 8,
                                      "markerfacecolor": "white", "markeredgewidth": 1.6}),
    ):
        if not rows:
            continue
        n = [_workers(r) for r in rows]
        ax_s.plot(n, [r["speedup"] for r in rows], label=label, linewidth=1.6, **style)
        eff = [(w, _number(r.get("efficiency"))) for w, r in zip(n, rows)]
        eff = [(w, 100 * e) for w, e in eff if e is not None]
        if eff:
            ax_e.plot(*zip(*eff), label=label, linewidth=1.6, **style)
    for ax in (ax_s, ax_e):
        _int_ticks(ax, all_n)
        ax.set_xlabel("workers N (processes / GPUs, log 2)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    speeds = [r["speedup"] for r in (*measured, *predicted) if r["speedup"] > 0] + ideal_n
    low, high = math.floor(math.log2(min(speeds))), math.ceil(math.log2(max(speeds)))
    _int_ticks(ax_s, [2.0**k for k in range(low, high + 1)], axis="y")
    ax_s.set_ylabel("speedup (x, log 2)")
    ax_s.set_title("speedup vs workers")
    ax_e.set_ylabel("parallel efficiency (%)")
    ax_e.set_ylim(bottom=0, top=max(110.0, ax_e.get_ylim()[1]))
    ax_e.set_title("efficiency vs workers")
    return _save(fig, stem)


# --------------------------------------------------------------------------- inference


def _infer_rows(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if not r.get("skipped") and _positive(r.get("predictions_per_second"))]


def predictions_per_device(infer_rows: Sequence[Row], stem: str | Path) -> Path:
    """Predictions/s (log) as grouped bars: one group per device (and mode) and batch size,
    one bar per precision, told apart by hatching."""
    rows = _infer_rows(infer_rows)
    if not rows:
        raise ValueError("no inference rows with predictions_per_second")
    _worth_a_plot([float(r["predictions_per_second"]) for r in rows], "setting")
    extra = _varying(rows, ("mode", "model"))
    groups: list[tuple] = []
    precisions: list[str] = []
    for row in rows:
        key = (str(row.get("device", "?")), *(str(row.get(k)) for k in extra), int(row.get("batch_size") or 0))
        if key not in groups:
            groups.append(key)
        if str(row.get("precision")) not in precisions:
            precisions.append(str(row.get("precision")))
    groups.sort(key=lambda g: (g[:-1], g[-1]))
    values = {(key, p): 0.0 for key in groups for p in precisions}
    for row in rows:
        key = (str(row.get("device", "?")), *(str(row.get(k)) for k in extra), int(row.get("batch_size") or 0))
        values[(key, str(row.get("precision")))] = max(values[(key, str(row.get("precision")))],
                                                       float(row["predictions_per_second"]))

    width = 0.8 / len(precisions)
    fig = _new_figure(max(7.0, 1.1 * len(groups) * max(1, len(precisions)) / 2 + 3), 5)
    ax = fig.subplots()
    for j, precision in enumerate(precisions):
        xs, heights = [], []
        for i, key in enumerate(groups):
            value = values[(key, precision)]
            if value > 0:
                xs.append(i - 0.4 + width * (j + 0.5))
                heights.append(value)
        ax.bar(xs, heights, width=width * 0.95, label=precision, hatch=HATCHES[j % len(HATCHES)],
               color=("#ffffff", "#c8c8c8", "#8c8c8c", "#e8e8e8", "#5a5a5a")[j % 5], edgecolor="#1b1b1b",
               linewidth=0.8)
    labels = []
    for key in groups:
        *head, batch = key
        labels.append("\n".join([" ".join(head), f"batch {batch}"]))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yscale("log")
    _si_log_axis(ax.yaxis)
    ax.set_ylabel("predictions/s (log)")
    ax.set_xlabel("device and batch size")
    ax.set_title("inference throughput by device, precision and batch size")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    ax.legend(title="precision", fontsize=8)
    return _save(fig, stem)


def speed_accuracy(infer_rows: Sequence[Row], stem: str | Path) -> Path:
    """Predictions/s (log) vs test accuracy, one marker shape per precision, batch size labelled."""
    rows = [r for r in _infer_rows(infer_rows) if _number(r.get("test_accuracy")) is not None]
    if not rows:
        raise ValueError("no inference rows with both predictions_per_second and test_accuracy")
    if len(rows) < 2:
        _worth_a_plot([], "setting")
    by_precision: dict[str, list[Row]] = {}
    for row in rows:
        by_precision.setdefault(str(row.get("precision")), []).append(row)
    devices = sorted({str(r.get("device")) for r in rows})

    fig = _new_figure(8, 5)
    ax = fig.subplots()
    for index, (precision, members) in enumerate(by_precision.items()):
        ax.scatter([r["predictions_per_second"] for r in members], [100 * r["test_accuracy"] for r in members],
                   marker=MARKERS[index % len(MARKERS)], s=60, label=precision,
                   facecolors="white" if index % 2 else COLOURS[index % len(COLOURS)],
                   edgecolors=COLOURS[index % len(COLOURS)], linewidths=1.4, zorder=3)
        for r in members:
            tag = f"b{r.get('batch_size')}" + (f" {r.get('device')}" if len(devices) > 1 else "")
            ax.annotate(tag, (r["predictions_per_second"], 100 * r["test_accuracy"]), xytext=(5, 5 if index % 2 == 0 else -12),
                        textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    _si_log_axis(ax.xaxis)
    accs = [100 * r["test_accuracy"] for r in rows]
    spread = max(accs) - min(accs)
    pad = max(0.5, spread * 0.3)
    ax.set_ylim(max(0.0, min(accs) - pad), min(100.0, max(accs) + pad) if max(accs) + pad <= 100 else 100.5)
    ax.set_xlabel("predictions/s (log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("speed / accuracy trade-off (labels: batch size)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="precision", fontsize=8)
    return _save(fig, stem)


# --------------------------------------------------------------------------- serving


def serving(serve_rows: Sequence[Row], p99_bound_ms: float | None, stem: str | Path) -> Path:
    """Two panels per load kind: predictions/s and p99 latency against load, the closed loop
    against concurrent clients, the open loop against offered requests/s; the p99 bound dotted."""
    kinds = [(mode, [r for r in serve_rows if r.get("mode") == mode and _positive(r.get("predictions_per_second"))])
             for mode in ("closed", "open")]
    kinds = [(mode, rows) for mode, rows in kinds if rows]
    if not kinds:
        raise ValueError("no serving rows with predictions_per_second")
    if max(len(rows) for _, rows in kinds) < 2:
        _worth_a_plot([], "load")
    fig = _new_figure(4.6 * len(kinds), 6.4)
    axes = fig.subplots(2, len(kinds), squeeze=False)
    for column, (mode, rows) in enumerate(kinds):
        key = "concurrency" if mode == "closed" else "rate"
        rows = sorted(rows, key=lambda r: float(r[key]))
        xs = [float(r[key]) for r in rows]
        top, bottom = axes[0][column], axes[1][column]
        top.plot(xs, [float(r["predictions_per_second"]) for r in rows], **_style(column))
        if mode == "open":  # what was offered, for comparison with what was answered
            top.plot(xs, xs, linestyle=":", color="#777777", label="offered (1 prediction per request)")
            top.legend(fontsize=7)
        top.set_ylabel("predictions/s")
        top.set_title("closed loop (concurrent clients)" if mode == "closed" else "open loop (Poisson arrivals)", fontsize=10)
        p99 = [(x, _positive(r.get("latency_p99_ms"))) for x, r in zip(xs, rows)]
        bottom.plot([x for x, v in p99 if v], [v for x, v in p99 if v], **_style(column))
        if p99_bound_ms:
            bottom.axhline(p99_bound_ms, linestyle=":", color="#b2182b", label=f"p99 bound {p99_bound_ms:g} ms")
            bottom.legend(fontsize=7)
        bottom.set_yscale("log")
        _si_log_axis(bottom.yaxis)
        bottom.set_ylabel("p99 latency (ms, log)")
        bottom.set_xlabel("concurrent clients" if mode == "closed" else "offered requests/s")
        if mode == "closed":
            for ax in (top, bottom):
                _int_ticks(ax, xs)
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
    return _save(fig, stem)


# --------------------------------------------------------------------------- compute


def _repel(fig: Figure, texts: list[Any], points: Sequence[tuple[float, float]] = (), gap_px: float = 1.5,
           marker_px: float = 5.0, rounds: int = 80) -> None:
    """Move labels off each other and off the markers, deterministically: sorted by height, a
    label that overlaps a label below it or a marker is pushed up just clear of it (a leader
    line keeps it tied to its point)."""
    if not texts:
        return
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    for text in texts:  # the layout must not move the axes when a label moves
        text.set_in_layout(False)
    fig.canvas.draw()  # lay out the figure so the text boxes are final
    renderer = fig.canvas.get_renderer()
    to_points = 72.0 / fig.dpi
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the words only, not the leader line
    transform = texts[0].axes.transData
    markers = [transform.transform(p) for p in points]
    markers = [Bbox.from_extents(x - marker_px, y - marker_px, x + marker_px, y + marker_px) for x, y in markers]
    anchors = [transform.transform(t.xy) for t in texts]

    def overlaps(a: Any, b: Any) -> bool:
        return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 + gap_px <= b.y0 or b.y1 <= a.y0)

    def push(index: int, above: float) -> None:
        shift = above + gap_px - boxes[index].y0
        x, y = texts[index].xyann
        texts[index].xyann = (x, y + shift * to_points)
        boxes[index] = boxes[index].translated(0, shift)

    for _ in range(rounds):
        moved = False
        order = sorted(range(len(texts)), key=lambda i: (boxes[i].y0, boxes[i].x0))
        for rank, lower in enumerate(order):
            for marker in markers:
                own = marker.contains(*anchors[lower])
                if not own and overlaps(marker, boxes[lower]) and boxes[lower].y0 >= marker.y0 - marker_px:
                    push(lower, marker.y1)
                    moved = True
            for upper in order[rank + 1:]:
                if overlaps(boxes[lower], boxes[upper]):
                    push(upper, boxes[lower].y1)
                    moved = True
        if not moved:
            break


def compute_figure(runs: Sequence[tuple[str, int, float]], runs_label: str = "this report's runs",
                   title_runs: str = "these runs") -> Figure:
    """Landmark training runs (report.landmarks) in petaflop/s-days by year (log), with
    ``runs`` (label, year, pfs_days) placed among them as filled stars, and the 2012-2018
    doubling trend fitted to the landmarks; labels are moved apart so none overlaps."""
    from dlscale.report.landmarks import LANDMARKS, doubling_trend

    fig = _new_figure(9, 6.4)
    ax = fig.subplots()
    ax.scatter([e.year for e in LANDMARKS], [e.pfs_days for e in LANDMARKS], marker="o", s=36,
               facecolors="white", edgecolors=COLOURS[1], linewidths=1.3, label="landmark runs", zorder=3)
    leader = {"arrowstyle": "-", "color": "#888888", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3}
    texts = [ax.annotate(entry.name, (entry.year, entry.pfs_days), fontsize=7, xytext=(6, -2), ha="left",
                         textcoords="offset points", arrowprops=leader)
             for entry in sorted(LANDMARKS, key=lambda e: (e.pfs_days, e.name))]
    trend = doubling_trend()
    years = [trend.first_year - 0.3, trend.last_year + 0.3]
    ax.plot(years, [trend.pfs_days_at(y) for y in years], linestyle="--", linewidth=1.2, color=COLOURS[2],
            label=f"least-squares trend of the {trend.first_year}-{trend.last_year} landmarks", zorder=2)
    texts.append(ax.annotate(
        f"fit {trend.first_year}-{trend.last_year}: doubling every {trend.doubling_months:.1f} months",
        (years[1], trend.pfs_days_at(years[1])), xytext=(4, 0), textcoords="offset points", fontsize=8,
        color=COLOURS[2], ha="left", va="center", fontweight="bold"))
    placed = [(label, year, value) for label, year, value in runs if _positive(value)]
    if placed:
        ax.scatter([y for _, y, _ in placed], [v for _, _, v in placed], marker="*", s=180, color=COLOURS[2],
                   edgecolors=COLOURS[0], linewidths=0.8, label=runs_label, zorder=4)
        texts += [ax.annotate(label, (year, value), fontsize=8, xytext=(8, -4), textcoords="offset points",
                              fontweight="bold", arrowprops=leader)
                  for label, year, value in sorted(placed, key=lambda r: r[2])]
    ax.set_yscale("log")
    all_years = [e.year for e in LANDMARKS] + [y for _, y, _ in placed]
    values = [e.pfs_days for e in LANDMARKS] + [v for _, _, v in placed]
    ax.set_xlim(min(all_years) - 0.7, max(all_years) + 3.0)
    ax.set_ylim(min(values) / 10, max(values) * 30)  # room above for labels pushed up
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}"))
    ax.set_xlabel("year of publication / of the run")
    ax.set_ylabel("training compute (PF/s-days, log; 1 PF/s-day = 8.64e19 FLOPs)")
    ax.set_title(f"training compute: landmarks (OpenAI AI and Compute; GPT-3) and {title_runs}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    _repel(fig, texts, [(e.year, e.pfs_days) for e in LANDMARKS] + [(y, v) for _, y, v in placed])
    return fig


def compute_chart(runs: Sequence[tuple[str, int, float]], stem: str | Path) -> Path:
    """The compute chart of a report: ``<stem>.png`` and ``<stem>.svg``."""
    return _save(compute_figure(runs), stem)


def compute_chart_file(runs: Sequence[tuple[str, int, float]], path: str | Path) -> Path:
    """The compute chart of one run (``dlscale compute --chart PATH``): exactly ``path``, in
    the format its suffix names (png, svg, pdf)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compute_figure(runs, runs_label="this run", title_runs="this run").savefig(path, dpi=PNG_DPI)
    return path
