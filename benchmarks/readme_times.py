"""The times the README quotes, measured: each is the median of --rounds runs of the real
command in a fresh process and run directory, with the spread (min-max) and the load
average around each run (a shared machine shows in it).

- ``dlscale train`` at its defaults (the cnn on digits), start-up included, with its test accuracy;
- ``dlscale lab --quick`` (--lab-rounds, it takes minutes).

    python benchmarks/readme_times.py --rounds 5 --lab-rounds 1 --out benchmarks/results/readme-times-2026-11-30.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recording import provenance, publish

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, cache: Path) -> tuple[float, dict | None, float, float]:
    """(wall seconds, the --json object if any, load average before, after)."""
    env = {**os.environ, "DLSCALE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO / "src")}
    before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dlscale", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{args} failed: {done.stderr[-2000:]}")
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return wall, (json.loads(last) if last.startswith("{") else None), before, os.getloadavg()[0]


def _stats(values: list[float]) -> dict[str, float | list[float]]:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "rounds_s": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lab-rounds", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    loads: list[float] = []
    accuracy: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        work, warm = Path(tmp), Path(tmp) / "warm-cache"
        _run(["train", "--max-steps", "2", "--run-dir", "warmup"], work, warm)  # peaks and the cnn's probe cached
        for r in range(args.rounds):
            wall, summary, before, after = _run(["train", "--run-dir", f"d{r}", "--json"], work, warm)
            times.setdefault("dlscale train (defaults: cnn on digits)", []).append(wall)
            accuracy.append(summary["test_accuracy"])
            loads += [before, after]
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()), file=sys.stderr)
        for r in range(args.lab_rounds):
            wall, _, before, after = _run(["lab", "--quick", "-o", f"lab{r}"], work, warm)
            times.setdefault("dlscale lab --quick", []).append(wall)
            loads += [before, after]
    stats = {k: _stats(v) for k, v in times.items()}
    result = {
        **provenance("readme-times"),
        "seconds": stats,
        "default_train_test_accuracy": {"median": statistics.median(accuracy), "min": min(accuracy), "max": max(accuracy)},
        "load_average_around_runs": {"min": min(loads), "max": max(loads)},
    }
    publish(result, args.out)

if __name__ == "__main__":
    main()
