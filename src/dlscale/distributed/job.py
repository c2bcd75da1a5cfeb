"""What a SLURM and an MPI launch share: the checks their counts and ports must pass, and
where the job's logs go (the command's own ``--run-dir``, else a fresh folder for the launch)."""

from __future__ import annotations

from pathlib import Path

from dlscale.errors import UserError


def check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")


def check_port(value: int | None, flag: str) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise UserError(f"{flag} must be a TCP port (1-65535), got {value}")


def run_dir_of(command: list[str]) -> str | None:
    """The ``--run-dir`` the command gives, if it gives one."""
    for i, word in enumerate(command):
        if word == "--run-dir" and i + 1 < len(command):
            return command[i + 1]
        if word.startswith("--run-dir="):
            return word.split("=", 1)[1]
    return None


def launch_dir(kind: str, root: Path = Path("runs")) -> Path:
    """A fresh ``runs/<UTC-time>-<kind>`` folder name (not created)."""
    from dlscale.runs.directory import unique_run_dir

    return unique_run_dir(kind, root)
