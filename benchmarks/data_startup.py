"""Start-up on an image folder of 100,000 files: dlscale's first start (no cached listing)
and second start (cached) against a bare ``os.scandir`` walk of the same folder.

The folder (made once under --folder): --classes class folders of tiny PNGs, --files in
all. "Start" is ``load_data`` on the folder in a fresh process, what ``dlscale train``
does before its model is built: list the folder, split it, read the first image's header
and the headers that decide grey or colour. The walk is the same fresh process listing
every class folder with ``os.scandir``. Rounds interleave walk, first start (cache
removed) and second start; the page cache is warm for all three (one unmeasured walk
first). Figures: median and p10/p90 of the rounds, and the ratios of medians.

    python benchmarks/data_startup.py --rounds 7 --out benchmarks/results/data-startup-2026-11-30.json
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recording import percentiles, provenance, publish

from PIL import Image

REPO = Path(__file__).resolve().parents[1]

WALK = """
import os, sys
names = 0
with os.scandir(sys.argv[1]) as top:
    for entry in top:
        if entry.is_dir():
            with os.scandir(entry.path) as files:
                names += sum(1 for f in files)
print(names)
"""
START = """
import sys
from dlscale.data import DataSpec, load_data
splits = load_data(sys.argv[1], DataSpec("image", (3, 32, 32), 10))
print(len(splits.train) + len(splits.val) + len(splits.test))
"""


def make_folder(root: Path, files: int, classes: int) -> None:
    if root.is_dir() and sum(1 for _ in root.iterdir()) == classes:
        return
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()
    for c in range(classes):
        folder = root / f"class{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files // classes):
            (folder / f"{i:05d}.png").write_bytes(png)


def _seconds(code: str, folder: Path, cache: Path) -> float:
    env = {**os.environ, "DLSCALE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO / "src")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(folder)], env=env, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def _in_process(code: str, folder: Path, cache: Path) -> float:
    """The same work timed inside the process, without the interpreter's and torch's import."""
    timed = f"import time, sys\nimport torch, dlscale.data\nt = time.perf_counter()\n{code}\nprint('T', time.perf_counter() - t)"
    env = {**os.environ, "DLSCALE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", timed, str(folder)], env=env, check=True, capture_output=True,
                         text=True, timeout=600).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("T ")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="/tmp/dlscale-bench-100k")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out")
    args = parser.parse_args()
    folder = Path(args.folder)
    make_folder(folder, args.files, args.classes)

    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        _seconds(WALK, folder, cache)  # unmeasured: the page cache and dentries warm
        for r in range(args.rounds):
            shutil.rmtree(cache, ignore_errors=True)
            times.setdefault("walk (os.scandir, whole process)", []).append(_seconds(WALK, folder, cache))
            times.setdefault("first start (whole process)", []).append(_seconds(START, folder, cache))
            times.setdefault("second start (whole process)", []).append(_seconds(START, folder, cache))
            shutil.rmtree(cache, ignore_errors=True)
            times.setdefault("walk (in process)", []).append(_in_process(WALK.replace("print(names)", ""), folder, cache))
            times.setdefault("first start (in process)", []).append(_in_process(START, folder, cache))
            times.setdefault("second start (in process)", []).append(_in_process(START, folder, cache))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)

    stats = {k: percentiles(v, "_s") for k, v in times.items()}
    med = {k: v["median_s"] for k, v in stats.items()}
    result = {
        **provenance("data-startup"),
        "data": f"{args.files} PNG files of 8x8 in {args.classes} class folders",
        "seconds": stats,
        "ratios_of_medians": {
            "first start / walk, whole process": med["first start (whole process)"] / med["walk (os.scandir, whole process)"],
            "first start / walk, in process": med["first start (in process)"] / med["walk (in process)"],
            "second start / first start, in process": med["second start (in process)"] / med["first start (in process)"],
        },
    }
    publish(result, args.out)

if __name__ == "__main__":
    main()
