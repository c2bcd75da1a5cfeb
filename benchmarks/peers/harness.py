"""One training run of one framework on one workload, in a process of its own.

    python harness.py FRAMEWORK WORKLOAD --text FILE --workdir DIR --out RESULT.json --launched-at UNIX

run.py starts it and reads RESULT.json: the wall time of the first optimizer step (for
start-up: process start to first step), every step's time, the validation accuracy after
each epoch, and the final loss and test accuracy. Nothing here is imported before the
framework's own code runs except torch (which every framework imports) and the clock.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# framework name -> (module, function, how the framework is entered)
FRAMEWORKS = {
    "plain": ("with_plain", "run", "loop"),
    "dlscale": ("with_dlscale", "run_cli", "cli"),
    "dlscale-fit": ("with_dlscale", "run_fit", "fit"),
    "dlscale-defaults": ("with_dlscale", "run_defaults", "cli, defaults"),
    "lightning": ("with_lightning", "run", "Trainer.fit"),
    "accelerate": ("with_accelerate", "run", "Accelerator"),
    "keras": ("with_keras", "run", "Model.fit"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=sorted(FRAMEWORKS))
    parser.add_argument("workload")
    parser.add_argument("--text", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--launched-at", type=float, required=True)
    args = parser.parse_args()

    from workloads import WORKLOADS, StepClock, load_splits

    clock = StepClock()
    module_name, function, entry = FRAMEWORKS[args.framework]
    run = getattr(importlib.import_module(module_name), function)
    outcome = run(WORKLOADS[args.workload], args.text, clock, args.workdir)

    import torch

    workload = WORKLOADS[args.workload]
    train_samples = len(load_splits(workload, args.text).train)  # after the clock: costs no measured time
    record = {
        "framework": args.framework, "entry": entry, "workload": args.workload,
        "steps_per_epoch": workload.steps_per_epoch(train_samples),
        "launched_at": args.launched_at, "threads": torch.get_num_threads(), **clock.as_dict(), **outcome,
    }
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(args.out)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: its time is not part of any measure here


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
