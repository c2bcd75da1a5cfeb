"""One self-contained HTML report of runs and bench results.

Each input is a run directory (summary.json, metrics.jsonl, config.toml, hardware.json),
a bench run directory (bench-*.json) or a JSON file (a bench result, ``predict --json``
output, ``compute --json`` output or a summary.json). The report has a section per input
with its summary table, its provenance and its plots, plus an overview that puts what
belongs together on one figure (measured and predicted scaling; all runs on the compute
chart). Plots are PNGs embedded as ``data:`` URIs; the CSS is inline; there is no
script and no external reference, so the file opens offline and prints.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dlscale.errors import UserError

Row = dict[str, Any]

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
    "predict": ("gpus", "nodes", "global_batch_size", "samples_per_second", "speedup", "efficiency",
                "step_time_s", "compute_s", "comm_s", "comm_exposed_s", "straggler_s", "overhead_s"),
    "comm": ("op", "bytes", "time_s", "algbw_gbps", "busbw_gbps"),
}
KIND_TITLES = {
    "run": "training run", "train": "training benchmark", "infer": "inference benchmark",
    "scaling": "scaling benchmark", "predict": "scaling prediction", "comm": "communication benchmark",
    "compute": "compute of a run",
}
RUN_PROVENANCE_KEYS = ("hostname", "platform", "python", "dlscale", "torch", "cuda", "hip", "driver", "gpu_count")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#111;background:#fff;
 margin:0 auto;max-width:1100px;padding:1.2em 1.5em;line-height:1.4}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.3em;border-bottom:2px solid #333;margin-top:1.8em;padding-bottom:.15em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#444;font-size:.9em}
table{border-collapse:collapse;font-size:.78em;margin:.3em 0 .8em}
th,td{border:1px solid #999;padding:.18em .5em;text-align:left;vertical-align:top}
th{background:#e6e6e6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:16em}table.kv td.num{text-align:left}
.wide{overflow-x:auto}
figure{margin:.6em 0 1.2em;break-inside:avoid;page-break-inside:avoid}
figure img{max-width:100%;height:auto;border:1px solid #ccc}
figcaption{font-size:.85em;color:#333}
pre{background:#f4f4f4;border:1px solid #ccc;padding:.5em;font-size:.78em;white-space:pre-wrap;word-break:break-all}
.note{font-size:.85em;color:#333}
ul.toc{columns:2;font-size:.9em}
section{break-before:auto}
@media print{body{max-width:none;padding:0}h2{break-after:avoid}.wide{overflow:visible}a{color:#111}}
"""


@dataclass
class Item:
    """One input, classified."""

    kind: str  # run, train, infer, scaling, predict, comm, compute
    source: Path
    data: dict[str, Any]
    run_dir: Path | None = None
    metrics: list[Row] = field(default_factory=list)
    config_text: str | None = None
    hardware: dict[str, Any] | None = None


# --------------------------------------------------------------------------- reading inputs


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # a saved `--json` stdout: the object is the last line
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            try:
                return json.loads(lines[-1])
            except json.JSONDecodeError:
                pass
    raise UserError(f"{path} is not JSON (nor a command's --json output): cannot report it")


def _classify(data: Any, path: Path) -> str:
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object: not a dlscale result")
    rows = data.get("results")
    if isinstance(rows, list):
        kind = data.get("kind")
        if kind in ("train", "infer", "scaling", "comm"):
            return str(kind)
        if "assumptions" in data or (rows and isinstance(rows[0], dict) and "gpus" in rows[0]):
            return "predict"
    if isinstance(data.get("landmarks"), list) and "pfs_days" in data:
        return "compute"
    if "total_flops" in data and "model" in data and "samples_per_second" in data:
        return "run"
    raise UserError(
        f"{path} is not a dlscale result (a run's summary.json, bench-*.json, or predict/compute --json output)"
    )


