"""The run directory: where a run's configuration, metrics, summary and checkpoints live.

    runs/<UTC-timestamp>-<model>-<data>/
        config.toml      the resolved configuration (re-runnable with --config)
        metrics.jsonl    one JSON object per logged step and per evaluation
        summary.json     written once at the end, atomically
        hardware.json    the machine of rank 0
        checkpoints/     step-<N>/ complete or absent; `latest` names the newest

Every file is written to a temporary name and renamed into place, so a crash never
leaves a half-written file where a complete one is expected.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

from dlscale.checkpoint import newest_checkpoint
from dlscale.errors import UserError

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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    return json.dumps(_json_safe(value), allow_nan=False, **kwargs)


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, to_json(value, indent=2) + "\n")


def write_toml(path: Path, values: dict[str, Any]) -> None:
    atomic_write_text(path, tomli_w.dumps(values))


def _slug(text: str) -> str:
    name = Path(text.rstrip("/\\")).name if ("/" in text or "\\" in text) else text
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.") or "data"


def default_run_dir(model: str, data: str, root: Path = Path("runs")) -> Path:
    return unique_run_dir(f"{_slug(model)}-{_slug(data)}", root)


def unique_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """``root/<UTC-time>-<name>``, with -2, -3, ... when that folder exists (not created)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = root / f"{stamp}-{name}"
    candidate, n = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{n}")
        n += 1
    return candidate


def holds_run(path: Path) -> bool:
    """A directory holds a run when a previous run left its config or summary there."""
    return (path / "config.toml").exists() or (path / "summary.json").exists()


def check_new_run_dir(path: Path) -> None:
    """Refuse, before any work, a run directory that is a file or holds another run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"run directory {path} is a file; give --run-dir a directory path")
    if path.is_dir() and holds_run(path):
        raise UserError(
            f"run directory {path} already holds a run; continue it with --resume {path} "
            "or give another --run-dir"
        )


def create_run_dir(path: Path) -> Path:
    """Create a fresh run directory, refusing to reuse one that holds another run."""
    path = Path(path)
    check_new_run_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(
            f"cannot create run directory {path}: {reason}; give --run-dir a writable place"
        ) from None
    return path


def find_resumable(root: Path, model: str, data: str) -> Path | None:
    """The newest unfinished run under ``root`` for this model and data that has a checkpoint."""
    if not root.is_dir():
        return None
    suffix = f"-{_slug(model)}-{_slug(data)}"
    candidates = [
        d
        for d in root.iterdir()
        if d.is_dir()
        and re.sub(r"-\d+$", "", d.name).endswith(suffix)
        and not (d / "summary.json").exists()
        and (d / "checkpoints").is_dir()
    ]
    for run in sorted(candidates, key=lambda d: d.name, reverse=True):
        if newest_checkpoint(run) is not None:
            return run
    return None


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl, flushed so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines the interrupted run logged after its last checkpoint."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by the crash
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(to_json(record) + "\n")
            handle.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
