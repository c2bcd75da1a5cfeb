"""One self-contained HTML report of runs and bench results.

Each input is a run directory (summary.json, metrics.jsonl, config.toml, hardware.json),
a bench run directory (bench-*.json) or a JSON file (a bench result, ``forecast --json``
output, ``compute --json`` output or a summary.json), read by ``report.load``. The report has a section per input
with its summary table, its provenance and its plots, plus an overview that puts what
belongs together on one figure (measured and predicted scaling; all runs on the compute
chart). Figures are shown in units under labels (``report.labels``), the raw key and
value in tooltips; several runs also get one side-by-side table. Plots are PNGs embedded as ``data:`` URIs; the CSS is inline; there is no
script and no external reference, so the file opens offline and prints.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from pathlib import Path
from typing import Any

from dlscale.errors import UserError
from dlscale.report.compute import compute_report
from dlscale.report.load import RUN, Item, load_inputs
from dlscale.report.ranges import folded_keys
from dlscale.report.labels import Explainer, format_value
from dlscale.report.tables import (Plotter, cell, compare_table, esc, grouped_tables, kv_table, provenance_table,
                                   rows_table, scalar_pairs)
from dlscale.runs.results import STAMP_KEYS, SUMMARY_KEYS

# The columns shown per kind of result (others stay in the JSON file); all-empty columns are dropped.
COLUMNS: dict[str, tuple[str, ...]] = {
    "train": ("model", "batch_size", "precision", "compiled", "channels_last", "device", "samples_per_second",
              "tokens_per_second", "achieved_flops_per_second", "mfu", "mfu_measured_peak", "peak_memory_bytes",
              "step_time_median_s", "step_time_spread_s", "warmup_s", "error", "note"),
    "infer": ("batch_size", "precision", "device", "mode", "predictions_per_second", "latency_p50_ms",
              "latency_p90_ms", "latency_p99_ms", "test_accuracy", "achieved_flops_per_second",
              "tokens_per_second", "skipped"),
    "scaling": ("workers", "per_worker_batch", "global_batch", "samples_per_second", "speedup", "efficiency",
                "step_time_s", "compute_s", "comm_exposed_s", "data_wait_s"),
    "forecast": ("gpus", "nodes", "global_batch_size", "samples_per_second", "speedup", "efficiency",
                 "step_time_s", "compute_s", "comm_s", "comm_exposed_s", "straggler_s", "overhead_s"),
    "comm": ("op", "bytes", "time_s", "algbw_gbps", "busbw_gbps"),
    "serve": ("mode", "concurrency", "rate", "predictions_per_second", "latency_p50_ms", "latency_p90_ms",
              "latency_p99_ms", "errors", "mean_batch_size", "model_busy", "within_p99_bound"),
    "data": ("workers", "decoder", "batch_size", "samples_per_second", "spread", "startup_s",
             "train_samples_per_second", "input_bound"),
}
# written by newer bench code on any kind of row: shown when present (all-empty columns drop)
TRUST_COLUMNS = ("reliable", "unreliable_reason", "cv", "superlinear")
KIND_TITLES = {
    "run": "training run", "train": "training benchmark", "infer": "inference benchmark",
    "scaling": "scaling benchmark", "forecast": "scaling forecast", "comm": "communication benchmark",
    "compute": "compute of a run", "serve": "serving benchmark", "data": "input pipeline benchmark",
}
# the figures a run's first line quotes, with the words before each
HEADLINE = (("test_accuracy", "test accuracy"), ("samples_per_second", ""), ("mfu", "MFU"), ("total_flops", "total compute"))
RUN_PROVENANCE_KEYS = ("hostname", "platform", "python", "dlscale", "torch", "cuda", "hip", "driver", "gpu_count")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#111;background:#fff;
 margin:0 auto;max-width:1100px;padding:1.2em 1.5em;line-height:1.4}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.3em;border-bottom:2px solid #333;margin-top:1.8em;padding-bottom:.15em}
h3{font-size:1.05em;margin:1.2em 0 .4em}h4{font-size:.9em;margin:.6em 0 .2em;color:#333}
.meta{color:#444;font-size:.9em}
.headline{font-size:1.05em}
table{border-collapse:collapse;font-size:.8em;margin:.3em 0 .6em}
th,td{border:1px solid #aaa;padding:.2em .55em;text-align:left;vertical-align:top}
th{background:#eceff3;font-weight:600;word-break:keep-all;overflow-wrap:normal;hyphens:none;white-space:normal}
table.rows th{vertical-align:bottom;max-width:9em}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:13em;font-weight:500}table.kv td.num{text-align:left}
table.compare th.run{text-align:right;max-width:14em}table.compare td{text-align:right}
tr.explainrow td{text-align:left !important;background:#fafafa;border-top:none}tr.explainrow p{margin:.1em 0}
tr.grouprow th{background:#d6dde6;text-align:left;font-size:1.05em}
.groups{display:flex;flex-wrap:wrap;gap:0 1.6em;align-items:flex-start}
.range{color:#555;font-size:.88em}
.explain{font-size:.85em;color:#333;max-width:62em;margin:.1em 0 .5em}
.same{font-size:.85em;color:#222;margin:.2em 0}
.warn{background:#fdecea;border-left:4px solid #b2182b;padding:.3em .6em}
.wide{overflow-x:auto}
figure{margin:.6em 0 1.2em;break-inside:avoid;page-break-inside:avoid}
figure img{max-width:100%;height:auto;border:1px solid #ccc}
figcaption{font-size:.85em;color:#333}
pre{background:#f4f4f4;border:1px solid #ccc;padding:.5em;font-size:.78em;white-space:pre-wrap;word-break:break-all}
details summary{cursor:pointer;font-size:.9em}
.note{font-size:.85em;color:#333}
ul.toc{columns:2;font-size:.9em}
section{break-before:auto}
@media print{body{max-width:none;padding:0}h2{break-after:avoid}.wide{overflow:visible}a{color:#111}details{display:block}}
"""