def _load_run(run_dir: Path) -> Item:
    from dlscale.runs.directory import read_metrics

    summary = _read_json(run_dir / "summary.json")
    if _classify(summary, run_dir / "summary.json") != "run":
        raise UserError(f"{run_dir / 'summary.json'} is not a run summary")
    item = Item("run", run_dir, summary, run_dir=run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        try:
            item.metrics = read_metrics(metrics)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {metrics}: {exc}") from None
    config = run_dir / "config.toml"
    if config.is_file():
        try:
            item.config_text = config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            item.config_text = None
    hardware = run_dir / "hardware.json"
    if hardware.is_file():
        try:
            value = json.loads(hardware.read_text(encoding="utf-8"))
            item.hardware = value if isinstance(value, dict) else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            item.hardware = None
    return item


def load_inputs(inputs: list[Path]) -> list[Item]:
    """Classify every input; a missing, unreadable or unknown one is a UserError naming it."""
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path} does not exist: give run directories, bench run directories or JSON files")
        if path.is_dir():
            if (path / "summary.json").is_file():
                items.append(_load_run(path))
                continue
            benches = sorted(path.glob("bench-*.json"))
            if not benches:
                raise UserError(f"{path} holds no summary.json and no bench-*.json: not a finished run or bench result")
            for bench in benches:
                data = _read_json(bench)
                items.append(Item(_classify(data, bench), bench, data))
            continue
        data = _read_json(path)
        kind = _classify(data, path)
        if kind == "run" and path.name == "summary.json":
            items.append(_load_run(path.parent))
        else:
            items.append(Item(kind, path, data))
    if not items:
        raise UserError("nothing to report: give at least one run directory or result file")
    return items


# --------------------------------------------------------------------------- formatting


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if value == 0:
            return "0"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{_esc(_fmt(value))}</td>' if numeric else f"<td>{_esc(_fmt(value))}</td>"


def kv_table(pairs: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th>{_cell(v)}</tr>" for k, v in pairs)
    return f'<table class="kv">{body}</table>'


def rows_table(rows: list[Row], columns: tuple[str, ...] | None = None) -> str:
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return '<p class="note">no result rows</p>'
    if columns is None:
        columns = tuple(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))))
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]
    head = "".join(f"<th>{_esc(c).replace('_', '_<wbr>')}</th>" for c in shown)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in shown) + "</tr>" for r in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


