"""Plots (PNG + SVG from hand-made rows), the HTML report of a real tiny run plus bench-like
results, the `report` command's errors, and a real browser (headless chromium) rendering."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dlscale.errors import UserError
from dlscale.report import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = "/usr/bin/chromium"

TRAIN_ROWS = [  # with keys newer bench code adds: percentiles of repeats, a reliability verdict
    {"batch_size": b, "precision": p, "compiled": False, "device": "cpu", "samples_per_second": sps,
     "samples_per_second_p10": 0.95 * sps, "samples_per_second_p90": 1.04 * sps, "cv": 0.03, "reliable": True,
     "peak_memory_bytes": 357564416, "mfu": 0.0935, "achieved_flops_per_second": 173124157440.0}
    for b, p, sps in ((32, "fp32", 5e4), (64, "fp32", 9e4), (128, "fp32", 1.4e5), (32, "bf16", 4e4), (64, "bf16", 8e4))
]
INFER_ROWS = [
    {"batch_size": b, "precision": p, "device": d, "mode": "eager", "predictions_per_second": pps,
     "latency_p50_ms": 1000 * b / pps, "test_accuracy": acc, "skipped": None,
     "note": "int8: dynamic quantization of Linear layers" if p == "int8" else None}
    for b, p, d, pps, acc in (
        (1, "fp32", "cpu", 4e4, 0.918), (64, "fp32", "cpu", 7e5, 0.918), (1, "bf16", "cpu", 2e4, 0.917),
        (64, "bf16", "cpu", 7.5e5, 0.917), (1, "int8", "cpu", 2e4, 0.921), (64, "int8", "cpu", 8e5, 0.921),
        (64, "fp32", "cuda:0", 5e6, 0.918),
    )
]
SCALING_ROWS = [
    {"workers": n, "samples_per_second": 1000 * n * e, "speedup": n * e, "efficiency": e, "compute_s": 0.01,
     "comm_exposed_s": 0.002 * (n > 1), "data_wait_s": 0.0}
    for n, e in ((1, 1.0), (2, 0.9), (4, 0.8))
]
PREDICT_ROWS = [{"gpus": n, "nodes": max(1, n // 8), "speedup": n * e, "efficiency": e, "samples_per_second": 300 * n * e}
                for n, e in ((1, 1.0), (2, 0.96), (4, 0.95), (8, 0.94), (16, 0.8))]
SERVE_ROWS = [
    {"mode": "closed", "concurrency": c, "rate": None, "predictions_per_second": pps, "latency_p50_ms": p99 / 2,
     "latency_p99_ms": p99, "errors": 0, "mean_batch_size": b, "model_busy": 0.3, "within_p99_bound": p99 <= 15}
    for c, pps, p99, b in ((1, 300, 7.0, 1.0), (8, 640, 17.0, 7.9), (64, 1400, 148.0, 30.0))
] + [
    {"mode": "open", "concurrency": None, "rate": r, "predictions_per_second": min(r, 1400), "latency_p50_ms": p99 / 2,
     "latency_p99_ms": p99, "errors": 0, "mean_batch_size": 2.0, "model_busy": 0.2, "within_p99_bound": p99 <= 15}
    for r, p99 in ((350, 8.0), (700, 12.0), (1400, 90.0))
]
METRICS = [{"kind": "train", "step": s, "epoch": s // 10, "loss": 2.3 / s ** 0.5} for s in range(1, 31)] + [
    {"kind": "val", "step": s, "epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 0.9 / (e + 1), "val_accuracy": a}
    for s, e, a in ((10, 0, 0.8), (20, 1, 0.88), (30, 2, 0.91))
]


def _check_figure(png: Path) -> None:
    assert png.suffix == ".png" and png.is_file()
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 5000
    svg = png.with_suffix(".svg")
    assert svg.is_file() and svg.stat().st_size > 5000
    assert "<svg" in svg.read_text()[:2000]


@pytest.mark.parametrize(
    "name, draw",
    [
        ("loss", lambda stem: plots.loss_accuracy(METRICS, stem)),
        ("loss-no-val", lambda stem: plots.loss_accuracy(METRICS[:30], stem)),
        ("throughput", lambda stem: plots.throughput_vs_batch(TRAIN_ROWS, stem)),
        ("scaling", lambda stem: plots.scaling(SCALING_ROWS, PREDICT_ROWS, stem)),
        ("scaling-measured", lambda stem: plots.scaling(SCALING_ROWS, [], stem)),
        ("scaling-predicted", lambda stem: plots.scaling([], PREDICT_ROWS, stem)),
        ("predictions", lambda stem: plots.predictions_per_device(INFER_ROWS, stem)),
        ("speed-accuracy", lambda stem: plots.speed_accuracy(INFER_ROWS, stem)),
        ("serving", lambda stem: plots.serving(SERVE_ROWS, 15.0, stem)),
        ("serving-closed-only", lambda stem: plots.serving(SERVE_ROWS[:3], None, stem)),
        ("compute", lambda stem: plots.compute_chart([("mlp digits", 2026, 2e-11), ("big", 2025, 3.0)], stem)),
    ],
)
def test_plot_writes_png_and_svg(tmp_path, name, draw):
    png = draw(tmp_path / "sub" / name)
    assert png == tmp_path / "sub" / f"{name}.png"
    _check_figure(png)


def test_plot_with_nothing_to_draw_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        plots.throughput_vs_batch([], tmp_path / "x")
    with pytest.raises(ValueError):
        plots.speed_accuracy([{**r, "test_accuracy": None} for r in INFER_ROWS], tmp_path / "y")
    with pytest.raises(ValueError):
        plots.scaling([], [], tmp_path / "z")
    with pytest.raises(ValueError):
        plots.serving([{**r, "predictions_per_second": 0} for r in SERVE_ROWS], 15.0, tmp_path / "s")


def test_a_serving_benchmark_gets_its_section_table_and_figure(tmp_path):
    result = tmp_path / "bench-serve.json"
    result.write_text(json.dumps({"kind": "serve", "schema_version": 1, "url": "http://127.0.0.1:8000", "p99_bound_ms": 15.0,
                                  "max_rate_under_p99": 700, "provenance": {"dlscale": "x"}, "results": SERVE_ROWS}))
    from dlscale.report.html import build_report

    text = build_report([result], tmp_path / "r.html").read_text()
    assert "serving benchmark" in text and 'title="max_rate_under_p99">highest load within the p99 bound<' in text
    assert 'alt="serving: predictions/s and p99 latency against load' in text
    assert text.count("<tr>") >= len(SERVE_ROWS) + 1 and 'title="mean_batch_size">mean batch formed<' in text
    assert "Every row: " in text and ">errors: 0<" in text  # the same on every row: said once, above


# --------------------------------------------------------------------------- the HTML report


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A real tiny run, and bench / predict results shaped like the real files."""
    import dlscale

    root = tmp_path_factory.mktemp("report-inputs")
    run_dir = root / "run"
    dlscale.fit("mlp", "digits", epochs=2, run_dir=str(run_dir), verbose=False)
    prov = {"dlscale": "0.1.0", "torch": "2", "command": "dlscale bench <x> & 'y'", "date": "2026-01-01T00:00:00+00:00",
            "gpus": []}
    bench_dir = root / "bench"
    bench_dir.mkdir()
    (bench_dir / "bench-train.json").write_text(json.dumps({**TRAIN_ROWS[0], "kind": "train", "model": "mlp",
                                                            "load_average_before": 0.42, "provenance": prov,
                                                            "results": TRAIN_ROWS}))
    (bench_dir / "bench-infer.json").write_text(json.dumps({"kind": "infer", "model": "mlp", "run": str(run_dir),
                                                            "provenance": prov, "results": INFER_ROWS}))
    scaling = root / "bench-scaling.json"
    scaling.write_text(json.dumps({"kind": "scaling", "mode": "weak", "model": "mlp", "provenance": prov,
                                   "results": SCALING_ROWS}))
    predict = root / "predict.json"  # as `dlscale forecast` was saved when it was `predict`: no kind, known by name
    predict.write_text("some human line\n" + json.dumps({"assumptions": ["weak scaling <fixed batch>"],
                                                         "inputs": {"model": "resnet50"}, "provenance": prov,
                                                         "results": PREDICT_ROWS}) + "\n")
    return {"run": run_dir, "bench": bench_dir, "scaling": scaling, "predict": predict}


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory):
    from dlscale.report.html import build_report

    out = tmp_path_factory.mktemp("report") / "report.html"
    extra = [("notes <from lab>", "<p>lab's own <b>block</b></p>")]
    path = build_report([inputs["run"], inputs["bench"], inputs["scaling"], inputs["predict"]], out,
                        title="tiny <report>", extra_sections=extra)
    assert path == out
    return out


