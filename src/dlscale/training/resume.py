"""Which run this is: a fresh run directory, or an unfinished run to continue, claimed so
that no other process writes it at the same time. A resumed run keeps its experiment:
its config.toml, with only flags that say how to run taken from the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dlscale.errors import UserError
from dlscale.runs import checkpoint
from dlscale.runs import directory as runs
from dlscale.runs.claim import claim, claim_fresh, claim_new
from dlscale.training import config as config_mod
from dlscale.training.config import TrainConfig
from dlscale.training.requeue import restart_count

# Flags that say how to run, not what: a resumed run may take new values for these.
RESUMABLE_WITH = (
    *config_mod.INVOCATION_KEYS, "nproc", "nnodes", "timeout", "workers", "log_every", "checkpoint_every",
    "keep_checkpoints", "device", "logger",
)


def locate_run(config: TrainConfig, overrides: dict[str, Any]) -> tuple[TrainConfig, Path, Path | None]:
    """Where this run writes, and the checkpoint it resumes from (None for a fresh start).

    Resuming reads the old run's config.toml and applies only what the user set
    explicitly on top, so ``dlscale train --resume DIR`` needs no other flag.
    """
    candidate: Path | None = None
    if config.resume == "auto":
        if config.run_dir and runs.holds_run(Path(config.run_dir)):
            candidate = Path(config.run_dir)
        elif not config.run_dir:
            # the newest unfinished run, whatever its model, unless --model/--data narrow it
            candidate = runs.find_resumable(Path("runs"), overrides.get("model"), overrides.get("data"))
            print(
                f"dlscale: --resume auto: continuing {candidate}, the newest unfinished run under runs/"
                if candidate else
                "dlscale: --resume auto: no unfinished run with a checkpoint under runs/; starting a new run",
                file=sys.stderr, flush=True,
            )
    elif config.resume is None and config.run_dir and (restart_count() or 0) > 0 and runs.holds_run(Path(config.run_dir)):
        # a SLURM job that requeued itself runs its script again: it continues its run
        candidate = Path(config.run_dir)
        print(f"dlscale: SLURM requeued this job ({restart_count()} time(s)): continuing {candidate}",
              file=sys.stderr, flush=True)
    elif config.resume is not None:
        candidate = Path(config.resume)
        if not candidate.is_dir() or not (candidate / "config.toml").is_file():
            raise UserError(
                f"--resume {config.resume}: no run there (no config.toml); give a run directory "
                "such as runs/<timestamp>-<model>-<data>, or --resume auto"
            )
    shared = config.nnodes > 1  # the launchers of one multi-node job share the claim
    if candidate is None:
        if config.run_dir:
            run_dir = claim_new(Path(config.run_dir), shared=shared)
        else:
            run_dir = claim_fresh(runs.run_name(config.model, config.data))
        return config.replace(resume=None), run_dir, None
    _refuse_finished(candidate)
    claim(candidate, shared=shared)
    _refuse_finished(candidate)  # checked again under the claim: a run may have just finished
    checkpoint.remove_stale(candidate)  # a save killed half-way left its temporary folder
    saved = config_mod.read_toml(candidate / "config.toml")
    _refuse_changes(candidate, config_mod.build(saved), overrides)
    resumed = config_mod.build(saved, **{**overrides, "run_dir": str(candidate), "resume": str(candidate)})
    return resumed, candidate, checkpoint.newest_checkpoint(candidate)


def _refuse_changes(run_dir: Path, saved: TrainConfig, overrides: dict[str, Any]) -> None:
    """A resumed run keeps its experiment: a flag that would change it is refused, naming
    the flag, instead of being written into config.toml and silently not applied."""
    for key, value in overrides.items():
        if key in RESUMABLE_WITH or getattr(saved, key, value) == value:
            continue
        flag = "--" + key.replace("_", "-")
        raise UserError(
            f"{flag} {value} would change run {run_dir}, which has {key} = {getattr(saved, key)!r}; a resumed run "
            f"keeps its configuration: drop {flag}, or start a new run with --config {run_dir / 'config.toml'} {flag} {value}"
        )


def _refuse_finished(run_dir: Path) -> None:
    if (run_dir / "summary.json").exists():
        raise UserError(
            f"run {run_dir} has already finished (its summary.json is there) and is kept as it is; "
            "start a new run with another --run-dir"
        )
