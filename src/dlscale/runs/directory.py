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

import errno
import json
import math
import os
import stat
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

from dlscale.runs.checkpoint import newest_checkpoint
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


# --------------------------------------------------------------------------- one writer per run
#
# A run directory is claimed for the life of the run by an exclusive lock on its `.lock`
# file (flock: the operating system lets go when the process ends, however it ends, so
# no stale lock is ever left). Workers started by `dlscale train --nproc N` share their
# launcher's claim; under torchrun, SLURM or MPI, rank 0 claims it for the job. The nodes
# of one multi-node job share the claim with shared locks.

CLAIM_ENV = "DLSCALE_RUN_CLAIMED"  # the run directory a launcher claimed for its workers

_claims: dict[Path, int] = {}  # claimed run directory -> the open file descriptor holding the lock
# fresh runs this process claimed (a resumed run is never removed) -> the names its folder
# held before (never removed), or None when this process created the folder
_fresh: dict[Path, set[str] | None] = {}


def claim(path: Path, shared: bool = False) -> None:
    """Hold ``path`` for this run, or raise ``run X is in use by process N on host H``."""
    import fcntl
    import socket

    path = Path(path)
    key = path.resolve()
    if key in _claims or os.environ.get(CLAIM_ENV) == str(key):
        return
    fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        _refuse_in_use(path, fd)
    mark = f"{os.getpid()} {socket.gethostname()}\n".encode()
    os.pwrite(fd, mark, 0)
    os.ftruncate(fd, len(mark))
    _claims[key] = fd


def _open_lock(path: Path, flags: int) -> int:
    """The run's .lock, refused unless it is a plain file of its own: a symbolic link there
    would have the owner line written into whatever file it names, a FIFO would block."""
    lock = Path(path) / ".lock"
    try:
        fd = os.open(lock, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666 & ~_UMASK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{lock} is a symbolic link, which dlscale never makes; remove it, then run again") from None
        raise UserError(f"cannot use run directory {path}: {exc.strerror or exc}; give --run-dir a writable place") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{lock} is not a plain file (a FIFO, device or hard link); remove it, then run again")
    return fd


def _refuse_in_use(path: Path, fd: int) -> None:
    owner = os.pread(fd, 200, 0).decode(errors="replace").split()
    os.close(fd)
    pid, host = (owner + ["?", "?"])[:2]
    raise UserError(
        f"run {path} is in use by process {pid} on host {host}; wait for it to end, or give another --run-dir"
    )


def refuse_if_in_use(path: Path) -> None:
    """Say who holds ``path``, without creating anything in it."""
    import fcntl

    if not os.path.lexists(Path(path) / ".lock"):
        return
    fd = _open_lock(Path(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        _refuse_in_use(Path(path), fd)
    os.close(fd)


def release(path: Path) -> None:
    _fresh.pop(Path(path).resolve(), None)
    fd = _claims.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor lets go of the lock


def claim_new(path: Path, shared: bool = False) -> Path:
    """Create (if needed) and claim the directory of a fresh run, refusing one that holds a
    run: checked after the lock is held, so two runs given the same --run-dir cannot both
    pass the check."""
    path = Path(path)
    if path.is_dir() and holds_run(path):  # refused as it is: nothing is added to another run
        refuse_if_in_use(path)
    check_new_run_dir(path)
    found: set[str] | None = None
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        found = set(os.listdir(path))
    except OSError as exc:
        raise UserError(f"cannot create run directory {path}: {exc.strerror or exc}; give --run-dir a writable place") from None
    claim(path, shared=shared)
    try:
        check_new_run_dir(path)
    except UserError:
        release(path)
        raise
    _fresh[path.resolve()] = found
    return path


def claim_fresh(name: str, root: Path = Path("runs")) -> Path:
    """A new timestamped run directory, created atomically and claimed."""
    path = unique_run_dir(name, root, create=True)
    claim(path)
    _fresh[path.resolve()] = None
    return path


RUN_FILES = ("config.toml", "hardware.json", "metrics.jsonl", "summary.json")


def abandon(path: Path) -> bool:
    """After a failure: keep a run that can be resumed (it has a complete checkpoint) or
    that was resumed; remove what a fresh run wrote before its first checkpoint, so the
    corrected command can run again with the same --run-dir. Worker logs are kept to read.
    True when the run was removed."""
    path = Path(path)
    key = path.resolve()
    try:
        if key not in _fresh or newest_checkpoint(path) is not None or not path.is_dir():
            return False
        import shutil

        found = _fresh[key] or set()  # the user's own files in a --run-dir they gave stay
        for name in (*RUN_FILES, ".lock"):
            if name not in found:
                (path / name).unlink(missing_ok=True)
        if "checkpoints" not in found and not (path / "checkpoints").is_symlink():
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
        if _fresh[key] is None:  # this process made the folder: remove it when nothing else is left
            try:
                path.rmdir()  # (worker logs stay, and so does the folder then)
            except OSError:
                pass
        return True
    finally:
        release(path)


def abandon_claimed() -> None:
    """``abandon`` every run this process claimed (its run failed)."""
    for key in list(_claims):
        abandon(key)


def release_all() -> None:
    for key in list(_claims):
        release(key)


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


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl, flushed so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

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
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(to_json(record) + "\n")
            handle.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line that is JSON but not an object is no record."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [record for record in records if isinstance(record, dict)]
