"""dlscale three ways: the CLI (`dlscale train`, run through its real entry point in
this process), the Python API (`dlscale.fit`), and the CLI with nothing but the workload
named (`defaults`: dlscale picks precision, memory format, compile and schedule itself).
The first two are given exactly the settings the other frameworks use."""

from __future__ import annotations

import json
from pathlib import Path

from workloads import LR, SEED, WEIGHT_DECAY, StepClock, Workload


def _workload_flags(workload: Workload, text_file: str) -> dict:
    options = {"model": workload.model, "data": workload.data_path(text_file), "batch_size": workload.batch_size}
    if workload.max_steps:
        options["max_steps"] = workload.max_steps
    else:
        options["epochs"] = workload.epochs
    if workload.synthetic_samples:
        options["synthetic_samples"] = workload.synthetic_samples
    return options


def _matched_options(workload: Workload, text_file: str) -> dict:
    """The same optimizer, schedule, precision and loop as the plain PyTorch reference."""
    return {
        **_workload_flags(workload, text_file),
        "lr": LR, "weight_decay": WEIGHT_DECAY, "schedule": "constant", "warmup_steps": 0,
        "precision": "fp32", "compile": False, "channels_last": False, "device": "cpu", "seed": SEED,
    }


def _argv(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def _result(run_dir: Path, clock: StepClock) -> dict:
    """The run's own record: validation accuracy per epoch (for time to target) and the
    settings it trained with."""
    import tomllib

    summary = json.loads((run_dir / "summary.json").read_text())
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "val" and record.get("val_accuracy") is not None:
            clock.evals.append((int(record["step"]), float(record["val_accuracy"])))
    return {
        "final_loss": summary["final_loss"],
        "test_accuracy": summary["test_accuracy"],
        "precision": summary["precision"],
        "channels_last": summary["channels_last"],
        "compile": tomllib.loads((run_dir / "config.toml").read_text())["compile"],
    }


def _run_cli(options: dict, workdir: str, clock: StepClock) -> dict:
    from dlscale.cli import main

    clock.hook_torch_optimizers()
    run_dir = Path(workdir) / "run"
    code = main(["train", *_argv(options), "--run-dir", str(run_dir), "--json"])
    if code:
        raise SystemExit(f"dlscale train exited with {code}")
    return _result(run_dir, clock)


def run_cli(workload: Workload, text_file: str, clock: StepClock, workdir: str) -> dict:
    return _run_cli(_matched_options(workload, text_file), workdir, clock)


def run_defaults(workload: Workload, text_file: str, clock: StepClock, workdir: str) -> dict:
    return _run_cli(_workload_flags(workload, text_file), workdir, clock)


def run_fit(workload: Workload, text_file: str, clock: StepClock, workdir: str) -> dict:
    import dlscale

    clock.hook_torch_optimizers()
    options = _matched_options(workload, text_file)
    result = dlscale.fit(options.pop("model"), options.pop("data"), run_dir=str(Path(workdir) / "run"),
                         verbose=False, **options)
    return _result(result.run_dir, clock)