def test_report_is_self_contained_and_complete(report, inputs):
    text = report.read_text(encoding="utf-8")
    summary = json.loads((inputs["run"] / "summary.json").read_text())
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert text.count('src="data:image/png;base64,') >= 7  # curves, throughput, 2 infer, scaling x2, predict, compute
    assert summary["model"] == "mlp" and ">mlp<" in text
    assert f"test accuracy {100 * summary['test_accuracy']:.3g}%" in text
    assert f'title="{summary["total_flops"]}"' in text  # the raw figure behind "... GFLOP" in a tooltip
    # escaped: the title, provenance and assumptions; the caller's extra HTML kept as given
    assert "tiny &lt;report&gt;" in text and "<title>tiny &lt;report&gt;</title>" in text
    assert "dlscale bench &lt;x&gt; &amp; &#x27;y&#x27;" in text
    assert "weak scaling &lt;fixed batch&gt;" in text
    assert "notes &lt;from lab&gt;" in text and "<p>lab's own <b>block</b></p>" in text
    assert "int8: dynamic quantization of Linear layers" in text  # long notes listed under the table
    assert "measured and predicted" in text


def test_report_inputs_by_file(inputs, tmp_path):
    from dlscale.report.html import build_report

    out = build_report([inputs["run"] / "summary.json", inputs["bench"] / "bench-infer.json"], tmp_path / "a" / "r.html")
    text = out.read_text()
    assert "data:image/png;base64," in text and "inference benchmark" in text


