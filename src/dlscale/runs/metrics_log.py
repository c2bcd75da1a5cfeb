"""metrics.jsonl: one JSON object per logged interval (``kind: "train"``) and per
evaluation (``kind: "val"``), appended as the run goes and flushed so a crash loses
nothing.

The file is known by its name, so a line names the kind of *record* it is, not the
kind of file; each line written carries ``schema_version`` (lines of runs from before
versions have none and read the same: version 1 is their layout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from dlscale.errors import UserError
from dlscale.runs.files import atomic_write_text, to_json

SCHEMA_VERSION = 1


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl, flushed so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.mirror: Callable[[dict[str, Any]], None] | None = None  # also given each record (TensorBoard)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines the interrupted run logged after its last checkpoint."""
        if not self.path.exists():
            return
        kept = []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    continue  # the last line, cut off by the crash
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
                raise UserError(
                    f"{self.path} line {number} is not a metrics record written by dlscale ({line[:60]!r}); "
                    "delete that line, then resume again"
                )
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        kind = {"kind": record["kind"]} if "kind" in record else {}  # the record's kind stays first
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(to_json({**kind, "schema_version": SCHEMA_VERSION, **record}) + "\n")
            handle.flush()
        if self.mirror is not None:  # after the line: metrics.jsonl stays the source of truth
            self.mirror(record)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line that is JSON but not an object is no record.
    A line that is not JSON raises ``ValueError`` (a reader polling a live run retries)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    records = [record for record in records if isinstance(record, dict)]
    for record in records:
        version = record.get("schema_version", 1)
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise UserError(
                f"{path} was written by a newer dlscale (metrics schema_version {version}; this one reads "
                f"{SCHEMA_VERSION}); read it with that version"
            )
    return records
