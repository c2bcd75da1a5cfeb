"""What every framework trains, and the clock that times them all the same way.
(torch is imported inside the functions: run.py reads the workloads without it.)

A workload fixes the model, the data, the global batch, the optimizer (AdamW, lr 1e-3,
weight decay 0.01 on matrices only, as dlscale does), a constant learning rate, fp32, and
the number of optimizer steps. Every framework gets the same tensors from dlscale's data
readers and the same module (same seed, same initial weights) from dlscale's model zoo;
what differs is only the loop around them, which is what this benchmark compares.

The clock is outside the frameworks: a global optimizer post-step hook from
torch.optim (Keras, whose optimizer is not torch's, ticks from a batch-end callback), so
no framework reports its own speed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

LR = 1e-3
WEIGHT_DECAY = 0.01
SEED = 0


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # a dlscale zoo name
    data: str  # a dlscale data name, or "{text}" for the benchmark's text file
    batch_size: int
    epochs: int  # passes over the training set (with max_steps, one pass)
    max_steps: int | None  # when set, the run stops after this many steps
    synthetic_samples: int | None
    evaluate: bool  # held-out accuracy after every epoch (needed for time to target)
    target_accuracy: float | None  # validation accuracy that ends the time-to-target clock
    warmup_steps: int  # steps left out of the samples/s (first allocations, oneDNN primitive caches)
    rounds: int  # timed rounds by default: more for the short runs, whose per-process noise is larger

    def data_path(self, text_file: str) -> str:
        return text_file if self.data == "{text}" else self.data

    def steps_per_epoch(self, train_samples: int) -> int:
        return train_samples // self.batch_size  # the last partial batch is dropped, as dlscale does

    def total_steps(self, train_samples: int) -> int:
        return self.max_steps or self.epochs * self.steps_per_epoch(train_samples)


WORKLOADS = {
    w.name: w
    for w in (
        # per-step overhead dominates: a 94k-parameter CNN on 8x8 images, ~5 ms a step
        Workload("cnn-digits", "cnn", "digits", 64, epochs=10, max_steps=None, synthetic_samples=None,
                 evaluate=True, target_accuracy=0.95, warmup_steps=5, rounds=7),
        # compute dominates on a CPU: ~1.1-1.6 s a step in fp32
        Workload("resnet18-32", "resnet18", "synthetic:3x32x32", 128, epochs=1, max_steps=8,
                 synthetic_samples=8 * 128, evaluate=False, target_accuracy=None, warmup_steps=2, rounds=3),
        # a small GPT on bytes of real text, ~15 ms a step
        Workload("gpt-tiny-text", "gpt-tiny", "{text}", 32, epochs=1, max_steps=150, synthetic_samples=None,
                 evaluate=False, target_accuracy=None, warmup_steps=5, rounds=5),
    )
}


def load_splits(workload: Workload, text_file: str):
    """The workload's train/val/test splits, read by dlscale's data readers."""
    from dlscale.data import DataSpec, load_data
    from dlscale.models import model_info

    info = model_info(workload.model)
    want = DataSpec(info.kind, info.default_input_shape, info.default_num_classes)
    return load_data(workload.data_path(text_file), want, seed=SEED, synthetic_samples=workload.synthetic_samples)


def load(workload: Workload, text_file: str):
    """The workload's data splits and its freshly initialised model (same seed everywhere)."""
    import torch
    from dlscale.models import build_model

    splits = load_splits(workload, text_file)
    torch.manual_seed(SEED)
    model = build_model(workload.model, splits.input_shape, splits.num_classes)
    return splits, model


def param_groups(model) -> list[dict]:
    """Weight decay on matrices and kernels only, never on biases and norm weights (as dlscale)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def loss_of(logits, y):
    """Cross-entropy for classifiers (B, C) and language models (B, T, V) alike."""
    import torch

    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def accuracy(model, dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on a TensorDataset, in eval mode."""
    import torch

    was_training = model.training
    model.eval()
    x, y = dataset.tensors
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(x[start:start + batch_size])
            correct += int((logits.argmax(-1) == y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / y.numel()


class StepClock:
    """Wall time after every optimizer step, read the same way for every framework."""

    def __init__(self) -> None:
        self.first_step_unix: float | None = None
        self.step_perf: list[float] = []
        self.evals: list[tuple[int, float]] = []  # (steps done, validation accuracy)
        self._handle = None

    def tick(self, *_: object) -> None:
        now = time.perf_counter()
        if self.first_step_unix is None:
            self.first_step_unix = time.time()
        self.step_perf.append(now)

    def hook_torch_optimizers(self) -> None:
        """Tick after every torch.optim step in this process, whoever calls it."""
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self.tick)

    def record_eval(self, accuracy_value: float) -> None:
        if not math.isfinite(accuracy_value):
            accuracy_value = float("nan")
        self.evals.append((len(self.step_perf), float(accuracy_value)))

    def as_dict(self) -> dict:
        start = self.step_perf[0] if self.step_perf else 0.0
        return {
            "first_step_unix": self.first_step_unix,
            "step_seconds": [t - start for t in self.step_perf],  # since the first step's end
            "evals": self.evals,
        }


def corpus_file(path: Path, size_bytes: int = 1_000_000) -> Path:
    """A text file of real prose-and-code bytes with no download: this Python's own
    standard-library sources, in name order, cut at ``size_bytes``. Deterministic for a
    given Python version."""
    import sysconfig

    if path.exists() and path.stat().st_size == size_bytes:
        return path
    chunks, total = [], 0
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = source.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= size_bytes:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(chunks)[:size_bytes])
    tmp.replace(path)
    return path