def _report_args(argv: list[str]) -> argparse.Namespace:
    from dlscale.cli import build_parser

    return build_parser().parse_args(["report", *argv])


def test_report_command_writes_and_prints_path(inputs, tmp_path, capsys):
    from dlscale.cli import report as command

    out = tmp_path / "r.html"
    args = _report_args([str(inputs["scaling"]), str(inputs["predict"]), "-o", str(out), "--title", "T"])
    assert command.run(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "<title>T</title>" in out.read_text()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp, inp: [str(tmp / "missing"), "-o", str(tmp / "r.html")], "does not exist"),
        (lambda tmp, inp: [str(inp["scaling"]), "-o", str(tmp)], "is a directory"),
        (lambda tmp, inp: [str(_write(tmp / "x.json", '{"hello": 1}')), "-o", str(tmp / "r.html")], "not a dlscale result"),
        (lambda tmp, inp: [str(_write(tmp / "x.json", "not json at all")), "-o", str(tmp / "r.html")], "is not JSON"),
        (lambda tmp, inp: [str(_mkdir(tmp / "empty")), "-o", str(tmp / "r.html")], "no summary.json"),
    ],
)
def test_report_command_user_errors(inputs, tmp_path, make, message):
    from dlscale.cli import report as command

    args = _report_args(make(tmp_path, inputs))
    with pytest.raises(UserError, match=message):
        command.run(args)
    assert not (tmp_path / "r.html").exists()


def test_report_command_error_is_one_line(tmp_path, cli):
    result = cli(["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# --------------------------------------------------------------------------- a real browser


def test_report_renders_in_chromium(report, tmp_path):
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (.ci/run installs it): no browser to render the report")
    browser = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    shot = tmp_path / "shot.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1200,2000", "--enable-logging=stderr", "--v=0", report.as_uri(),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium could not run here: {exc}")
    if not shot.is_file():
        pytest.skip(f"chromium did not start (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    # chromium logs every console message as "INFO:CONSOLE:<line>] ..." without its level
    # (console.error reads like console.log); the report has no script, so any is a fault
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "\n".join(console)
    assert not re.search(r"net::ERR_|Not allowed to load local resource", result.stderr), result.stderr[-2000:]

    from PIL import Image

    with Image.open(shot) as image:
        grey = image.convert("L")
        assert grey.size == (1200, 2000)
        low, high = grey.getextrema()
        histogram = grey.histogram()
    assert high - low > 100, "the screenshot is blank"
    dark = sum(histogram[:128]) / sum(histogram)
    assert 0.002 < dark < 0.6, f"implausible share of dark pixels: {dark:.4f}"


def test_a_tampered_run_gives_a_report_not_a_traceback(inputs, tmp_path):
    """JSON lines that are not records and summary values of the wrong type are passed over."""
    import shutil

    from dlscale.report.html import build_report

    run = tmp_path / "run"
    shutil.copytree(inputs["run"], run, symlinks=True)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write("null\n[1, 2]\n")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "mfu": [1]}))
    out = build_report([run], tmp_path / "r.html")
    assert "MFU" not in out.read_text().split("<h3>summary</h3>")[0]


