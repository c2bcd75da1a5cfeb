"""JPEG decoders for the image pipeline, measured rather than guessed (issue 15).

On --files JPEGs of about 500x375 (made by benchmarks/data_loader.py), one process, the
bytes already in memory (the file system is not what is compared):

- decode only: Pillow (libjpeg-turbo, as wheels ship it) and simplejpeg (libjpeg-turbo
  through a thin binding), and simplejpeg with its fast DCT and upsampling;
- decode + resize to 224x224 (Pillow bilinear, as the pipeline resizes): the whole image
  (the canonical loader), and the evaluation crop (dlscale: the center 224/256, resized
  straight from the decoded image with a box, no copy made for the crop).

torchvision.io is not measured: torchvision does not work on these machines (DESIGN.md).
Rounds interleave every variant; medians and p10/p90 of the rounds, and ratios to
Pillow's. simplejpeg is needed only for this benchmark: `pip install simplejpeg`.

    python benchmarks/data_decoders.py --rounds 7 --out benchmarks/results/data-decoders-2026-11-30.json
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from recording import percentiles, provenance, publish

import numpy as np
import PIL
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZE = (224, 224)


def variants():
    import simplejpeg

    def pillow_decode(b):
        with Image.open(io.BytesIO(b)) as image:
            image.load()

    def simplejpeg_decode(b):
        simplejpeg.decode_jpeg(b, colorspace="RGB")

    def simplejpeg_fast_decode(b):
        simplejpeg.decode_jpeg(b, colorspace="RGB", fastdct=True, fastupsample=True)

    def pillow_whole_resize(b):
        with Image.open(io.BytesIO(b)) as image:
            np.asarray(image.convert("RGB").resize(SIZE, Image.Resampling.BILINEAR))

    def pillow_center_crop_resize(b):
        with Image.open(io.BytesIO(b)) as image:
            w, h = image.size
            s = min(w, h) * 224 / 256
            np.asarray(image.resize(SIZE, Image.Resampling.BILINEAR, box=((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)))

    def simplejpeg_whole_resize(b):
        np.asarray(Image.fromarray(simplejpeg.decode_jpeg(b, colorspace="RGB")).resize(SIZE, Image.Resampling.BILINEAR))

    return {f.__name__.replace("_", " "): f for f in (
        pillow_decode, simplejpeg_decode, simplejpeg_fast_decode,
        pillow_whole_resize, simplejpeg_whole_resize, pillow_center_crop_resize)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="/tmp/dlscale-bench-photos")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out")
    args = parser.parse_args()
    files = sorted(Path(args.folder).rglob("*.jpg"))[: args.files]
    if not files:
        raise SystemExit(f"no JPEGs under {args.folder}: run benchmarks/data_loader.py first, which makes them")
    blobs = [f.read_bytes() for f in files]
    fns = variants()
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(args.rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for b in blobs:
                fn(b)
            rates[name].append(len(blobs) / (time.perf_counter() - start))
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    stats = {name: percentiles(values) for name, values in rates.items()}
    med = {k: v["median"] for k, v in stats.items()}
    import simplejpeg

    result = {
        **provenance("data-decoders", f"Pillow {PIL.__version__}, simplejpeg {simplejpeg.__version__}"),
        "data": f"{len(blobs)} JPEGs of about 500x375 from {args.folder}, in memory, one process",
        "samples_per_second": stats,
        "ratios_of_medians": {
            "simplejpeg / pillow, decode only": med["simplejpeg decode"] / med["pillow decode"],
            "simplejpeg fast / pillow, decode only": med["simplejpeg fast decode"] / med["pillow decode"],
            "simplejpeg / pillow, decode + whole resize": med["simplejpeg whole resize"] / med["pillow whole resize"],
            "center crop / whole image, pillow decode + resize": med["pillow center crop resize"] / med["pillow whole resize"],
        },
    }
    publish(result, args.out)

if __name__ == "__main__":
    main()
