"""``dlscale hw``: the devices of this machine, their datasheet and measured peaks.

Human output is rich tables on stderr; ``--json`` adds ``hw_report()``'s object as the
last line of stdout (the same object each run keeps as hardware.json).
"""

from __future__ import annotations

import argparse
from typing import Any

from dlscale.errors import UserError
from dlscale.units import si

COPY_NOTE = "copy bandwidth = 2 x bytes / time of dst.copy_(src) (read + write, as STREAM copy)"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "hw",
        help="devices, datasheet and measured peaks",
        description=(
            "Show this machine's CPU, memory and GPUs, the dense datasheet peak FLOP/s of known GPUs "
            "(with their sources) and the measured peaks of every device: a large-GEMM rate per precision "
            "and a memory-copy bandwidth. The measurement takes a few seconds and is cached per machine "
            "in the user cache folder ($DLSCALE_CACHE_DIR, $XDG_CACHE_HOME/dlscale or ~/.cache/dlscale)."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.add_argument("--remeasure", action="store_true", help="measure the peaks again and refresh the cache")
    p.add_argument("--no-measure", action="store_true", help="inventory and datasheet peaks only (instant)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dlscale.hardware.peaks import cached_peaks
    from dlscale.hardware.report import hw_report
    from dlscale.progress import make_console
    from dlscale.runs.files import to_json
    from dlscale.runs.results import stamp

    if args.remeasure and args.no_measure:
        raise UserError("--remeasure and --no-measure contradict each other; give one of them")
    console = make_console()
    measure = not args.no_measure
    if measure and (args.remeasure or cached_peaks() is None):
        console.print("measuring peaks (a few seconds, once per machine) ...")
    report = hw_report(measure=measure, remeasure=args.remeasure)
    print_report(console, report)
    if args.json:
        print(to_json(stamp("hardware", report)), flush=True)
    return 0


# --------------------------------------------------------------------------- display


def _gib(value: int | None) -> str:
    """Memory as hw has always shown it: GiB to one decimal, MiB whole below a GiB."""
    if value is None:
        return "-"
    return f"{value / 2**30:.1f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def print_report(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    cpu = report["cpu"]
    machine = Table(title="machine", show_header=False, title_justify="left")
    machine.add_column(style="bold")
    machine.add_column()
    cores = f"{cpu['logical_cores']} logical"
    if cpu.get("physical_cores"):
        cores += f", {cpu['physical_cores']} physical"
    if cpu.get("usable_cores") and cpu["usable_cores"] != cpu["logical_cores"]:
        cores += f", {cpu['usable_cores']} usable here"
    cores += f"; torch uses {cpu['torch_threads']} threads"
    backend = f"CUDA {report['cuda']}" if report.get("cuda") else (f"ROCm/HIP {report['hip']}" if report.get("hip") else "CPU-only build")
    for key, value in (
        ("host", report["hostname"]),
        ("platform", report["platform"]),
        ("CPU", cpu["model"]),
        ("cores", cores),
        ("memory", _gib(cpu["memory_bytes"])),
        ("python", report["python"]),
        ("torch", f"{report['torch']} ({backend})"),
        ("driver", report.get("driver") or "-"),
        ("dlscale", report["dlscale"]),
    ):
        machine.add_row(key, str(value))
    console.print(machine)

    if report["gpus"]:
        table = Table(title=f"GPUs ({report['gpu_count']})", title_justify="left")
        for column in ("device", "name", "memory", "compute capability", "SMs", "datasheet part"):
            table.add_column(column)
        for gpu in report["gpus"]:
            sheet = report["datasheet_peaks"].get(f"cuda:{gpu['index']}", {})
            table.add_row(
                f"cuda:{gpu['index']}", gpu["name"], _gib(gpu["memory_bytes"]), gpu["compute_capability"],
                str(gpu["multiprocessors"]), sheet.get("part") or "not in table: MFU null",
            )
        console.print(table)
    else:
        console.print("no CUDA GPU found: MFU on CPU uses the measured GEMM peak")

    measured = report.get("measured_peaks") or {}
    measured_devices = measured.get("devices", {})
    devices = ["cpu", *(f"cuda:{g['index']}" for g in report["gpus"])]
    table = Table(
        title="peak FLOP/s of one device: datasheet (dense, no sparsity) and measured large GEMM (n x n)",
        caption="ratio = measured / datasheet", title_justify="left", caption_justify="left",
    )
    for column in ("device", "dtype", "datasheet", "measured", "n", "ratio"):
        table.add_column(column, no_wrap=True)
    for device in devices:
        sheet = (report["datasheet_peaks"].get(device) or {}).get("peaks", {})
        entry = measured_devices.get(device, {})
        rates = entry.get("gemm_flops_per_second") or {}
        sizes = entry.get("gemm_sizes") or {}
        dtypes = [p for p in ("fp32", "tf32", "bf16", "fp16", "fp8") if sheet.get(p) or p in rates]
        if not dtypes:
            table.add_row(device, "-", "-", entry.get("error", "not measured"), "", "")
        for dtype in dtypes:
            ds = (sheet.get(dtype) or {}).get("flops_per_second")
            got = rates.get(dtype)
            ratio = f"{got / ds:.0%}" if ds and got else "-"
            table.add_row(device, dtype, si(ds, "FLOP/s"), si(got, "FLOP/s"), str(sizes.get(dtype, "")), ratio)
    console.print(table)
    console.print("cpu: CPUs have no datasheet peak; MFU on a CPU uses the measured GEMM rate")
    for device in devices[1:]:
        sheet = report["datasheet_peaks"].get(device) or {}
        if sheet.get("source"):
            console.print(f"{device}: datasheet {sheet['part']}: {sheet['source']}")
        if sheet.get("note"):
            console.print(f"{device}: {sheet['note']}")

    if measured:
        copy = Table(title="memory copy bandwidth", title_justify="left")
        for column in ("device", "bandwidth", "buffer"):
            copy.add_column(column, no_wrap=True)
        for device in devices:
            entry = measured_devices.get(device, {})
            copy.add_row(device, si(entry.get("copy_bytes_per_second"), "B/s"), _gib(entry.get("copy_buffer_bytes")))
        console.print(copy)
        console.print(COPY_NOTE)
        prov = measured.get("provenance", {})
        cache = measured.get("cache", {})
        where = f"cached in {cache['path']}" if cache.get("path") else "not cached (cache folder not writable)"
        when = "read from the cache" if cache.get("hit") else f"measured now in {prov.get('seconds', 0):.1f} s"
        console.print(
            f"peaks measured {prov.get('date', '?')} with torch {prov.get('torch', '?')} and "
            f"{prov.get('threads', '?')} CPU threads, best of the timed repeats; {when}, {where} "
            "(--remeasure refreshes)"
        )
        if prov.get("busy"):
            console.print(
                f"[yellow]the machine was busy while measuring (load average {prov.get('load_average_before')} "
                f"for {prov.get('threads')} threads): the measured peaks may be low; run "
                "'dlscale hw --remeasure' when it is quiet[/yellow]"
            )
    else:
        console.print("peaks not measured (--no-measure)")
