"""Serving peers: the same trained run (cnn on digits) behind dlscale serve, dlscale serve
with --max-batch-size 1, dlscale's app on uvicorn's pure-Python stack, a minimal FastAPI
endpoint and LitServe, loaded by the same client (``dlscale bench serve --url``, closed
loop), interleaved round by round; plus in-process ``dlscale bench infer`` on the same run.

    python3 benchmarks/serve/run.py                 # 3 rounds, about 8 min on 2 cores
    python3 benchmarks/serve/run.py --rounds 1 --servers dlscale,fastapi --duration 2

The peers are not dlscale dependencies: the first run creates benchmarks/serve/.venv
(ignored by git) with torch 2.13.0, FastAPI, LitServe (which brings uvloop and httptools)
and this checkout of dlscale; every server and the client run on that interpreter.
Results: benchmarks/results/serve-peers-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PINS = ["torch==2.13.0", "fastapi==0.163.2", "uvicorn==0.54.0", "litserve==0.2.19"]
VERSIONS_OF = ["torch", "dlscale", "fastapi", "uvicorn", "starlette", "litserve", "uvloop", "httptools", "httpx"]
ORDER = ["dlscale", "dlscale-batch1", "dlscale-h11", "fastapi", "litserve"]


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", PINS[0]], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PINS[1:]], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", str(REPO)], check=True)
    return python


def versions(python: Path) -> dict[str, str | None]:
    code = ("import importlib.metadata as m, json; v = {}\n"
            f"for n in {VERSIONS_OF!r}:\n"
            "    try: v[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: v[n] = None\n"
            "print(json.dumps(v))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(python: Path, name: str, run: Path, port: int, batch: int, delay: float) -> list[str]:
    if name == "dlscale":
        return [str(python), "-m", "dlscale", "serve", str(run), "--port", str(port),
                "--max-batch-size", str(batch), "--max-delay-ms", str(delay), "--device", "cpu"]
    if name == "dlscale-batch1":
        return [str(python), "-m", "dlscale", "serve", str(run), "--port", str(port), "--max-batch-size", "1", "--device", "cpu"]
    return [str(python), str(HERE / "servers.py"), name, str(run), str(port), str(batch), str(delay)]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    body = json.dumps({"inputs": [[[0.0] * 8] * 8]}).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server stopped:\n{log.read_text()[-2000:]}")
        try:
            request = urllib.request.Request(url + "/predict", data=body, headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready after {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    """The server and every process it started (LitServe's workers outlive their parent and
    poll their queues: left running, they would slow every later measurement)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    proc.wait(30)


def measure(python: Path, name: str, run: Path, args: argparse.Namespace, logs: Path, round_index: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = logs / f"{name}-{round_index}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(server_command(python, name, run, port, args.max_batch_size, args.max_delay_ms),
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                start_new_session=True)
    try:
        wait_ready(url, proc, log)
        bench = subprocess.run(
            [str(python), "-m", "dlscale", "bench", "serve", "--url", url, "--loops", "closed",
             "--concurrency", args.concurrency, "--duration", str(args.duration), "--warmup", str(args.warmup),
             "--input-shape", "1x8x8", "--run-dir", str(logs / f"bench-{name}-{round_index}"), "--json"],
            capture_output=True, text=True, timeout=600,
        )
        if bench.returncode != 0:
            raise SystemExit(f"bench serve against {name} failed:\n{bench.stderr[-2000:]}")
        return json.loads(bench.stdout.strip().splitlines()[-1])
    finally:
        stop(proc)


def infer_in_process(python: Path, run: Path, batch_sizes: str, logs: Path) -> list[dict]:
    bench = subprocess.run(
        [str(python), "-m", "dlscale", "bench", "infer", "--run", str(run), "--batch-sizes", batch_sizes,
         "--precisions", "fp32", "--device", "cpu", "--batches", "200", "--run-dir", str(logs / "bench-infer"), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    if bench.returncode != 0:
        raise SystemExit(f"bench infer failed:\n{bench.stderr[-2000:]}")
    return json.loads(bench.stdout.strip().splitlines()[-1])["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(ORDER))
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--out", help="result file (default benchmarks/results/serve-peers-<date>.json)")
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    python = ensure_venv(HERE / ".venv")
    logs = Path(tempfile.mkdtemp(prefix="dlscale-serve-peers-"))
    run = logs / "run"
    print(f"training cnn on digits into {run}", flush=True)
    subprocess.run([str(python), "-m", "dlscale", "train", "--model", "cnn", "--data", "digits", "--epochs", "10",
                    "--device", "cpu", "--run-dir", str(run)], check=True, capture_output=True)

    records: dict[str, list[dict]] = {name: [] for name in servers}
    for round_index in range(args.rounds):
        order = servers if round_index % 2 == 0 else servers[::-1]  # interleaved, alternating order
        for name in order:
            result = measure(python, name, run, args, logs, round_index)
            records[name].append(result)
            line = ", ".join(f"c={r['concurrency']}: {r['predictions_per_second']:.0f}/s p99 {r['latency_p99_ms']:.1f} ms"
                             + (f" batch {r['mean_batch_size']:.1f}" if r["mean_batch_size"] else "") for r in result["results"])
            print(f"round {round_index + 1} {name}: {line}", flush=True)
    infer = infer_in_process(python, run, "1,8,32", logs)

    summary = {}
    for name, results in records.items():
        per_c = {}
        for concurrency in (r["concurrency"] for r in results[0]["results"]):
            rows = [next(r for r in res["results"] if r["concurrency"] == concurrency) for res in results]
            pps = [r["predictions_per_second"] for r in rows]
            p99 = [r["latency_p99_ms"] for r in rows]
            batches = [r["mean_batch_size"] for r in rows if r["mean_batch_size"]]
            per_c[str(concurrency)] = {
                "predictions_per_second_median": statistics.median(pps), "predictions_per_second_min": min(pps),
                "predictions_per_second_max": max(pps), "p99_ms_median": statistics.median(p99),
                "p99_ms_min": min(p99), "p99_ms_max": max(p99),
                "p50_ms_median": statistics.median(r["latency_p50_ms"] for r in rows),
                "mean_batch_size_median": statistics.median(batches) if batches else None,
                "errors": sum(r["errors"] for r in rows),
            }
        summary[name] = per_c
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"serve-peers-{datetime.date.today()}.json"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "command": " ".join(["python3", "benchmarks/serve/run.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit, "machine": {"cpus": os.cpu_count(), "host": socket.gethostname()},
        "versions": versions(python), "settings": vars(args), "servers": servers, "summary": summary,
        "bench_infer": infer, "runs": records, "logs": str(logs),
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\n| server | " + " | ".join(f"c={c} pred/s (min-max) | c={c} p99 ms" for c in summary[servers[0]]) + " |")
    for name in servers:
        cells = []
        for c, s in summary[name].items():
            cells.append(f"{s['predictions_per_second_median']:.0f} ({s['predictions_per_second_min']:.0f}-{s['predictions_per_second_max']:.0f})")
            cells.append(f"{s['p99_ms_median']:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for row in infer:
        print(f"bench infer batch {row['batch_size']}: {row['predictions_per_second']:.0f} predictions/s")
    print(f"result: {out}\nlogs: {logs}")


if __name__ == "__main__":
    main()
