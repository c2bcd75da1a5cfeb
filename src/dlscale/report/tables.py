"""The HTML pieces of a report: escaped values, labelled tables in units, embedded figures.

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

from dlscale.report.labels import GROUP_TITLES, GROUPS, Explainer, describe, format_value, label, show_text
from dlscale.report.ranges import folded_keys, value_range

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


def _raw(value: Any) -> str:
    """The stored value, for a tooltip: what the file says, before any rounding."""
    return fmt(value) if not isinstance(value, str) else value


def cell(value: Any, key: str | None = None, row: Row | None = None) -> str:
    """A value as a table cell: in its unit when ``key`` is given, the raw value in a tooltip,
    and the range of its repeats beside it when ``row`` holds one."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = esc(format_value(key, value) if key else fmt(value))
    spread = value_range(row, key) if key and row is not None and numeric else None
    if spread is not None:
        low, high, what = spread
        shown = _range_text(key, low, high)
        shown = f"{what.replace('-', '–')}: {shown}" if what.startswith("p") else shown  # percentiles say so
        text += f' <span class="range" title="{esc(what)}">({esc(shown)})</span>'
    title = f' title="{esc(_raw(value))}"' if key and numeric else ""
    return f'<td class="num"{title}>{text}</td>' if numeric else f"<td>{text}</td>"


def _range_text(key: str, low: float, high: float) -> str:
    """'1,380-1,430 samples/s': the unit once when both ends share it."""
    low_text, high_text = format_value(key, low), format_value(key, high)
    head, _, unit = low_text.rpartition(" ")
    if head and unit == high_text.rpartition(" ")[2]:
        low_text = head
    return f"{low_text}–{high_text}"


def head_cell(key: str, tag: str = "th", attrs: str = "") -> str:
    """A label in words; the key as the files spell it in the tooltip."""
    return f'<{tag}{attrs} class="label" title="{esc(key)}">{esc(label(key))}</{tag}>'


def explanations(keys: list[str], explain: Explainer | None) -> str:
    sentences = explain(keys) if explain is not None else []
    return "".join(f'<p class="explain">{esc(s)}</p>' for s in sentences)


def kv_table(pairs: list[tuple[str, Any]], explain: Explainer | None = None, row: Row | None = None) -> str:
    """Label and value per line; ``row``, when given, is where the values' repeats are found."""
    body = "".join(f"<tr>{head_cell(k)}{cell(v, k, row)}</tr>" for k, v in pairs)
    keys = [k for k, _ in pairs]
    if row is not None:  # percentiles folded into these figures' ranges are explained here too
        keys += [f"{k}_p10" for k in keys if f"{k}_p10" in row]
    return f'<table class="kv">{body}</table>' + explanations(keys, explain)


def grouped_tables(pairs: list[tuple[str, Any]], explain: Explainer | None = None, skip_none: bool = True,
                   row: Row | None = None) -> str:
    """One small table per group (speed, compute, memory, settings, provenance, ...), in that
    order; values that are not applicable (None) are left out."""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for key, value in pairs:
        if skip_none and value is None:
            continue
        groups.setdefault(describe(key).group, []).append((key, value))
    out = []
    for group in GROUPS:
        if groups.get(group):
            out.append(f'<div class="group"><h4>{esc(GROUP_TITLES[group])}</h4>{kv_table(groups[group], explain, row)}</div>')
    return '<div class="groups">' + "".join(out) + "</div>"


def compare_table(names: list[str], summaries: list[dict[str, Any]], explain: Explainer | None = None) -> str:
    """Runs side by side: one column per run, one row per key, grouped; rows that no run
    has a value for are left out."""
    folded = folded_keys(summaries)
    keys = list(dict.fromkeys(k for s in summaries for k, v in s.items()
                              if v is not None and not isinstance(v, (list, dict)) and k not in folded))
    head = "<th></th>" + "".join(f'<th class="run">{esc(n)}</th>' for n in names)
    body = []
    for group in GROUPS:
        members = [k for k in keys if describe(k).group == group]
        if not members:
            continue
        body.append(f'<tr class="grouprow"><th colspan="{len(names) + 1}">{esc(GROUP_TITLES[group])}</th></tr>')
        for key in members:
            values = [s.get(key) for s in summaries]
            differs = ' class="differs"' if len({repr(v) for v in values}) > 1 else ""
            body.append(f"<tr{differs}>{head_cell(key)}"
                        + "".join(cell(v, key, s) for v, s in zip(values, summaries)) + "</tr>")
        said = explanations(members, explain)  # under the group that shows the term
        if said:
            body.append(f'<tr class="explainrow"><td colspan="{len(names) + 1}">{said}</td></tr>')
    return (f'<div class="wide"><table class="compare"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def rows_table(rows: list[Row], columns: tuple[str, ...] | None = None, explain: Explainer | None = None) -> str:
    """Result rows as a table with labelled columns; a column with the same value on every
    row is said once above the table, and spreads fold into the figures they qualify."""
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return '<p class="note">no result rows</p>'
    if len(rows) == 1:  # one row reads better as labelled lines than as a wide table
        only = rows[0]
        keys = columns if columns is not None else tuple(only)
        pairs = [(k, only.get(k)) for k in keys if k not in folded_keys(rows) and not isinstance(only.get(k), (list, dict))]
        return grouped_tables(pairs, explain, row=only)
    if columns is None:
        columns = tuple(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))))
    folded = folded_keys(rows)
    shown = [c for c in columns if c not in folded and any(r.get(c) is not None for r in rows)]
    same = [c for c in shown if len(rows) > 1 and len({repr(r.get(c)) for r in rows}) == 1]
    if len(same) == len(shown):
        same = []
    varying = [c for c in shown if c not in same]
    out = []
    if same:
        items = "; ".join(f'<span title="{esc(c)}">{esc(label(c))}: {esc(format_value(c, rows[0].get(c)))}</span>'
                          for c in same)
        out.append(f'<p class="same">Every row: {items}</p>')
    head = "".join(head_cell(c) for c in varying)
    body = "".join("<tr>" + "".join(cell(r.get(c), c, r) for c in varying) + "</tr>" for r in rows)
    out.append(f'<div class="wide"><table class="rows"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
    out.append(explanations(shown + sorted(folded & {k for r in rows for k in r}), explain))
    return "".join(out)


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
        elif isinstance(value, dict):
            value = show_text(value)
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
            return f'<p class="note noplot">No plot of {esc(caption)}: {esc(exc)}.</p>'
        return _figure(png, caption)
