"""What the per-step stop agreement costs a multi-worker run.

Since issue 10 every worker of a several-process run adds its stop request (a signal) to
a one-element all-reduce on a Gloo group after each step, started without waiting and
read one step later. This script times the same `dlscale train --nproc 2` runs on this
checkout and on a baseline commit from before the change (a git worktree, run from its
own source with this environment's packages), interleaved A B A B, and reports the
median samples/s of each, their spread and the ratio.

    python benchmarks/stop_agreement.py --baseline fb21ec9 --rounds 5

The figures go to stdout as one JSON object (last line) and, with --out, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "mlp-synthetic16": ["--model", "mlp", "--data", "synthetic:3x16x16", "--max-steps", "600"],
    "cnn-digits": ["--model", "cnn", "--data", "digits", "--max-steps", "300", "--no-channels-last"],
}
COMMON = ["--nproc", "2", "--precision", "fp32", "--seed", "0", "--json"]


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _run(source: Path, args: list[str], work: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source / "src"), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "dlscale", "train", *args, *COMMON], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(f"error: {source.name} failed: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["samples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="a commit before the stop agreement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        _git("worktree", "add", "--detach", str(base), args.baseline)
        try:
            results = {}
            for name, workload in WORKLOADS.items():
                rates: dict[str, list[float]] = {"baseline": [], "head": []}
                _run(REPO, workload, Path(tmp))  # warm-up: the measured peaks and settings caches
                for round_ in range(args.rounds):
                    for label, source in (("baseline", base), ("head", REPO)):
                        rates[label].append(_run(source, workload, Path(tmp)))
                    print(f"{name} round {round_ + 1}/{args.rounds}: baseline {rates['baseline'][-1]:.0f}, "
                          f"head {rates['head'][-1]:.0f} samples/s", file=sys.stderr, flush=True)
                medians = {k: statistics.median(v) for k, v in rates.items()}
                results[name] = {
                    "samples_per_second": rates,
                    "median": medians,
                    "spread": {k: max(v) - min(v) for k, v in rates.items()},
                    "head_over_baseline": medians["head"] / medians["baseline"],
                }
        finally:
            _git("worktree", "remove", "--force", str(base))
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "baseline": args.baseline,
        "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}",
        "workers": 2,
        "results": results,
    }
    text = json.dumps(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