# --------------------------------------------------------------------------- sections


def _label(item: Item) -> str:
    if item.kind == RUN:
        return f"{item.data.get('model')} on {item.data.get('data')}"
    model = item.data.get("model") or (item.data.get("inputs") or {}).get("model")
    return f"{KIND_TITLES.get(item.kind, item.kind)}{f' ({model})' if model else ''}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _trust_warning(data: dict[str, Any]) -> str:
    """A figure its own measurement flagged as untrustworthy says so before anything else."""
    if data.get("reliable") is not False:
        return ""
    reason = data.get("unreliable_reason") or "no reason recorded"
    return f'<p class="warn">These figures may not be reliable: {esc(reason)}</p>'


def _shown_pairs(pairs: list[tuple[str, Any]], data: dict[str, Any]) -> list[tuple[str, Any]]:
    """Leave out what shows elsewhere: spreads folded into their figure, and the verdict that
    the warning above the tables already states."""
    hidden = folded_keys([data])
    if data.get("reliable") is False:
        hidden |= {"reliable", "unreliable_reason"}
    return [(k, v) for k, v in pairs if k not in hidden]


def _run_pairs(item: Item) -> list[tuple[str, Any]]:
    """A run's summary and the machine it ran on, as (key, value): grouped later by key."""
    s = item.data
    main = [(k, s.get(k)) for k in SUMMARY_KEYS if k in s]
    pairs = main + scalar_pairs(s, {*SUMMARY_KEYS, *STAMP_KEYS})
    hw = item.hardware or {}
    pairs += [(k, hw.get(k)) for k in RUN_PROVENANCE_KEYS if k in hw]
    if isinstance(hw.get("cpu"), dict):
        cpu = hw["cpu"]
        pairs.append(("cpu", f"{cpu.get('model')} ({cpu.get('logical_cores')} logical cores)"))
    if isinstance(hw.get("gpus"), list):
        pairs.append(("gpus", ", ".join(str(g.get("name")) for g in hw["gpus"] if isinstance(g, dict)) or "none"))
    if "run_dir" not in s and item.run_dir is not None:
        pairs.append(("run_dir", str(item.run_dir)))
    return pairs


def _run_section(item: Item, plot: Plotter, explain: Explainer) -> str:
    s = item.data
    out = [_trust_warning(s)]
    figures = [f"{words} {format_value(key, s[key])}".strip() for key, words in HEADLINE if _number(s.get(key))]
    where = f"{s.get('model')} on {s.get('data')}, {s.get('device')} × {s.get('world_size')}"
    out.append(f'<p class="headline">{esc(where + (": " + ", ".join(figures) if figures else ""))}</p>')
    out.append("<h3>summary</h3>")
    out.append(grouped_tables(_shown_pairs(_run_pairs(item), s), explain, row=s))
    if item.metrics:
        out.append(plot("loss-accuracy", lambda stem: _plots().loss_accuracy(item.metrics, stem),
                        "loss per step and per evaluation; validation accuracy per evaluation"))
    else:
        out.append('<p class="note">no metrics.jsonl: no training curves</p>')
    if not item.hardware:
        out.append('<p class="note">no hardware.json: the machine is not described</p>')
    if item.config_text:
        out.append(f"<details><summary>config.toml, the resolved settings (re-run with --config)</summary>"
                   f"<pre>{esc(item.config_text)}</pre></details>")
    return "".join(out)


