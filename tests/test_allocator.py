"""Freed CPU memory stays in the process during training: reusing a large buffer costs no
page faults (counted by the kernel, not timed)."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from dlscale import allocator

BIG = 20 * 2**20  # above glibc's static mmap threshold (128 KiB): fresh mmap'd pages every time


def _faults_for_reallocations(times: int = 4) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        buffer = torch.empty(BIG, dtype=torch.uint8)
        buffer.fill_(1)  # touch every page
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator._glibc() is None, reason="needs glibc")
def test_inside_the_block_a_freed_large_buffer_is_reused_without_page_faults():
    pages = BIG // resource.getpagesize()
    with allocator.keep_freed_memory():
        pass  # leaves glibc at its static defaults: a known start, whatever ran before in this process
    outside = _faults_for_reallocations()
    with allocator.keep_freed_memory() as kept:
        assert kept
        _faults_for_reallocations(1)  # the heap grows once
        inside = _faults_for_reallocations()
    assert outside >= 3 * pages  # by default every large allocation is fresh pages
    assert inside < pages // 4  # kept: the same pages are reused


def test_disabled_or_without_glibc_it_does_nothing(monkeypatch):
    with allocator.keep_freed_memory(enabled=False) as kept:
        assert kept is False
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    with allocator.keep_freed_memory() as kept:
        assert kept is False
