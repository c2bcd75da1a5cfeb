"""Start-up time of this checkout against a commit before it: `python -c "import dlscale"`
and `dlscale train --help` (what a user waits for before anything happens).

Each command runs from each source tree (a git worktree of the baseline, run from its own
source with this environment's packages) interleaved A B A B for --rounds rounds; the
figures are the median and the p10/p90 of the wall time of each, and the ratio of medians.

    python benchmarks/startup.py --baseline ea30dcb --rounds 15 --out benchmarks/results/startup-2026-11-30.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import dlscale": ["-c", "import dlscale"],
    "dlscale train --help": ["-m", "dlscale", "train", "--help"],
}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def _seconds(source: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"median_s": statistics.median(values), "p10_s": pick(0.1), "p90_s": pick(0.9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        _git("worktree", "add", "--detach", str(base), args.baseline)
        try:
            trees = {"baseline": base, "this": REPO}
            times: dict[str, dict[str, list[float]]] = {name: {t: [] for t in trees} for name in COMMANDS}
            for name, command in COMMANDS.items():
                for tree in trees.values():  # one unmeasured run each: the page cache, .pyc files
                    _seconds(tree, command)
                for _ in range(args.rounds):
                    for label, tree in trees.items():
                        times[name][label].append(_seconds(tree, command))
        finally:
            _git("worktree", "remove", "--force", str(base))

    result = {
        "benchmark": "startup",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.platform()})",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"), "baseline": _git("rev-parse", args.baseline),
        "results": [],
    }
    for name, by_tree in times.items():
        base_stats, this_stats = _stats(by_tree["baseline"]), _stats(by_tree["this"])
        result["results"].append({
            "command": name, "rounds": args.rounds, "baseline": base_stats, "this": this_stats,
            "ratio_of_medians": this_stats["median_s"] / base_stats["median_s"],
        })
        print(f"{name:24s} baseline {base_stats['median_s']*1e3:6.0f} ms  this {this_stats['median_s']*1e3:6.0f} ms"
              f"  ratio {this_stats['median_s'] / base_stats['median_s']:.3f}", file=sys.stderr)
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
