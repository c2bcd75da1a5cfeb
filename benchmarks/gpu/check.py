"""Every CUDA path of dlscale measured in one go on a lent GPU machine (see README.md here),
or the same steps tiny on a CPU (``--smoke``) so that the script does not rot between loans.

Each step is one real command (`python -m dlscale ...` from this checkout, or a plain
reference loop). Its output goes to WORK/<step>.log and its --json object to
WORK/<step>.json; a step that fails or runs past its limit is recorded and the next one
runs. Steps that would start after --budget-s are skipped, so the whole run ends in time.
WORK/summary.json and summary.md hold every step's status and seconds, the figures, and on
a GPU the targets of issue 17 with measured against target.

    bash benchmarks/gpu/check.sh --smoke --out /tmp/smoke      # CPU, about a minute
    bash benchmarks/gpu/check.sh --out "$OUT"                   # the GPU machine, under 8 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
Argv = Callable[[dict[str, Any]], list[str]]  # from the results so far to the command line


@dataclass
class Step:
    name: str
    argv: Argv
    limit_s: float  # the step is killed after this long
    reads_json: bool = True  # its last stdout line is a --json object
    in_repo: bool = False  # runs in the checkout (pytest), not in the output folder


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | timeout | skipped
    seconds: float
    reason: str = ""
    result: dict[str, Any] | None = field(default=None, repr=False)


def dlscale(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlscale", *args]


def _batch_of(results: dict[str, Any], step: str, default: int) -> str:
    """The batch a `bench train` step chose (--batch-size auto), for the plain loop beside it."""
    rows = (results.get(step) or {}).get("results") or [{}]
    return str(rows[0].get("batch_size") or default)


def gpu_steps(out: Path) -> list[Step]:
    return [
        Step("hw", lambda r: dlscale("hw", "--json"), 120),
        Step("train-resnet50", lambda r: dlscale(
            "bench", "train", "--model", "resnet50", "--device", "cuda", "--precision", "bf16", "--channels-last",
            "--compile", "--batch-size", "auto", "--max-batch", "512", "--steps", "20", "--repeats", "3", "--json"), 240),
        Step("plain-resnet50", lambda r: [
            sys.executable, str(REPO / "benchmarks/gpu/plain_step.py"), "--model", "resnet50", "--device", "cuda",
            "--precision", "bf16", "--channels-last", "--compile", "--batch-size", _batch_of(r, "train-resnet50", 256)], 180),
        Step("train-gpt-small", lambda r: dlscale(
            "bench", "train", "--model", "gpt-small", "--device", "cuda", "--precision", "bf16", "--compile",
            "--batch-size", "16", "--steps", "20", "--repeats", "3", "--json"), 240),
        Step("plain-gpt-small", lambda r: [
            sys.executable, str(REPO / "benchmarks/gpu/plain_step.py"), "--model", "gpt-small", "--device", "cuda",
            "--precision", "bf16", "--compile", "--batch-size", _batch_of(r, "train-gpt-small", 16)], 180),
        Step("infer-resnet50", lambda r: dlscale(
            "bench", "infer", "--model", "resnet50", "--device", "cuda", "--precisions", "bf16",
            "--batch-sizes", "1,32,256", "--modes", "eager,compiled", "--json"), 240),
        Step("comm-nccl", lambda r: dlscale(
            "bench", "comm", "--nproc", "1", "--device", "cuda", "--sizes", "1M,64M,256M", "--ops", "all_reduce",
            "--json"), 120),
        Step("cuda-tests", lambda r: [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], 240,
             reads_json=False, in_repo=True),
        Step("train-resnet18", lambda r: dlscale(
            "train", "--model", "resnet18", "--data", "synthetic:3x32x32", "--synthetic-samples", "50000",
            "--batch-size", "512", "--max-steps", "3000", "--device", "cuda", "--run-dir", str(out / "train-resnet18"),
            "--json"), 200),
        Step("lab", lambda r: dlscale("lab", "--quick", "-o", str(out / "lab")), 300, reads_json=False),
    ]


def smoke_steps(out: Path) -> list[Step]:
    """The same commands, tiny, on the CPU: what rots (flags, JSON keys, the plain loop) shows here."""
    return [
        Step("hw", lambda r: dlscale("hw", "--json"), 120),
        Step("train-resnet50", lambda r: dlscale(
            "bench", "train", "--model", "cnn", "--device", "cpu", "--precision", "fp32", "--no-compile",
            "--batch-size", "16", "--steps", "3", "--warmup", "1", "--repeats", "1", "--json"), 120),
        Step("plain-resnet50", lambda r: [
            sys.executable, str(REPO / "benchmarks/gpu/plain_step.py"), "--model", "cnn", "--device", "cpu",
            "--batch-size", _batch_of(r, "train-resnet50", 16), "--steps", "3", "--warmup", "1", "--repeats", "1"], 120),
        Step("train-gpt-small", lambda r: dlscale(
            "bench", "train", "--model", "gpt-tiny", "--device", "cpu", "--precision", "fp32", "--no-compile",
            "--batch-size", "4", "--steps", "3", "--warmup", "1", "--repeats", "1", "--json"), 120),
        Step("plain-gpt-small", lambda r: [
            sys.executable, str(REPO / "benchmarks/gpu/plain_step.py"), "--model", "gpt-tiny", "--device", "cpu",
            "--batch-size", _batch_of(r, "train-gpt-small", 4), "--steps", "3", "--warmup", "1", "--repeats", "1"], 120),
        Step("infer-resnet50", lambda r: dlscale(
            "bench", "infer", "--model", "cnn", "--device", "cpu", "--precisions", "fp32", "--batch-sizes", "1,8",
            "--modes", "eager", "--json"), 120),
        Step("comm-nccl", lambda r: dlscale(
            "bench", "comm", "--nproc", "1", "--device", "cpu", "--sizes", "1K,64K", "--ops", "all_reduce",
            "--iters", "3", "--json"), 120),
        # on a CPU every CUDA test skips: this checks that the marker still selects them (where they live)
        Step("cuda-tests", lambda r: [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "--collect-only",
                                      "tests/hardware"], 120, reads_json=False, in_repo=True),
        Step("train-resnet18", lambda r: dlscale(
            "train", "--model", "cnn", "--data", "digits", "--max-steps", "5", "--batch-size", "64", "--device", "cpu",
            "--run-dir", str(out / "train-resnet18"), "--json"), 120),
        # the lab's own run is covered by tests/report (it takes over 30 s on 2 cores): here its command parses
        Step("lab", lambda r: dlscale("lab", "--help"), 60, reads_json=False),
    ]


def run_step(step: Step, results: dict[str, Any], out: Path, env: dict[str, str]) -> Outcome:
    argv = step.argv(results)
    started = time.monotonic()
    with open(out / f"{step.name}.log", "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        try:
            done = subprocess.run(argv, cwd=REPO if step.in_repo else out, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                  timeout=step.limit_s)
        except subprocess.TimeoutExpired as expired:
            log.write((expired.stdout or "") if isinstance(expired.stdout, str) else "")
            return Outcome(step.name, "timeout", time.monotonic() - started, f"over its {step.limit_s:g} s limit")
        log.write(done.stdout)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        return Outcome(step.name, "failed", seconds, f"exit code {done.returncode}; see {step.name}.log")
    result = None
    if step.reads_json:
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        try:
            result = json.loads(last)
        except json.JSONDecodeError:
            return Outcome(step.name, "failed", seconds, "its last output line is not a JSON object")
        (out / f"{step.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return Outcome(step.name, "ok", seconds, result=result)


def _first(result: dict[str, Any] | None) -> dict[str, Any]:
    return ((result or {}).get("results") or [{}])[0]


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers the targets are about, from the steps' JSON (None where a step failed)."""
    r50, gpt = _first(results.get("train-resnet50")), _first(results.get("train-gpt-small"))
    plain_r50, plain_gpt = results.get("plain-resnet50") or {}, results.get("plain-gpt-small") or {}
    infer = (results.get("infer-resnet50") or {}).get("results") or []
    at_256 = [row.get("predictions_per_second") or 0 for row in infer if row.get("batch_size") == 256]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    return {
        "resnet50_train_samples_per_second": r50.get("samples_per_second"),
        "resnet50_batch": r50.get("batch_size"),
        "resnet50_overhead_ratio": ratio(r50.get("samples_per_second"), plain_r50.get("samples_per_second")),
        "gpt_small_tokens_per_second": gpt.get("tokens_per_second"),
        "gpt_small_mfu": gpt.get("mfu"),
        "gpt_small_mfu_independent": independent_gpt_mfu(gpt),
        "gpt_small_overhead_ratio": ratio(gpt.get("samples_per_second"), plain_gpt.get("samples_per_second")),
        "resnet50_infer_predictions_per_second_at_256": max(at_256) if at_256 else None,
    }


