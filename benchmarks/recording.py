"""What every recorded benchmark result shares: the statistics quoted from interleaved
rounds, and where, when and at which commit it was measured."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentiles(values: list[float], suffix: str = "") -> dict[str, float | list[float]]:
    """Median, p10 and p90 (nearest rank) and the rounds themselves; ``suffix`` names the unit ("_s")."""
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {f"median{suffix}": statistics.median(values), f"p10{suffix}": pick(0.1), f"p90{suffix}": pick(0.9),
            f"rounds{suffix}": values}


def provenance(benchmark: str, machine_extra: str = "") -> dict[str, str]:
    """The result's head: its name, the command as run, the machine, the date and the commit."""
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, {platform.platform()})"
    return {
        "benchmark": benchmark,
        "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "machine": machine + (f", {machine_extra}" if machine_extra else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
    }


def publish(result: dict, out: str | None) -> None:
    """Print the result as JSON and, with ``out``, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
