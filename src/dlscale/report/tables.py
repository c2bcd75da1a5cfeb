"""The HTML pieces of a report: escaped values, key-value and row tables, embedded figures.

Every value goes through ``esc``: titles, provenance and notes come from files anyone
could have written, and the report must show them, never run them.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Callable

Row = dict[str, Any]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value as a table shows it: 4 significant digits, whole numbers whole, '-' for none."""
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


def cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{esc(fmt(value))}</td>' if numeric else f"<td>{esc(fmt(value))}</td>"


def kv_table(pairs: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in pairs)
    return f'<table class="kv">{body}</table>'


def rows_table(rows: list[Row], columns: tuple[str, ...] | None = None) -> str:
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return '<p class="note">no result rows</p>'
    if columns is None:
        columns = tuple(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))))
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]
    head = "".join(f"<th>{esc(c).replace('_', '_<wbr>')}</th>" for c in shown)
    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in shown) + "</tr>" for r in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def scalar_pairs(data: dict[str, Any], skip: set[str]) -> list[tuple[str, Any]]:
    """The top-level values of a result worth a table row: not lists, not objects."""
    return [(k, v) for k, v in data.items() if k not in skip and not isinstance(v, (list, dict))]


def provenance_table(prov: Any) -> str:
    if not isinstance(prov, dict) or not prov:
        return '<p class="note">no provenance recorded</p>'
    pairs = []
    for key, value in prov.items():
        if key == "gpus" and isinstance(value, list):
            value = ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in value) or "none"
        pairs.append((key, value))
    return kv_table(pairs)


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


class Plotter:
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
            return f'<p class="note">{esc(caption)}: not drawn ({esc(exc)})</p>'
        return _figure(png, caption)
