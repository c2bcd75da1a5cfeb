"""torch.compile on a CPU, measured: the README says compile stays off on CPUs. This times
`dlscale bench train` of the cnn with and without --compile, alternating in fresh processes
(interleaved rounds), and records the median step time and the warm-up (compile) time of each.

    python benchmarks/compile_cpu.py --rounds 3 --out benchmarks/results/compile-cpu-2026-12-01.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from recording import percentiles, provenance, publish

REPO = Path(__file__).resolve().parents[1]


def _bench(model: str, compile_flag: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "dlscale", "bench", "train", "--model", model, "--device", "cpu",
                           compile_flag, "--precision", "fp32", "--steps", "20", "--repeats", "3", "--json"],
                          env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{compile_flag} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["results"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    rounds: dict[str, list[dict]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        for name, flag in (("eager", "--no-compile"), ("compiled", "--compile")):
            row = _bench(args.model, flag)
            rounds[name].append({"step_time_s": row["step_time_median_s"], "warmup_s": row["warmup_s"],
                                 "load_average_before": row.get("load_average_before")})
            print(f"{name}: step {row['step_time_median_s'] * 1e3:.2f} ms, warm-up {row['warmup_s']:.1f} s",
                  file=sys.stderr, flush=True)
    result = {**provenance("compile-cpu"), "model": args.model}
    for name, rows in rounds.items():
        result[name] = {"step_time": percentiles([r["step_time_s"] for r in rows], "_s"),
                        "warmup": percentiles([r["warmup_s"] for r in rows], "_s")}
    result["compiled_over_eager_step"] = result["compiled"]["step_time"]["median_s"] / result["eager"]["step_time"]["median_s"]
    publish(result, args.out)


if __name__ == "__main__":
    main()
