"""dlscale beside its peers: the same training run through plain PyTorch, dlscale (CLI,
fit, and its defaults), PyTorch Lightning, Hugging Face Accelerate and Keras 3 (torch
backend), interleaved in one run, repeated, and reported as medians with their spread.

    python3 benchmarks/peers/run.py                     # everything, ~15 min on 2 cores
    python3 benchmarks/peers/run.py --rounds 1 --workloads cnn-digits --frameworks plain,dlscale

The peers are not dlscale dependencies: this script installs them, pinned, into a
virtual environment of its own (benchmarks/peers/.venv) together with the same torch and
this checkout of dlscale, so every framework runs on one interpreter and one torch.
Each run is its own process (harness.py): start-up is measured from the moment this
script starts it to the end of its first optimizer step.

Results: benchmarks/results/peers-<date>.json, one record per (workload, framework).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from harness import FRAMEWORKS  # stdlib only
from workloads import WORKLOADS, corpus_file  # stdlib only (torch is imported inside its functions)

TORCH = "torch==2.13.0"
PEERS = ["lightning==2.6.6", "accelerate==1.15.0", "keras==3.15.1"]
VERSIONS_OF = ["torch", "dlscale", "lightning", "accelerate", "keras", "numpy"]
ORDER = ["plain", "dlscale", "dlscale-fit", "dlscale-defaults", "lightning", "accelerate", "keras"]
RUN_TIMEOUT_S = 600


# --------------------------------------------------------------------------- the environment


def ensure_venv(venv: Path) -> Path:
    """The peers' virtual environment, created and filled on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} (the peers are installed here, not into dlscale's environment)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wanted = [TORCH, *PEERS]
    installed = versions(python)
    def have(spec: str) -> bool:  # "2.13.0+cpu" is torch==2.13.0
        name, version = spec.split("==")
        return (installed.get(name) or "").split("+")[0] == version

    missing = [spec for spec in wanted if not have(spec)]
    if missing or installed.get("dlscale") is None:
        print(f"installing {' '.join(missing) or 'dlscale'} into {venv}", flush=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, TORCH], check=True)  # alone first: the CPU wheel, not a CUDA download
        subprocess.run([*pip, *PEERS, "-e", str(REPO)], check=True)
    return python


def versions(python: Path) -> dict[str, str | None]:
    code = (
        "import json, importlib.metadata as m\n"
        "def v(p):\n"
        "    try: return m.version(p)\n"
        "    except m.PackageNotFoundError: return None\n"
        f"print(json.dumps({{p: v(p) for p in {VERSIONS_OF!r}}}))"
    )
    if not python.exists():
        return {}
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "avx512_bf16": " avx512_bf16" in flags,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": None,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--", "src") else "")


# --------------------------------------------------------------------------- one run


def run_once(python: Path, framework: str, workload: str, text: Path, cache: Path, logs: Path) -> dict:
    """Start one framework's run in a fresh process and read what it measured."""
    with tempfile.TemporaryDirectory(prefix=f"peers-{framework}-") as workdir:
        out = Path(workdir) / "result.json"
        env = {**os.environ, "DLSCALE_CACHE_DIR": str(cache), "KERAS_BACKEND": "torch", "PYTHONUNBUFFERED": "1"}
        log = logs / f"{workload}-{framework}.log"
        launched_at = time.time()
        with log.open("a") as handle:
            handle.write(f"\n==== {datetime.datetime.now().isoformat(timespec='seconds')}\n")
            handle.flush()
            done = subprocess.run(
                [str(python), str(HERE / "harness.py"), framework, workload, "--text", str(text),
                 "--workdir", workdir, "--out", str(out), "--launched-at", repr(launched_at)],
                stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=RUN_TIMEOUT_S, cwd=workdir,
            )
        if done.returncode != 0 or not out.exists():
            tail = log.read_text().splitlines()[-5:]
            return {"framework": framework, "workload": workload, "error": f"exit {done.returncode}: " + " | ".join(tail)}
        return json.loads(out.read_text())


def measures(record: dict, workload_name: str) -> dict:
    """Samples/s over steady steps, start-up, and time to the target accuracy, from one run's clock."""
    workload = WORKLOADS[workload_name]
    ends = record["step_seconds"]  # end of each step, seconds after the first step's end
    per_epoch = record["steps_per_epoch"]
    intervals = [
        ends[i] - ends[i - 1]
        for i in range(1, len(ends))
        if i >= workload.warmup_steps and i % per_epoch != 0  # no warm-up; no step after an evaluation
    ]
    startup = record["first_step_unix"] - record["launched_at"]
    to_target = None
    if workload.target_accuracy is not None:
        for steps_done, value in record["evals"]:
            if value >= workload.target_accuracy:
                to_target = startup + ends[steps_done - 1]
                break
    return {
        "samples_per_second": workload.batch_size * len(intervals) / sum(intervals),
        "startup_s": startup,
        "time_to_target_s": to_target,
        "steps": len(ends),
    }


# --------------------------------------------------------------------------- the study


