"""Freed CPU memory stays in the process during training: reusing a large block costs no
page faults (counted by the kernel, not timed). The effect on real training (resnet18:
3.3M page faults per run down to 0.4M) is measured by benchmarks/peers."""

from __future__ import annotations

import ctypes
import resource
import sys

import pytest

from dlscale import allocator

BIG = 20 * 2**20  # above glibc's default mmap threshold (128 KiB): fresh mmap'd pages every time
M_MMAP_THRESHOLD = -3


def _faults_for_reallocations(libc, times: int = 4) -> int:
    """Page faults of malloc, touch every page, free, ``times`` over."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        block = libc.malloc(BIG)
        assert block
        ctypes.memset(block, 1, BIG)
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator._glibc() is None, reason="needs glibc")
def test_inside_the_block_a_freed_large_block_is_reused_without_page_faults():
    libc = allocator._glibc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    pages = BIG // resource.getpagesize()
    # a known start whatever ran before in this process: glibc's mmap threshold may have
    # grown (up to 32 MiB) with earlier frees, so set it back to its 128 KiB default
    assert libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    outside = _faults_for_reallocations(libc)
    with allocator.keep_freed_memory() as kept:
        assert kept
        _faults_for_reallocations(libc, 1)  # the heap grows once
        inside = _faults_for_reallocations(libc)
    assert outside >= 3 * pages  # by default every large block is fresh pages
    assert inside < pages // 4  # kept: the same pages are reused


def test_disabled_or_without_glibc_it_does_nothing(monkeypatch):
    with allocator.keep_freed_memory(enabled=False) as kept:
        assert kept is False
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    with allocator.keep_freed_memory() as kept:
        assert kept is False
