"""SLURM's compressed lists, expanded: host lists (``gpu[01-04,07]``) and per-node task
counts (``2(x3),1``). Both ``env`` (which node is the master) and ``mpi`` (which nodes an
allocation holds) read them."""

from __future__ import annotations

import re

from dlscale.errors import UserError

MAX_HOSTS = 1_000_000  # a host list that expands past this is a typo, not a cluster


def expand_hostlist(spec: str) -> list[str]:
    """Expand SLURM's compressed host list, in order, keeping zero padding.

    ``"gpu[01-04,07],cpu3"`` -> ``gpu01 gpu02 gpu03 gpu04 gpu07 cpu3``;
    ``"nid[0009-0011]"`` -> ``nid0009 nid0010 nid0011`` (a range is padded to the width
    of its lower bound, as SLURM does); several bracket groups in one name expand to
    every combination, the leftmost group varying slowest, as ``scontrol show
    hostnames`` does: ``"a[1-2]-b[3-4]"`` -> ``a1-b3 a1-b4 a2-b3 a2-b4``. Commas
    separate hosts only outside brackets. An empty list, an empty name, unbalanced or
    nested brackets, or a range that is not ``LOW-HIGH`` with ``LOW <= HIGH`` raises
    :class:`UserError`.
    """
    if not spec or not spec.strip():
        raise UserError("empty host list")
    hosts: list[str] = []
    for item in _split_top_level(spec):
        if not item:
            raise UserError(f"host list {spec!r} has an empty host name (two commas in a row, or one at an end)")
        if any(ch.isspace() for ch in item):
            raise UserError(f"host list {spec!r} has white space in {item!r}")
        expanded = [""]
        for text, is_group in _groups(item, spec):
            choices = _expand_group(text, spec) if is_group else [text]
            if len(expanded) * len(choices) + len(hosts) > MAX_HOSTS:
                raise UserError(f"host list {spec!r} expands to more than {MAX_HOSTS} hosts")
            expanded = [head + choice for head in expanded for choice in choices]
        hosts += expanded
    return hosts


def _split_top_level(spec: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise UserError(f"host list {spec!r} has nested brackets")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UserError(f"host list {spec!r} has a ']' without its '['")
        elif ch == "," and depth == 0:
            items.append(spec[start:i])
            start = i + 1
    if depth:
        raise UserError(f"host list {spec!r} has a '[' without its ']'")
    items.append(spec[start:])
    return items


def _groups(item: str, spec: str):
    """Split ``a[1-2]-b[3]`` into ("a", False), ("1-2", True), ("-b", False), ("3", True)."""
    if "[]" in item:
        raise UserError(f"host list {spec!r} has an empty bracket group")
    for literal, group in re.findall(r"([^\[\]]*)(?:\[([^\[\]]*)\])?", item):
        if literal:
            yield literal, False
        if group:
            yield group, True


def _expand_group(text: str, spec: str) -> list[str]:
    names: list[str] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UserError(f"host list {spec!r}: {part!r} in [{text}] is not a number or a LOW-HIGH range")
        low, high = match[1], match[2] if match[2] is not None else match[1]
        if int(low) > int(high):
            raise UserError(f"host list {spec!r}: range {part!r} runs backwards")
        if int(high) - int(low) + 1 + len(names) > MAX_HOSTS:
            raise UserError(f"host list {spec!r} expands to more than {MAX_HOSTS} hosts")
        width = len(low)
        names += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    return names


_REPEAT = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def parse_tasks_per_node(value: str, var: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """SLURM's compressed counts: ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in value.split(","):
        match = _REPEAT.fullmatch(item.strip())
        if not match or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < 1):
            raise UserError(f"{var}={value!r} is not a SLURM task count like '4' or '2(x3),1'")
        counts += [int(match[1])] * int(match[2] or 1)
        if len(counts) > MAX_HOSTS:
            raise UserError(f"{var}={value!r} lists more than {MAX_HOSTS} nodes")
    return counts