def independent_gpt_flops_per_token(name: str) -> float | None:
    """Training FLOPs per token of zoo GPT ``name`` without dlscale's FLOP counter: 6 N for
    the weights (N parameters without the position table) plus 12 L d T for attention (PaLM,
    Chowdhery et al. 2022, appendix B); None for a model that is not a GPT."""
    sys.path.insert(0, str(REPO / "src"))
    from dlscale.models import build_model, model_info

    info = model_info(name)
    model = build_model(info.name, info.default_input_shape, info.default_num_classes)
    layers, width = getattr(model, "n_layer", None), getattr(model, "n_embd", None)
    if layers is None or width is None:
        return None
    n = sum(p.numel() for param_name, p in model.named_parameters() if "wpe" not in param_name)
    return 6 * n + 12 * layers * width * info.default_input_shape[0]


def independent_gpt_mfu(row: dict[str, Any]) -> float | None:
    """MFU of a `bench train` GPT row from ``independent_gpt_flops_per_token`` over the
    datasheet peak the row used."""
    peak, tokens = row.get("datasheet_peak_flops_per_second"), row.get("tokens_per_second")
    if not peak or not tokens or row.get("model") is None:
        return None
    per_token = independent_gpt_flops_per_token(row["model"])
    return per_token * tokens / peak if per_token else None