class _VisibleLabels(HTMLParser):
    """The visible text of the cells that name a figure (table headers and 'every row' items);
    titles (tooltips) are attributes, so they never reach ``handle_data``."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.labels: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        classes = dict(attrs).get("class") or ""
        if self.depth or tag == "th" or (tag == "span" and dict(attrs).get("title")) or "same" in classes:
            self.depth += 1
            if self.depth == 1:
                self.text = []

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1
            if self.depth == 0:
                self.labels.append("".join(self.text).strip())

    def handle_data(self, data):
        if self.depth:
            self.text.append(data)


def _dump_dom(page: Path, tmp_path: Path) -> str:
    browser = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if not browser:
        pytest.skip("chromium is not installed (.ci/run installs it): no browser to render the report")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium could not run here: {exc}")
    if "<body" not in result.stdout:
        pytest.skip(f"chromium did not start (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    return result.stdout


def test_the_rendered_report_speaks_in_labels_and_units(report, tmp_path):
    """What the browser shows: human units, and no snake_case key as a visible label."""
    dom = _dump_dom(report, tmp_path)
    parser = _VisibleLabels()
    parser.feed(dom)
    labels = [text for text in parser.labels if text]
    assert len(labels) > 40
    raw = [text for text in labels if re.search(r"\b[a-z]+_[a-z_]+\b", text)]
    assert not raw, raw
    body = re.sub(r"<[^>]+>", " ", dom.split("<body", 1)[1])
    for unit in ("GFLOP", "MiB", "%", "samples/s", " ms"):
        assert unit in body, unit
    assert "load average before" in labels and "throughput" in labels  # a key nobody described, and a known one
    assert "(p10–p90: 47,500–52,000 samples/s)" in body  # the p10-p90 range beside the figure it qualifies
    assert body.count("MFU (model FLOPs utilisation) is") == 1  # explained once, not per table
    assert body.count("p50, p90 and p99 are percentiles") == 1


def test_two_runs_are_compared_side_by_side(inputs, tmp_path):
    import shutil as files

    from dlscale.report.html import build_report

    other = tmp_path / "other"
    files.copytree(inputs["run"], other, symlinks=True)
    text = build_report([inputs["run"], other], tmp_path / "r.html").read_text()
    table = text.split('<table class="compare">', 1)[1].split("</table>", 1)[0]
    assert table.count('<th class="run">') == 2 and "mlp on digits (other)" in table
    for group in ("speed", "compute", "memory", "settings", "provenance"):
        assert f">{group}</th>" in table, group
    assert 'title="samples_per_second">throughput</th>' in table


def test_a_single_point_is_a_note_not_a_plot(tmp_path):
    with pytest.raises(ValueError, match="only one setting"):
        plots.throughput_vs_batch(TRAIN_ROWS[:1], tmp_path / "one")
    with pytest.raises(ValueError, match="same value"):
        plots.throughput_vs_batch([{**r, "samples_per_second": 5e4} for r in TRAIN_ROWS], tmp_path / "flat")
    from dlscale.report.html import build_report

    result = tmp_path / "bench-train.json"
    result.write_text(json.dumps({"kind": "train", "schema_version": 1, "provenance": {}, "results": TRAIN_ROWS[:1]}))
    text = build_report([result], tmp_path / "r.html").read_text()
    assert "data:image/png" not in text and "No plot of training throughput" in text
    assert "only one setting was measured" in text


def test_compute_chart_labels_do_not_overlap(tmp_path):
    figure = plots.compute_figure([("mlp on digits", 2026, 2e-11), ("cnn on digits", 2026, 3e-11)])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    from matplotlib.text import Text

    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in axes.texts]  # words, not leader lines
    assert any(text.startswith("fit 2012-2018: doubling every 3.") for text, _ in boxes)
    clashes = [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]
    assert not clashes, clashes
