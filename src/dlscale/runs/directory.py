"""The run directory: its name, whether it holds a run, and finding one to resume.

    runs/<UTC-timestamp>-<model>-<data>/
        config.toml      the resolved configuration (re-runnable with --config)
        metrics.jsonl    one JSON object per logged step and per evaluation (runs.metrics_log)
        summary.json     written once at the end, atomically (runs.results)
        hardware.json    the machine of rank 0 (runs.results)
        model.json       what the model is and how raw inputs become its inputs (training.model_files)
        model.safetensors  the final weights, no pickle (runs.weights)
        tb/              TensorBoard scalars, with --logger tensorboard (runs.tensorboard)
        checkpoints/     step-<N>/ complete or absent; `latest` names the newest (runs.checkpoint)
        .lock            held while a process writes the run (runs.claim)

Every file is written to a temporary name and renamed into place (runs.files), so a
crash never leaves a half-written file where a complete one is expected.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from dlscale.errors import UserError
from dlscale.runs.checkpoint import newest_checkpoint

RUN_FILES = ("config.toml", "hardware.json", "metrics.jsonl", "summary.json", "model.json", "model.safetensors")


def _slug(text: str) -> str:
    name = Path(text.rstrip("/\\")).name if ("/" in text or "\\" in text) else text
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.") or "data"


def run_name(model: str, data: str) -> str:
    return f"{_slug(model)}-{_slug(data)}"


def default_run_dir(model: str, data: str, root: Path = Path("runs")) -> Path:
    return unique_run_dir(run_name(model, data), root)


def unique_run_dir(name: str, root: Path = Path("runs"), create: bool = False) -> Path:
    """``root/<UTC-time>-<name>``, with -2, -3, ... when that folder exists. With ``create``
    the folder is made here, by an atomic ``mkdir``, so runs started in the same second
    never pick the same one."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = root / f"{stamp}-{name}"
    candidate, n = base, 2
    while True:
        if not candidate.exists():
            if not create:
                return candidate
            try:
                candidate.mkdir(parents=True)
                return candidate
            except FileExistsError:
                pass  # another run took it between the look and the mkdir
            except OSError as exc:
                raise UserError(f"cannot create run directory {candidate}: {exc.strerror or exc}; give --run-dir a writable place") from None
        candidate = base.with_name(f"{base.name}-{n}")
        n += 1


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


def find_resumable(root: Path, model: str | None = None, data: str | None = None) -> Path | None:
    """The unfinished run under ``root`` with the most recent complete checkpoint, of any
    model and data unless ``model``/``data`` narrow it (read from each run's config.toml)."""
    import tomllib

    if not root.is_dir():
        return None
    found = []
    for run in root.iterdir():
        if not run.is_dir() or (run / "summary.json").exists() or not (run / "config.toml").is_file():
            continue
        newest = newest_checkpoint(run)
        if newest is None:
            continue
        try:
            saved = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # not a run this version can read: never resumed by guesswork
        if (model is not None and saved.get("model") != model) or (data is not None and saved.get("data") != data):
            continue
        found.append(((newest / "meta.json").stat().st_mtime, run.name, run))
    return max(found)[2] if found else None
