"""How batches come out of one data set (a ``Feed``): cut at once from memory, or decoded
per sample by worker processes that live across epochs.

- In-memory tensors and memory-mapped text are cut one batch per call, with no worker
  processes (``batches._indexer``): there is nothing to decode.
- Everything else (image files, a user's Dataset) goes through a torch DataLoader:
  ``workers`` processes decode ahead of the step (``PREFETCH_BATCHES`` each), stay alive
  between epochs and evaluations (persistent workers: no re-fork, no re-import), and
  hand over pinned memory when the model is on a GPU, so the copy to the device is
  asynchronous (the step copies with non_blocking=True).

A data set that wants the epoch (image files: the random crop is seeded by sample and
epoch) is indexed by (index, epoch) and reports an unreadable file as a third item rather
than raising in a worker, where the reason would come back wrapped in a traceback. The
feed then stops with the file's name, or, with --skip-bad-files, counts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from dlscale.data.batches import Batch, _indexer
from dlscale.hardware.inventory import usable_cores

PREFETCH_BATCHES = 4  # per worker: enough to ride out one slow file without holding much memory
MAX_AUTO_WORKERS = 16


def auto_workers(dataset: Dataset, local_processes: int = 1) -> int:
    """Loader processes for ``dataset`` by default: none for data cut from memory or a
    user's Dataset (whose reading dlscale cannot vouch for); for dlscale's file readers,
    the usable cores per local training process, minus the one that trains, capped."""
    if _indexer(dataset) is not None or not getattr(dataset, "keyed_by_epoch", False):
        return 0
    return max(0, min(MAX_AUTO_WORKERS, (usable_cores() or 1) // max(1, local_processes) - 1))


class Feed:
    """The batches of one data set, read the fastest way it allows."""

    def __init__(self, dataset: Dataset, workers: int = 0, pin_memory: bool = False):
        self.dataset = dataset
        self.workers = workers if _indexer(dataset) is None else 0
        self.pin_memory = pin_memory
        self.skipped: set[int] = set()  # indices of unreadable files passed over (--skip-bad-files)
        self._cut = _indexer(dataset)
        self._keyed = getattr(dataset, "keyed_by_epoch", False)
        self._sampler = _Keys()
        self._loader: DataLoader | None = None  # built at the first batch that needs one

    def read(self, indices: Iterable[torch.Tensor | slice], epoch: int | None = None) -> Iterator[Batch]:
        """One batch per entry of ``indices`` (index tensors or slices), in that order."""
        if self._cut is not None:
            for index in indices:
                yield self._cut(index)
            return
        self._sampler.keys = [self._keys(index, epoch) for index in indices]
        for batch in self._data_loader():
            if self._keyed:
                x, y, bad = batch
                self._check(x, y, bad)
                yield x, y
            else:
                yield batch

    def close(self) -> None:
        """Stop the worker processes now rather than when the feed is collected."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def _keys(self, index: torch.Tensor | slice, epoch: int | None) -> list:
        if isinstance(index, slice):
            numbers = list(range(*index.indices(len(self.dataset))))
        else:
            numbers = index.tolist()
        return [(i, epoch) for i in numbers] if self._keyed else numbers

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            extra = {"persistent_workers": True, "prefetch_factor": PREFETCH_BATCHES} if self.workers else {}
            self._loader = DataLoader(
                self.dataset, batch_sampler=self._sampler, num_workers=self.workers, pin_memory=self.pin_memory, **extra
            )
        return self._loader

    def _check(self, x: torch.Tensor, y: torch.Tensor, bad: torch.Tensor) -> None:
        """A batch whose sample could not be read stops the run naming the file, unless
        --skip-bad-files replaced it (then the file is counted)."""
        found = bad[bad >= 0].tolist()
        if not found:
            return
        failed = (y < 0).nonzero().flatten().tolist()  # no readable replacement, or no skipping
        if failed or not self.dataset.skip_bad_files:
            first = int(bad[failed[0]]) if failed else found[0]
            raise self.dataset.unreadable(first)
        self.skipped.update(found)


class _Keys:
    """The loader's batch sampler: the keys of the batches asked for now. A persistent
    loader reads it again at each ``iter``, so a new epoch only swaps the list."""

    keys: list[list] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)