class _Plotter:
    """Draws figures into a folder and returns embedded ``<figure>`` HTML; a figure with
    nothing to draw becomes a note instead of failing the report."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def __call__(self, name: str, draw: Callable[[Path], Path], caption: str) -> str:
        self.count += 1
        stem = self.folder / f"{self.count:02d}-{name}"
        try:
            png = draw(stem)
        except ValueError as exc:
            return f'<p class="note">{_esc(caption)}: not drawn ({_esc(exc)})</p>'
        return _figure(png, caption)


def _scalar_pairs(data: dict[str, Any], skip: set[str]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in data.items() if k not in skip and not isinstance(v, (list, dict))]


def _provenance(prov: Any) -> str:
    if not isinstance(prov, dict) or not prov:
        return '<p class="note">no provenance recorded</p>'
    pairs = []
    for key, value in prov.items():
        if key == "gpus" and isinstance(value, list):
            value = ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in value) or "none"
        pairs.append((key, value))
    return kv_table(pairs)


# --------------------------------------------------------------------------- sections


def _label(item: Item) -> str:
    if item.kind == "run":
        return f"{item.data.get('model')} on {item.data.get('data')}"
    model = item.data.get("model") or (item.data.get("inputs") or {}).get("model")
    return f"{KIND_TITLES.get(item.kind, item.kind)}{f' ({model})' if model else ''}"


def _run_section(item: Item, plot: _Plotter) -> str:
    from dlscale.runs.directory import SUMMARY_KEYS

    s = item.data
    out = []
    acc = s.get("test_accuracy")
    headline = [f"model {_fmt(s.get('model'))} on {_fmt(s.get('data'))}, {_fmt(s.get('device'))} x {_fmt(s.get('world_size'))}"]
    if isinstance(acc, (int, float)) and not isinstance(acc, bool):
        headline.append(f"test accuracy {100 * acc:.2f}%")
    if s.get("samples_per_second"):
        headline.append(f"{_fmt(s.get('samples_per_second'))} samples/s")
    if isinstance(s.get("mfu"), (int, float)) and not isinstance(s.get("mfu"), bool):
        headline.append(f"MFU {100 * s['mfu']:.1f}%")
    out.append(f"<p>{_esc('; '.join(headline))}</p>")
    out.append("<h3>summary</h3>")
    main = [(k, s.get(k)) for k in SUMMARY_KEYS if k in s]
    rest = _scalar_pairs(s, set(SUMMARY_KEYS))
    out.append(kv_table(main + rest))
    if item.metrics:
        out.append(plot("loss-accuracy", lambda stem: _plots().loss_accuracy(item.metrics, stem),
                        "loss per step and per evaluation; validation accuracy per evaluation"))
    else:
        out.append('<p class="note">no metrics.jsonl: no training curves</p>')
    out.append("<h3>provenance</h3>")
    hw = item.hardware or {}
    pairs = [(k, hw.get(k)) for k in RUN_PROVENANCE_KEYS if k in hw]
    if isinstance(hw.get("cpu"), dict):
        cpu = hw["cpu"]
        pairs.append(("cpu", f"{cpu.get('model')} ({cpu.get('logical_cores')} logical cores)"))
    if isinstance(hw.get("gpus"), list):
        pairs.append(("gpus", ", ".join(str(g.get("name")) for g in hw["gpus"] if isinstance(g, dict)) or "none"))
    pairs.append(("run directory", str(item.run_dir)))
    out.append(kv_table(pairs) if hw else '<p class="note">no hardware.json</p>' + kv_table(pairs))
    if item.config_text:
        out.append(f"<p class=\"note\">config.toml</p><pre>{_esc(item.config_text)}</pre>")
    return "".join(out)


def _bench_section(item: Item, plot: _Plotter) -> str:
    d = item.data
    rows = [r for r in d.get("results") or [] if isinstance(r, dict)]
    row_keys = {k for r in rows for k in r}
    out = []
    head = _scalar_pairs(d, row_keys | {"kind"})
    if item.kind == "scaling":
        head = [(k, v) for k, v in d.items() if k in ("model", "precision", "device", "mode") and not isinstance(v, (list, dict))]
    if head:
        out.append(kv_table(head))
    out.append("<h3>results</h3>")
    out.append(rows_table(rows, COLUMNS.get(item.kind)))
    notes = dict.fromkeys(
        f"{r.get('precision', '')} batch {r.get('batch_size')}: {r['note']}" if "batch_size" in r else str(r["note"])
        for r in rows if r.get("note") and "note" not in (COLUMNS.get(item.kind) or ())
    )
    if notes:
        out.append('<ul class="note">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
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
    elif item.kind == "scaling":
        mode = d.get("mode") or "measured"
        out.append(plot("scaling", lambda stem: _plots().scaling(rows, [], stem, measured_label=f"measured ({mode} scaling)"),
                        "measured speedup and efficiency vs workers; dotted: ideal"))
    elif item.kind == "predict":
        out.append(plot("prediction", lambda stem: _plots().scaling([], rows, stem),
                        "predicted speedup and efficiency vs GPUs (hollow markers, dashed); dotted: ideal"))
        assumptions = d.get("assumptions")
        if isinstance(assumptions, list) and assumptions:
            out.append("<h3>assumptions</h3><ul>" + "".join(f"<li>{_esc(a)}</li>" for a in assumptions) + "</ul>")
        inputs = d.get("inputs")
        if isinstance(inputs, dict):
            out.append("<h3>inputs</h3>" + kv_table(list(inputs.items())))
    out.append("<h3>provenance</h3>")
    out.append(_provenance(d.get("provenance")))
    out.append(f'<p class="note">source: {_esc(item.source)}</p>')
    return "".join(out)


def _compute_section(item: Item, plot: _Plotter) -> str:
    d = item.data
    out = [kv_table(_scalar_pairs(d, {"chart"}))]
    notes = d.get("notes")
    if isinstance(notes, list) and notes:
        out.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    label = f"{d.get('model')} {d.get('data')}"
    year = d.get("year") if isinstance(d.get("year"), int) else _dt.date.today().year
    out.append(plot("compute", lambda stem: _plots().compute_chart([(label, year, d.get("pfs_days"))], stem),
                    "training compute in PF/s-days: landmark runs and this run"))
    out.append(f'<p class="note">source: {_esc(item.source)}</p>')
    return "".join(out)


def _plots() -> Any:
    from dlscale.report import plots

    return plots


def _overview(items: list[Item], plot: _Plotter) -> str:
    out = []
    measured = [r for i in items if i.kind == "scaling" for r in i.data.get("results") or [] if isinstance(r, dict)]
    predicted = [r for i in items if i.kind == "predict" for r in i.data.get("results") or [] if isinstance(r, dict)]
    if measured and predicted:
        out.append("<h3>scaling: measured and predicted</h3>")
        out.append(plot("scaling-both", lambda stem: _plots().scaling(measured, predicted, stem),
                        "speedup and efficiency vs workers: measured (filled markers, solid) and predicted "
                        "(hollow markers, dashed); dotted: ideal"))
    runs = []
    for item in items:
        if item.kind != "run" or item.run_dir is None:
            continue
        from dlscale.cli.compute import compute_report

        try:
            report = compute_report(item.run_dir)
        except UserError:
            continue
        runs.append((f"{report.get('model')} {report.get('data')}", report["year"], report["pfs_days"]))
    if runs:
        out.append("<h3>training compute</h3>")
        out.append(plot("compute", lambda stem: _plots().compute_chart(runs, stem),
                        "training compute in PF/s-days (1 PF/s-day = 8.64e19 FLOPs): landmark runs and these runs"))
        rows = "".join(f"<tr><td>{_esc(label)}</td>{_cell(value)}</tr>" for label, _, value in runs)
        out.append(f"<table><thead><tr><th>run</th><th>PF/s-days</th></tr></thead><tbody>{rows}</tbody></table>")
    return "".join(out)


def render(items: list[Item], title: str, plot: _Plotter, extra_sections: list[tuple[str, str]] | None) -> str:
    from dlscale import __version__

    sections = []
    toc = []
    for index, item in enumerate(items, 1):
        anchor = f"s{index}"
        heading = f"{index}. {_label(item)}"
        toc.append(f'<li><a href="#{anchor}">{_esc(heading)}</a></li>')
        if item.kind == "run":
            body = _run_section(item, plot)
        elif item.kind == "compute":
            body = _compute_section(item, plot)
        else:
            body = _bench_section(item, plot)
        kind = KIND_TITLES.get(item.kind, item.kind)
        sections.append(f'<section id="{anchor}"><h2>{_esc(heading)}</h2>'
                        f'<p class="meta">{_esc(kind)}: {_esc(item.source)}</p>{body}</section>')
    overview = _overview(items, plot)
    extras = []
    for index, (heading, body) in enumerate(extra_sections or [], 1):
        anchor = f"x{index}"
        toc.append(f'<li><a href="#{anchor}">{_esc(heading)}</a></li>')
        extras.append(f'<section id="{anchor}"><h2>{_esc(heading)}</h2>{body}</section>')
    generated = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">generated {_esc(generated)} by dlscale {_esc(__version__)} from {len(items)} input(s)</p>',
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
    from dlscale.runs.directory import atomic_write_text

    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a directory: give a file name for the report, e.g. {out / 'report.html'}")
    items = load_inputs([Path(p) for p in inputs])
    if plots_dir is not None:
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        text = render(items, title, _Plotter(Path(plots_dir)), extra_sections)
    else:
        with tempfile.TemporaryDirectory(prefix="dlscale-report-") as folder:
            text = render(items, title, _Plotter(Path(folder)), extra_sections)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return out