TARGETS = [  # (figure, at least, what it is, anchor)
    ("resnet50_train_samples_per_second", 3500, "resnet50 training, bf16, img/s", "DLE: 2,470 img/s AMP per A100"),
    ("gpt_small_tokens_per_second", 500_000, "gpt-small (124M), seq 1024, bf16, tokens/s", "llm.c: ~0.47M tokens/s per H100"),
    ("gpt_small_mfu", 0.40, "gpt-small MFU", ""),
    ("resnet50_infer_predictions_per_second_at_256", 25_000, "resnet50 inference, bf16, batch 256, predictions/s", ""),
    ("resnet50_overhead_ratio", 0.98, "dlscale / plain loop, resnet50", ""),
    ("gpt_small_overhead_ratio", 0.98, "dlscale / plain loop, gpt-small", ""),
]


def judge(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, target, what, anchor in TARGETS:
        value = numbers.get(key)
        rows.append({"figure": key, "what": what, "target": target, "measured": value,
                     "met": None if value is None else value >= target, "anchor": anchor})
    mine, theirs = numbers.get("gpt_small_mfu"), numbers.get("gpt_small_mfu_independent")
    rows.append({"figure": "gpt_small_mfu_agreement", "what": "MFU in summaries vs an independent computation",
                 "target": "within 5%", "measured": mine / theirs if mine and theirs else None,
                 "met": None if not (mine and theirs) else abs(mine / theirs - 1) <= 0.05, "anchor": "PaLM appendix B"})
    return rows


def write_summary(out: Path, mode: str, outcomes: list[Outcome], numbers: dict[str, Any],
                  targets: list[dict[str, Any]] | None) -> dict[str, Any]:
    summary = {
        "mode": mode, "python": sys.version.split()[0],
        "steps": [{"name": o.name, "status": o.status, "seconds": round(o.seconds, 1), "reason": o.reason} for o in outcomes],
        "figures": numbers, "targets": targets,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# GPU check ({mode})", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.1f} | {o.reason} |" for o in outcomes]
    lines += ["", "| figure | measured |", "|---|---|"]
    lines += [f"| {k} | {v if v is None else round(v, 4)} |" for k, v in numbers.items()]
    if targets:
        lines += ["", "| target | at least | measured | met |", "|---|---|---|---|"]
        lines += [f"| {t['what']} | {t['target']} | {t['measured'] if t['measured'] is None else round(t['measured'], 4)} "
                  f"| {t['met']} |" for t in targets]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same steps tiny, on the CPU")
    parser.add_argument("--out", type=Path, required=True, help="folder for every step's log and JSON and the summary")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="no step starts after this many seconds (default 450 on a GPU, 600 in smoke mode)")
    parser.add_argument("--only", default=None, help="comma-separated step names to run (default all)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = smoke_steps(out) if args.smoke else gpu_steps(out)
    if args.only:
        wanted = set(args.only.split(","))
        steps = [s for s in steps if s.name in wanted]
    budget = args.budget_s if args.budget_s is not None else (600.0 if args.smoke else 450.0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "DLSCALE_CACHE_DIR": os.environ.get("DLSCALE_CACHE_DIR") or str(out / "cache")}
    started = time.monotonic()
    results: dict[str, Any] = {}
    outcomes: list[Outcome] = []
    for step in steps:
        if time.monotonic() - started > budget:
            outcomes.append(Outcome(step.name, "skipped", 0.0, f"the {budget:g} s budget was spent"))
        else:
            outcomes.append(run_step(step, results, out, env))
            results[step.name] = outcomes[-1].result
        o = outcomes[-1]
        print(f"{o.name}: {o.status} in {o.seconds:.1f} s{' (' + o.reason + ')' if o.reason else ''}", flush=True)
    numbers = figures(results)
    summary = write_summary(out, "smoke" if args.smoke else "gpu", outcomes, numbers,
                            None if args.smoke else judge(numbers))
    print(f"summary: {out / 'summary.md'}", flush=True)
    return 0 if all(s["status"] == "ok" for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
