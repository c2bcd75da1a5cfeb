"""Numbers as people read them, and the one compute unit the reports use.

Lowest layer (no dlscale imports): every package that prints a rate or a size may use it.
"""

from __future__ import annotations

PFS_DAY_FLOPS = 1e15 * 86400  # one petaflop/s-day: 1e15 FLOP/s for a day = 8.64e19 FLOPs


def pfs_days(total_flops: float) -> float:
    """Petaflop/s-days of ``total_flops``: total / (1e15 x 86400)."""
    return total_flops / PFS_DAY_FLOPS


def si(value: float | None, unit: str) -> str:
    """12.3e12, "FLOP/s" -> '12.3 TFLOP/s'; tera is the largest prefix (a GPU reads 1979.0 TFLOP/s,
    comparable with its datasheet); None -> '-'."""
    if value is None:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = 0
    while count >= 1024 and power < len(units) - 1:
        count /= 1024
        power += 1
    return f"{count:.0f} bytes" if power == 0 else f"{count:.1f} {units[power]}"
