"""Text generation with the KV cache against recomputing the whole context each token
(`dlscale.models.generate.generate` with a GPT, and with the same GPT behind a plain
module, which forces recomputation), greedy, on one fixed model and prompt.

The two run interleaved A B A B for --rounds rounds in one process (one warm-up each);
the figures are the median and p10/p90 of the wall time, and the ratio of medians.
The outputs are checked to be the same tokens.

    python benchmarks/generate.py --rounds 7 --out benchmarks/results/generate-2026-11-30.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from dlscale.models.generate import generate
from dlscale.models.gpt import GPT

REPO = Path(__file__).resolve().parents[1]


class Recompute(nn.Module):
    """The same GPT without its cache: generate() then recomputes the context each step."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt, self.block_size = gpt, gpt.block_size

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt(idx)


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"median_s": statistics.median(values), "p10_s": pick(0.1), "p90_s": pick(0.9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    shape = {"vocab_size": 256, "block_size": 512, "n_layer": 4, "n_head": 4, "n_embd": 256}
    gpt = GPT(**shape).eval()
    prompt = torch.randint(0, 256, (1, args.prompt_tokens))
    models = {"kv_cache": gpt, "recompute": Recompute(gpt)}
    outputs = {name: generate(model, prompt, args.new_tokens, temperature=0) for name, model in models.items()}  # warm-up
    same = torch.equal(outputs["kv_cache"], outputs["recompute"])
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            generate(model, prompt, args.new_tokens, temperature=0)
            times[name].append(time.perf_counter() - start)

    cached, full = _stats(times["kv_cache"]), _stats(times["recompute"])
    result = {
        "benchmark": "generate",
        "command": " ".join(["python", "benchmarks/generate.py", *sys.argv[1:]]),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.platform()}), torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "model": shape, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rounds": args.rounds,
        "same_tokens": same,
        "kv_cache": cached, "recompute": full,
        "speedup_of_medians": full["median_s"] / cached["median_s"],
        "new_tokens_per_second_kv_cache": args.new_tokens / cached["median_s"],
    }
    print(f"kv cache {cached['median_s']:.3f} s (p10 {cached['p10_s']:.3f}, p90 {cached['p90_s']:.3f})  "
          f"recompute {full['median_s']:.3f} s (p10 {full['p10_s']:.3f}, p90 {full['p90_s']:.3f})  "
          f"speedup {result['speedup_of_medians']:.2f}x  same tokens: {same}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
