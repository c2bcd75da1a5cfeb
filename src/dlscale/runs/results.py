"""Every JSON result a dlscale command writes, by kind: one place that writes them and
one that reads them, so no reader guesses what a file is from its keys.

    kind        file (and the --json object of the command)
    summary     <run>/summary.json (train --json)
    hardware    <run>/hardware.json
    train, infer, comm, scaling, serve
                <bench run>/bench-<kind>.json (bench <kind> --json)
    forecast    forecast --json (``predict --json`` before the rename); a lab's forecast-scaling.json
    compute     compute --json
    lab         <lab>/lab.json

Each object carries ``"kind"`` and ``"schema_version"`` (an int; the layout of files
written before versions existed is version 1). A reader takes the kind from the object.
A file written before kinds existed is known by its file name only (``summary.json``,
``hardware.json``, ``bench-<kind>.json``, and ``predict.json`` (forecast's old name) /
``compute.json`` as the documented way to save those commands' --json output); anything
else is refused.
metrics.jsonl, a log of records rather than one object, lives in ``metrics_log``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlscale.errors import UserError
from dlscale.runs.files import write_json

SCHEMA_VERSION = 1
STAMP_KEYS = ("kind", "schema_version")

BENCH_KINDS = ("train", "infer", "comm", "scaling", "serve", "data")
# what each kind is, in the words of an error message
KIND_NAMES = {
    "summary": "a run summary (summary.json)",
    "hardware": "a hardware report (hardware.json)",
    **{kind: f"a 'dlscale bench {kind}' result (bench-{kind}.json)" for kind in BENCH_KINDS},
    "forecast": "a 'dlscale forecast' result",
    "compute": "a 'dlscale compute' result",
    "export": "a 'dlscale export' result",
    "lab": "a lab record (lab.json)",
}
# files from before kinds: known by name, never by their keys
_KIND_OF_OLD_FILE = {
    "summary.json": "summary",
    "hardware.json": "hardware",
    **{f"bench-{kind}.json": kind for kind in BENCH_KINDS},
    "predict.json": "forecast",
    "compute.json": "compute",
    "lab.json": "lab",
}
_RENAMED_KINDS = {"predict": "forecast"}  # what early lab folders wrote

# summary.json: the keys every run's summary holds (null where they do not apply)
SUMMARY_KEYS = (
    "model",
    "data",
    "device",
    "precision",
    "world_size",
    "global_batch_size",
    "steps",
    "epochs",
    "wall_seconds",
    "train_seconds",
    "samples_per_second",
    "flops_per_sample",
    "total_flops",
    "achieved_flops_per_second",
    "peak_flops_per_second",
    "mfu",
    "pfs_days",
    "final_loss",
    "test_loss",
    "test_accuracy",
)


@dataclass(frozen=True)
class Result:
    """One result file, identified: its kind, the layout version it was written with, and
    the whole object (``kind`` and ``schema_version`` included)."""

    kind: str
    schema_version: int
    data: dict[str, Any]
    path: Path


# --------------------------------------------------------------------------- writing


def stamp(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as the object of a ``kind`` result: its kind and schema version first."""
    if kind not in KIND_NAMES:
        raise ValueError(f"no result kind {kind!r}; one of {', '.join(KIND_NAMES)}")
    rest = {key: value for key, value in values.items() if key not in STAMP_KEYS}
    return {"kind": kind, "schema_version": SCHEMA_VERSION, **rest}


def write_result(path: Path, kind: str, values: dict[str, Any]) -> Path:
    """Write ``values`` as a ``kind`` result (atomically) to ``path``."""
    write_json(path, stamp(kind, values))
    return Path(path)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    return write_result(Path(run_dir) / "summary.json", "summary", summary)


def write_hardware(run_dir: Path, report: dict[str, Any]) -> Path:
    return write_result(Path(run_dir) / "hardware.json", "hardware", report)


def bench_path(run_dir: Path, kind: str) -> Path:
    return Path(run_dir) / f"bench-{kind}.json"


def write_bench(run_dir: Path, kind: str, result: dict[str, Any]) -> Path:
    if kind not in BENCH_KINDS:
        raise ValueError(f"no bench kind {kind!r}; one of {', '.join(BENCH_KINDS)}")
    return write_result(bench_path(run_dir, kind), kind, result)


# --------------------------------------------------------------------------- reading


def read_json(path: Path, saved_stdout: bool = False) -> Any:
    """The JSON value of ``path``. With ``saved_stdout`` the file may also be a command's
    saved stdout, whose JSON object is its last line (``dlscale forecast --json > f``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if not saved_stdout:
            raise UserError(f"cannot read {path}: {exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    raise UserError(f"{path} is not JSON (nor a command's --json output): cannot report it")


def identify(data: dict[str, Any], path: Path) -> Result:
    """The kind and schema version of a result object read from ``path``: its ``kind``,
    or for a file from before kinds, its file name."""
    path = Path(path)
    kind = data.get("kind")
    if kind is None:
        kind = _KIND_OF_OLD_FILE.get(path.name)
    kind = _RENAMED_KINDS.get(kind, kind) if isinstance(kind, str) else None
    if kind not in KIND_NAMES:
        raise UserError(
            f"{path} is not a dlscale result (a run's summary.json, bench-*.json, or forecast/compute --json output)"
        )
    version = data.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{path}: schema_version is {version!r}, not a whole number from 1; the file is corrupt")
    if version > SCHEMA_VERSION:
        raise UserError(
            f"{path} was written by a newer dlscale ({kind} schema_version {version}; this one reads "
            f"up to {SCHEMA_VERSION}); read it with that version"
        )
    return Result(kind=kind, schema_version=version, data=data, path=path)


def read_result(path: Path, kinds: tuple[str, ...] | None = None, saved_stdout: bool = False) -> Result:
    """Read and identify one result file; with ``kinds``, refuse any other kind."""
    path = Path(path)
    data = read_json(path, saved_stdout)
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object: not a dlscale result")
    result = identify(data, path)
    if kinds is not None and result.kind not in kinds:
        wanted = " or ".join(KIND_NAMES[kind] for kind in kinds)
        raise UserError(f"{path} is not {wanted}: it holds {KIND_NAMES[result.kind]}")
    return result


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The summary.json of a finished run, refusing what is not one."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no summary.json: it is not a finished run")
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; the file is corrupt")
    result = identify(data, path)
    if result.kind != "summary":
        raise UserError(f"{path} is not a run summary: it holds {KIND_NAMES[result.kind]}")
    return result.data


def read_hardware(run_dir: Path) -> dict[str, Any] | None:
    """The run's hardware.json; None when it is missing or unreadable (it only describes)."""
    path = Path(run_dir) / "hardware.json"
    if not path.is_file():
        return None
    try:
        return read_result(path, kinds=("hardware",)).data
    except UserError:
        return None


def read_bench_rows(path: Path, kind: str) -> list[dict[str, Any]]:
    """The rows of a `dlscale bench KIND` result: its JSON file, or the run directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = bench_path(path, kind)
    not_bench = f"{path} is not a 'dlscale bench {kind}' result (bench-{kind}.json)"
    try:
        result = read_result(path)
    except UserError:
        raise UserError(not_bench) from None
    rows = result.data.get("results")
    if not isinstance(rows, list):
        raise UserError(not_bench)
    if result.kind != kind or not rows:
        raise UserError(f"{path} is not a 'dlscale bench {kind}' result with rows")
    return rows