def _bench_section(item: Item, plot: Plotter, explain: Explainer) -> str:
    d = item.data
    rows = [r for r in d.get("results") or [] if isinstance(r, dict)]
    row_keys = {k for r in rows for k in r}
    out = [_trust_warning(d)]
    head = scalar_pairs(d, row_keys | set(STAMP_KEYS))
    if item.kind == "scaling":
        head = [(k, v) for k, v in d.items() if k in ("model", "precision", "device", "mode") and not isinstance(v, (list, dict))]
    head = _shown_pairs(head, d)
    if head:
        out.append(kv_table(head, explain))
    out.append("<h3>results</h3>")
    columns = COLUMNS.get(item.kind)
    out.append(rows_table(rows, (*columns, *TRUST_COLUMNS) if columns else None, explain))
    if "note" not in (columns or ()):
        out.append(_row_notes(rows))
    if item.kind == "train":
        out.append(plot("throughput", lambda stem: _plots().throughput_vs_batch(rows, stem),
                        "training throughput (samples/s) vs batch size, per precision"))
    elif item.kind == "infer":
        out.append(plot("predictions", lambda stem: _plots().predictions_per_device(rows, stem),
                        "predictions/s per device, precision and batch size (log scale)"))
        if any(isinstance(r.get("test_accuracy"), (int, float)) for r in rows):
            out.append(plot("speed-accuracy", lambda stem: _plots().speed_accuracy(rows, stem),
                            "speed / accuracy trade-off: predictions/s vs test accuracy, per precision"))
        else:
            out.append('<p class="note">no test accuracy (benchmarked without a trained run, --run): '
                       "no speed/accuracy plot</p>")
    elif item.kind == "serve":
        out.append(plot("serving", lambda stem: _plots().serving(rows, d.get("p99_bound_ms"), stem),
                        "serving: predictions/s and p99 latency against load; dotted: the p99 bound"))
    elif item.kind == "scaling":
        mode = d.get("mode") or "measured"
        out.append(plot("scaling", lambda stem: _plots().scaling(rows, [], stem, measured_label=f"measured ({mode} scaling)"),
                        "measured speedup and efficiency vs workers; dotted: ideal"))
    elif item.kind == "forecast":
        out.append(plot("forecast", lambda stem: _plots().scaling([], rows, stem),
                        "forecast speedup and efficiency vs GPUs (hollow markers, dashed); dotted: ideal"))
        assumptions = d.get("assumptions")
        if isinstance(assumptions, list) and assumptions:
            out.append("<h3>assumptions</h3><ul>" + "".join(f"<li>{esc(a)}</li>" for a in assumptions) + "</ul>")
        inputs = d.get("inputs")
        if isinstance(inputs, dict):
            out.append("<h3>inputs</h3>" + kv_table(scalar_pairs(inputs, set()), explain))
    out.append("<h3>provenance</h3>")
    out.append(provenance_table(d.get("provenance")))
    out.append(f'<p class="note">source: {esc(item.source)}</p>')
    return "".join(out)


def _row_notes(rows: list[dict[str, Any]]) -> str:
    """Each distinct note once, after the rows it concerns; a note every row shares, once for all."""
    where: dict[str, list[str]] = {}
    for row in rows:
        if row.get("note"):
            place = f"{row.get('precision', '')} batch {row.get('batch_size')}".strip() if "batch_size" in row else ""
            where.setdefault(str(row["note"]), []).append(place)
    if not where:
        return ""
    if len(where) == 1 and all(r.get("note") for r in rows):
        return f'<p class="same">Every row: {esc(next(iter(where)))}</p>'
    items = (f"{', '.join(p for p in places if p)}: {note}" if any(places) else note for note, places in where.items())
    return '<ul class="note">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def _compute_section(item: Item, plot: Plotter, explain: Explainer) -> str:
    d = item.data
    out = [grouped_tables(scalar_pairs(d, {"chart", *STAMP_KEYS}), explain)]
    notes = d.get("notes")
    if isinstance(notes, list) and notes:
        out.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    label = f"{d.get('model')} {d.get('data')}"
    year = d.get("year") if isinstance(d.get("year"), int) else _dt.date.today().year
    out.append(plot("compute", lambda stem: _plots().compute_chart([(label, year, d.get("pfs_days"))], stem),
                    "training compute in PF/s-days: landmark runs and this run"))
    out.append(f'<p class="note">source: {esc(item.source)}</p>')
    return "".join(out)


def _plots() -> Any:
    from dlscale.report import plots

    return plots