def spread(values: list[float]) -> float | None:
    """(max - min) / median: how far apart the repeats were."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else None


def summarize(runs: list[dict], frameworks: list[str], meta: dict) -> list[dict]:
    records = []
    for workload in dict.fromkeys(r["workload"] for r in runs):
        by_framework = {f: [r for r in runs if r["workload"] == workload and r["framework"] == f and "error" not in r]
                        for f in frameworks}
        plain = by_framework.get("plain") or []
        plain_rate = statistics.median(r["samples_per_second"] for r in plain) if plain else None
        plain_startup = statistics.median(r["startup_s"] for r in plain) if plain else None
        for framework in frameworks:
            done = by_framework[framework]
            errors = [r["error"] for r in runs if r["workload"] == workload and r["framework"] == framework and "error" in r]
            if not done:
                records.append({"workload": workload, "framework": framework.split("-")[0], "entry": framework,
                                "error": errors[0] if errors else "not run", **meta})
                continue
            rates = [r["samples_per_second"] for r in done]
            startups = [r["startup_s"] for r in done]
            targets = [r["time_to_target_s"] for r in done if r["time_to_target_s"] is not None]
            rate = statistics.median(rates)
            records.append({
                "workload": workload,
                "framework": framework.split("-")[0],  # plain, dlscale, lightning, accelerate, keras
                "entry": framework,
                "samples_per_second": rate,
                "ratio_to_plain": rate / plain_rate if plain_rate else None,
                "time_to_target_s": statistics.median(targets) if targets else None,
                "startup_s": statistics.median(startups),
                "startup_minus_plain_s": statistics.median(startups) - plain_startup if plain_startup else None,
                "samples_per_second_runs": rates,
                "samples_per_second_spread": spread(rates),
                "startup_s_runs": startups,
                "time_to_target_s_runs": [r["time_to_target_s"] for r in done],
                "target_accuracy": WORKLOADS[workload].target_accuracy,
                "test_accuracy_runs": [r.get("test_accuracy") for r in done],
                "final_loss_runs": [r.get("final_loss") for r in done],
                "precision": done[0].get("precision"),
                "channels_last": done[0].get("channels_last"),
                "steps": done[0]["steps"],
                "batch_size": WORKLOADS[workload].batch_size,
                "errors": errors,
                **meta,
            })
    return records


def table(records: list[dict]) -> str:
    lines = [
        "| workload | framework | samples/s (median) | spread | x plain | start-up s | time to target s | precision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['entry']} | failed: {r['error'][:60]} | | | | | |")
            continue
        spread_text = f"{100 * r['samples_per_second_spread']:.0f}%" if r["samples_per_second_spread"] is not None else "-"
        target = f"{r['time_to_target_s']:.2f}" if r["time_to_target_s"] is not None else "-"
        lines.append(
            f"| {r['workload']} | {r['entry']} | {r['samples_per_second']:,.0f} | {spread_text} | "
            f"{_number(r['ratio_to_plain'])} | {r['startup_s']:.2f} | {target} | {r['precision']}"
            f"{'+channels_last' if r.get('channels_last') else ''} |"
        )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def main() -> int:
    today = datetime.date.today().isoformat()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds of every framework (default per workload: cnn-digits 7, resnet18-32 3, gpt-tiny-text 5)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--frameworks", default=",".join(ORDER), help=f"comma-separated, of {', '.join(ORDER)}")
    parser.add_argument("--venv", type=Path, default=HERE / ".venv")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: benchmarks/results/peers-DATE.json for the full study; "
                             "a partial one goes to its temporary folder, never over a recorded study)")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    frameworks = [f for f in args.frameworks.split(",") if f]
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    for name in frameworks:
        if name not in FRAMEWORKS:
            parser.error(f"unknown framework {name!r}; choose from {', '.join(ORDER)}")
    if "plain" not in frameworks:
        frameworks.insert(0, "plain")  # every ratio is to plain
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")

    started = time.time()
    python = ensure_venv(args.venv)
    meta = {"machine": machine(), "commit": commit(), "date": today, "versions": versions(python)}
    print(f"machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores · commit {meta['commit']}", flush=True)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="dlscale-peers-"))
    full_study = args.rounds is None and workloads == list(WORKLOADS) and frameworks == ORDER
    out = args.out or (REPO / "benchmarks" / "results" / f"peers-{today}.json" if full_study else scratch / "peers.json")
    text = corpus_file(scratch / "stdlib-1MB.txt")
    cache, logs = scratch / "cache", scratch / "logs"
    logs.mkdir()
    plan = [(w, r, f) for w in workloads for r in range((args.rounds or WORKLOADS[w].rounds) + 1) for f in frameworks]
    runs = []
    for number, (workload, round_, framework) in enumerate(plan, 1):
        record = run_once(python, framework, workload, text, cache, logs)
        label = "warm-up" if round_ == 0 else f"round {round_}"
        if "error" not in record:
            record.update(measures(record, workload))
            expected = WORKLOADS[workload].max_steps or WORKLOADS[workload].epochs * record["steps_per_epoch"]
            if record["steps"] != expected:  # the same number of steps everywhere, or the comparison is void
                record = {"framework": framework, "workload": workload,
                          "error": f"ran {record['steps']} optimizer steps, not {expected}"}
        if "error" in record:
            print(f"[{number}/{len(plan)}] {workload} {framework} {label}: FAILED {record['error']}", flush=True)
        else:
            print(f"[{number}/{len(plan)}] {workload} {framework} {label}: {record['samples_per_second']:,.1f} samples/s, "
                  f"start-up {record['startup_s']:.2f} s" + (f", target at {record['time_to_target_s']:.2f} s"
                  if record.get("time_to_target_s") else ""), flush=True)
        elapsed = time.time() - started
        print(f"    elapsed {elapsed / 60:.1f} min, about {elapsed / number * (len(plan) - number) / 60:.1f} min left",
              flush=True)
        if round_ > 0:  # the warm-up round fills caches (files, imports, dlscale's measured peaks) and is dropped
            runs.append({**record, "round": round_})

    meta["wall_minutes"] = round((time.time() - started) / 60, 2)
    meta["command"] = " ".join(["python3", "benchmarks/peers/run.py", *sys.argv[1:]])
    records = summarize(runs, frameworks, meta)
    write_json(out, records)
    print(table(records))
    print(f"wrote {out} ({meta['wall_minutes']} min); logs in {logs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
