"""Synthetic data shaped like the model wants: learnable, deterministic, any size.

Sample i of a split is a pure function of (seed, split, i), so the data is the
same whether it is built in memory or generated lazily, and on every worker.

- Images: each class has a prototype (a colour per channel plus a coarse 4x4
  pattern stretched over the image); a sample is its class prototype plus
  Gaussian noise. A model can learn the classes, so the loss falls.
- Tokens: the vocabulary is put in a seeded random cyclic order and a sequence
  walks along that cycle, jumping to a random token about once every 16 steps.
  The next token is almost always predictable from the current one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from dlscale.data.guards import require_memory
from dlscale.data.splits import DataSpec, Splits
from dlscale.errors import UserError

DEFAULT_SAMPLES = 2048
IN_MEMORY_LIMIT_BYTES = 256 * 2**20  # larger train sets are generated sample by sample
ORDER_BYTES_PER_SAMPLE = 8  # torch.randperm's int64 index per training sample
JUMP_PROBABILITY = 1 / 16
SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}
PROTOTYPE_KEY = 3  # random stream for the class prototypes / token cycle, apart from the samples


def load_synthetic(spec_text: str, want: DataSpec, *, seed: int = 0, samples: int | None = None) -> Splits:
    """Synthetic data for "synthetic" (shaped by want) or "synthetic:CxHxW" / "synthetic:SEQ_LEN"."""
    kind, shape = parse_shape(spec_text, want)
    n_train = DEFAULT_SAMPLES if samples is None else samples
    if n_train < 1:
        raise UserError(f"synthetic data needs at least 1 sample, got {n_train}; give a positive number of samples")
    n_eval = max(1, n_train // 8)
    sample_bytes = 4 * math.prod(shape) if kind == "image" else 2 * 8 * shape[0]  # float32 pixels; int64 x and y
    require_memory(sample_bytes, f"one synthetic sample of shape {'x'.join(map(str, shape))}", "give a smaller shape")
    # Even lazy data costs memory per sample: the training order, an int64 per sample, shuffled each epoch.
    require_memory(
        n_train * ORDER_BYTES_PER_SAMPLE,
        f"--synthetic-samples {n_train} ({ORDER_BYTES_PER_SAMPLE} bytes per sample to shuffle the training set)",
        "give fewer samples (the default is 2048; a few million are plenty to measure throughput)",
    )
    if kind == "image":
        recipe = ImageRecipe(seed, shape, want.num_classes)
    else:
        recipe = TokenRecipe(seed, shape[0], want.num_classes)
    lazy = n_train * sample_bytes >= IN_MEMORY_LIMIT_BYTES
    make = SyntheticSamples if lazy else in_memory
    return Splits(
        name="synthetic",
        kind=kind,
        input_shape=shape,
        num_classes=want.num_classes,
        train=make(recipe, seed, "train", n_train),
        val=make(recipe, seed, "val", n_eval),
        test=make(recipe, seed, "test", n_eval),
    )


def parse_shape(spec_text: str, want: DataSpec) -> tuple[str, tuple[int, ...]]:
    """Kind and input shape: from want for "synthetic", from the override after the colon otherwise."""
    if spec_text == "synthetic":
        return want.kind, tuple(want.input_shape)
    override = spec_text.partition(":")[2]
    try:
        dims = tuple(int(part) for part in override.split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in (1, 3) or min(dims) < 1:
        raise UserError(
            f"cannot read the shape in {spec_text!r}; write synthetic:CxHxW for images "
            "(e.g. synthetic:3x32x32) or synthetic:SEQ_LEN for tokens (e.g. synthetic:128)"
        )
    return ("image" if len(dims) == 3 else "tokens"), dims


class ImageRecipe:
    """Class prototypes, and how to draw one noisy labelled image from a random generator."""

    def __init__(self, seed: int, shape: tuple[int, ...], num_classes: int):
        rng = np.random.default_rng([seed, PROTOTYPE_KEY])
        self.shape = shape
        self.num_classes = num_classes
        if len(shape) == 3:
            # Only the small (colour, coarse grid) pair is stored, so 1000 classes of 224x224 stay cheap.
            channels, height, width = shape
            self.colour = rng.normal(0, 0.7, size=(num_classes, channels, 1, 1)).astype(np.float32)
            self.grid = rng.normal(0, 0.7, size=(num_classes, channels, 4, 4)).astype(np.float32)
            self.rows = np.arange(height) * 4 // height  # which grid cell each pixel falls in
            self.cols = np.arange(width) * 4 // width
        else:  # tabular (F,) or any other shape: one random vector per class
            self.prototypes = rng.normal(0, 1, size=(num_classes, *shape)).astype(np.float32)

    def prototype(self, label: int) -> np.ndarray:
        if len(self.shape) == 3:
            return self.colour[label] + self.grid[label][:, self.rows][:, :, self.cols]
        return self.prototypes[label]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        label = rng.integers(self.num_classes)
        x = self.prototype(label) + rng.standard_normal(self.shape, dtype=np.float32)
        return x, np.int64(label)


class TokenRecipe:
    """A seeded cyclic order of the vocabulary, and how to draw one sequence walking along it."""

    def __init__(self, seed: int, seq_len: int, vocab_size: int):
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.cycle = np.random.default_rng([seed, PROTOTYPE_KEY]).permutation(vocab_size)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = self.seq_len + 1
        jumps = rng.random(n) < JUMP_PROBABILITY
        jumps[0] = True
        targets = rng.integers(self.vocab_size, size=n)  # where on the cycle each jump lands
        position = np.arange(n)
        last_jump = np.maximum.accumulate(np.where(jumps, position, 0))
        on_cycle = (targets[last_jump] + position - last_jump) % self.vocab_size
        tokens = self.cycle[on_cycle].astype(np.int64)
        return tokens[:-1], tokens[1:]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_KEYS[split], index])


def in_memory(recipe, seed: int, split: str, n: int) -> TensorDataset:
    """All n samples of a split, generated now."""
    xs, ys = zip(*(recipe.sample(_rng(seed, split, i)) for i in range(n)))
    return TensorDataset(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)))


class SyntheticSamples(Dataset):
    """A split too big for memory: sample i is generated when asked for, identical to the in-memory one."""

    def __init__(self, recipe, seed: int, split: str, n: int):
        self.recipe = recipe
        self.seed = seed
        self.split = split
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(f"sample {index} out of range for {self.n} samples")
        x, y = self.recipe.sample(_rng(self.seed, self.split, int(index)))
        return torch.from_numpy(x), torch.from_numpy(np.asarray(y))