def _overview(items: list[Item], plot: Plotter, explain: Explainer) -> str:
    out = []
    runs_given = [i for i in items if i.kind == RUN]
    if len(runs_given) > 1:
        out.append("<h3>runs side by side</h3>")
        names = [_label(i) for i in runs_given]
        if len(set(names)) < len(names):  # the same model and data twice: tell them apart by folder
            names = [f"{n} ({i.source.name})" for n, i in zip(names, runs_given)]
        out.append(compare_table(names, [dict(_run_pairs(i)) for i in runs_given], explain))
    measured = [r for i in items if i.kind == "scaling" for r in i.data.get("results") or [] if isinstance(r, dict)]
    predicted = [r for i in items if i.kind == "forecast" for r in i.data.get("results") or [] if isinstance(r, dict)]
    if measured and predicted:
        out.append("<h3>scaling: measured and predicted</h3>")
        out.append(plot("scaling-both", lambda stem: _plots().scaling(measured, predicted, stem),
                        "speedup and efficiency vs workers: measured (filled markers, solid) and predicted "
                        "(hollow markers, dashed); dotted: ideal"))
    runs = []
    for item in items:
        if item.kind != RUN or item.run_dir is None:
            continue
        try:
            report = compute_report(item.run_dir)
        except UserError:
            continue
        runs.append((f"{report.get('model')} {report.get('data')}", report["year"], report["pfs_days"]))
    if runs:
        out.append("<h3>training compute</h3>")
        out.append(plot("compute", lambda stem: _plots().compute_chart(runs, stem),
                        "training compute in PF/s-days (1 PF/s-day = 8.64e19 FLOPs): landmark runs and these runs"))
        rows = "".join(f"<tr><td>{esc(label)}</td>{cell(value, 'pfs_days')}</tr>" for label, _, value in runs)
        out.append(f'<table><thead><tr><th>run</th><th title="pfs_days">training compute</th></tr></thead>'
                   f"<tbody>{rows}</tbody></table>")
    return "".join(out)


def render(items: list[Item], title: str, plot: Plotter, extra_sections: list[tuple[str, str]] | None) -> str:
    from dlscale.version import __version__

    sections = []
    toc = []
    explain = Explainer()  # each term explained once, at its first table
    overview = _overview(items, plot, explain)
    for index, item in enumerate(items, 1):
        anchor = f"s{index}"
        heading = f"{index}. {_label(item)}"
        toc.append(f'<li><a href="#{anchor}">{esc(heading)}</a></li>')
        if item.kind == RUN:
            body = _run_section(item, plot, explain)
        elif item.kind == "compute":
            body = _compute_section(item, plot, explain)
        else:
            body = _bench_section(item, plot, explain)
        kind = KIND_TITLES.get(item.kind, item.kind)
        sections.append(f'<section id="{anchor}"><h2>{esc(heading)}</h2>'
                        f'<p class="meta">{esc(kind)}: {esc(item.source)}</p>{body}</section>')
    extras = []
    for index, (heading, body) in enumerate(extra_sections or [], 1):
        anchor = f"x{index}"
        toc.append(f'<li><a href="#{anchor}">{esc(heading)}</a></li>')
        extras.append(f'<section id="{anchor}"><h2>{esc(heading)}</h2>{body}</section>')
    generated = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">generated {esc(generated)} by dlscale {esc(__version__)} from {len(items)} input(s)</p>',
        f'<ul class="toc">{"".join(toc)}</ul>',
    ]
    if overview:
        parts.append(f'<section id="overview"><h2>overview</h2>{overview}</section>')
    parts.extend(extras)
    parts.extend(sections)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def build_report(inputs: list[Path], out: Path, title: str = "dlscale report",
                 extra_sections: list[tuple[str, str]] | None = None, plots_dir: Path | None = None) -> Path:
    """Write one self-contained HTML report of ``inputs`` to ``out`` (atomically); return ``out``.

    ``extra_sections`` are (heading, HTML body) pairs placed after the overview; the
    heading is escaped, the body is trusted HTML from the caller. ``plots_dir``, when
    given, keeps the figures' PNG and SVG files there (otherwise they are temporary).
    """
    from dlscale.runs.files import atomic_write_text

    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a directory: give a file name for the report, e.g. {out / 'report.html'}")
    items = load_inputs([Path(p) for p in inputs])
    if plots_dir is not None:
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        text = render(items, title, Plotter(Path(plots_dir)), extra_sections)
    else:
        with tempfile.TemporaryDirectory(prefix="dlscale-report-") as folder:
            text = render(items, title, Plotter(Path(folder)), extra_sections)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return out
