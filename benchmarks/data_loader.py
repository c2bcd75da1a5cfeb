"""dlscale's image loader against the canonical hand-written one, and against the raw decode rate.

The folder: --files JPEGs of about 500x375 (smooth shapes and noise, quality 90, in 10
classes), made once under --folder. Both loaders give 224x224 RGB batches of 64 from the
same training files, with the same number of worker processes:

- canonical: a Dataset doing ``PIL.Image.open -> convert('RGB') -> resize((224, 224)) ->
  float tensor / 255`` (torchvision's ToTensor by hand), in a ``DataLoader``;
- dlscale: the training feed (``data.loader.Feed``) of the image folder with the standard
  augmentation at 224 (RandomResizedCrop + flip, uint8 pixels, JPEG draft mode);
- raw decode: one process decoding and resizing alone, no loader (each pipeline's own).

Rounds interleave every loader and worker count; the figures are medians with p10/p90
of the rounds, and the ratios of medians.

    python benchmarks/data_loader.py --rounds 5 --out benchmarks/results/data-loader-2026-11-30.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recording import percentiles, provenance, publish

import numpy as np
import torch
from PIL import Image, ImageDraw

from dlscale.data import DataSpec, load_data
from dlscale.data.batches import BatchOrder, train_batches
from dlscale.data.loader import Feed

REPO = Path(__file__).resolve().parents[1]
SIZE = 224
BATCH = 64


def make_folder(root: Path, files: int) -> None:
    """``files`` photo-like JPEGs of about 500x375 in 10 class folders (kept between runs)."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) >= files:
        return
    rng = np.random.default_rng(0)
    for i in range(files):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (500, 375) if i % 4 else (375, 500)
        image = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            draw.ellipse((x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        pixels = np.asarray(image, np.int16) + rng.integers(-12, 13, (h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


class Canonical(torch.utils.data.Dataset):
    """The loader people write first: open, convert, resize, to a float tensor."""

    def __init__(self, files: list[Path], labels: list[int]):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = Image.open(self.files[i]).convert("RGB").resize((SIZE, SIZE))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x, self.labels[i]


def canonical_epoch(dataset: Canonical, workers: int, epoch: int) -> int:
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(epoch))
    return sum(len(y) for _, y in loader)


def dlscale_epoch(feed: Feed, order: BatchOrder, epoch: int) -> int:
    return sum(len(y) for _, y in train_batches(feed, order, epoch))


def raw_canonical(dataset: Canonical, n: int) -> int:
    for i in range(n):
        Image.open(dataset.files[i]).convert("RGB").resize((SIZE, SIZE))
    return n


def raw_dlscale(dataset, n: int) -> int:
    for i in range(n):
        dataset.decode(i, np.random.default_rng((0, 0, i)))
    return n


def _rate(fn) -> float:
    start = time.perf_counter()
    samples = fn()
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="/tmp/dlscale-bench-photos")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--raw-samples", type=int, default=300)
    parser.add_argument("--out")
    args = parser.parse_args()
    folder = Path(args.folder)
    make_folder(folder, args.files)
    workers = [int(w) for w in args.workers.split(",")]

    splits = load_data(str(folder), DataSpec("image", (3, SIZE, SIZE), 10), augment="standard", image_size=SIZE)
    train = splits.train
    canonical = Canonical(train.files, train.labels)
    order = BatchOrder(len(train), BATCH, seed=0)
    feeds = {w: Feed(train, workers=w) for w in workers}
    dlscale_epoch(feeds[workers[0]], order, 0)  # page cache warm for both
    rates: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for w in workers:
            rates.setdefault(f"canonical/{w}", []).append(_rate(lambda: canonical_epoch(canonical, w, r)))
            rates.setdefault(f"dlscale/{w}", []).append(_rate(lambda: dlscale_epoch(feeds[w], order, r)))
        rates.setdefault("raw/canonical", []).append(_rate(lambda: raw_canonical(canonical, args.raw_samples)))
        rates.setdefault("raw/dlscale", []).append(_rate(lambda: raw_dlscale(train, args.raw_samples)))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()), file=sys.stderr)
    for feed in feeds.values():
        feed.close()

    stats = {k: percentiles(v) for k, v in rates.items()}
    ratios = {f"dlscale/canonical, {w} workers": stats[f"dlscale/{w}"]["median"] / stats[f"canonical/{w}"]["median"] for w in workers}
    ratios |= {f"dlscale loader/raw decode x workers, {w} workers": stats[f"dlscale/{w}"]["median"] / (w * stats["raw/dlscale"]["median"]) for w in workers}
    ratios["raw decode dlscale/canonical"] = stats["raw/dlscale"]["median"] / stats["raw/canonical"]["median"]
    result = {
        **provenance("data-loader", f"torch {torch.__version__}, Pillow {Image.__version__}"),
        "data": f"{args.files} JPEGs of 500x375 (a quarter 375x500), quality 90; {len(train)} training files per epoch, "
                f"batch {BATCH}, output 3x{SIZE}x{SIZE}",
        "samples_per_second": stats,
        "ratios_of_medians": ratios,
    }
    publish(result, args.out)

if __name__ == "__main__":
    main()
