"""Which samples go into each step: deterministic, resumable mid-epoch, shardable by rank.

Epoch ``e`` visits a permutation seeded by (seed, e), cut into global batches; the last
incomplete batch is dropped so every step sees the full global batch (reshuffling
means every sample is still seen across epochs). Worker ``rank`` of ``world`` takes
its contiguous slice of each global batch, so N workers together see exactly the
samples one worker would: the same global batch, the same gradient.

Because step k of epoch e is a pure function of (seed, e, k), resuming mid-epoch is
just starting the iteration at k.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from dlscale.data.preprocess import pixels_to_input

if TYPE_CHECKING:
    from dlscale.data.loader import Feed

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BatchOrder:
    num_samples: int
    global_batch: int
    seed: int
    rank: int = 0
    world: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def local_indices(self, permutation: torch.Tensor, step: int) -> torch.Tensor:
        start = step * self.global_batch + self.rank * self.local_batch
        return permutation[start : start + self.local_batch]


def _indexer(dataset: Dataset) -> Callable[[torch.Tensor | slice], Batch] | None:
    """How a whole batch is cut at once, by an index tensor or a slice: in-memory tensors are
    indexed directly, and a dataset with ``gather`` (memory-mapped text windows) cuts its own;
    one call per batch, no per-sample Python, no worker processes. None: index per sample."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        return lambda index: (x[index], y[index])
    return getattr(dataset, "gather", None)


def head(dataset: Dataset | None, n: int | None) -> Dataset | None:
    """The first ``n`` samples of ``dataset`` (all of it for None), keeping its fast path: a
    TensorDataset stays one, a dataset with ``head`` (memory-mapped text) cuts itself."""
    if dataset is None or n is None or n >= len(dataset):
        return dataset
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[:n] for t in dataset.tensors))
    if hasattr(dataset, "head"):
        return dataset.head(n)
    return Subset(dataset, range(n))


def first_samples(dataset: Dataset, n: int) -> Batch:
    """The first ``n`` samples as one batch of model inputs (uint8 pixels scaled): real
    inputs for counting FLOPs, for timing settings, and to keep an idle worker's
    collectives in step."""
    cut = _indexer(dataset)
    if cut is not None:
        return cut(slice(0, min(n, len(dataset))))
    pairs = [dataset[i] for i in range(min(n, len(dataset)))]
    x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
    if getattr(dataset, "pixels", False):
        x = pixels_to_input(x)
    return x, torch.stack([torch.as_tensor(p[1]) for p in pairs])


def train_batches(feed: Feed, order: BatchOrder, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    """This rank's batches of ``epoch``, from step ``start_step`` to the end of the epoch."""
    permutation = order.permutation(epoch)
    steps = range(start_step, order.steps_per_epoch)
    yield from feed.read((order.local_indices(permutation, step) for step in steps), epoch)


def eval_batches(feed: Feed, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
    """This rank's contiguous share of the feed's data set: every sample counted exactly once, no padding."""
    n = len(feed.dataset)
    lo, hi = n * rank // world, n * (rank + 1) // world
    yield from feed.read(slice(start, min(start + batch_size, hi)) for start in range(lo, hi, batch_size))
