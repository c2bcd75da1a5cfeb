"""``--logger tensorboard``: every metrics.jsonl record mirrored as TensorBoard scalars
under ``RUN/tb/`` (rank 0 only), so ``tensorboard --logdir runs/`` shows loss, learning
rate, samples/s, MFU and the validation metrics. metrics.jsonl stays the source of truth:
a record reaches TensorBoard only after its line is written.

    dlscale train --logger tensorboard
    tensorboard --logdir runs/
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from dlscale.errors import UserError

TB_DIR = "tb"
TRAIN_SCALARS = ("loss", "lr", "samples_per_second", "tokens_per_second", "mfu")


def require_tensorboard() -> None:
    """Said before training starts, not after the first interval."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("--logger tensorboard needs the tensorboard package: pip install tensorboard (or use --logger none)")


class TensorBoardLog:
    """A SummaryWriter fed with metrics records: train records under ``train/``, every
    numeric ``val_*`` key of a val record under ``val/``. ``purge_step`` drops what an
    interrupted session wrote after the checkpoint a resumed run restarts from, as
    metrics.jsonl drops its lines."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR), purge_step=purge_step)

    def __call__(self, record: dict[str, Any]) -> None:
        step, kind = record.get("step"), record.get("kind")
        if not isinstance(step, int):
            return
        if kind == "train":
            scalars = {f"train/{key}": record.get(key) for key in TRAIN_SCALARS}
        elif kind == "val":
            scalars = {f"val/{key}": value for key, value in record.items() if key.startswith("val_") or key == "train_loss"}
        else:
            return
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # a few dozen records a run: each visible at once, none lost to a crash

    def close(self) -> None:
        self.writer.close()
