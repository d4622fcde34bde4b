"""bertscale.runtime.host_memory: a fragmented C heap's free pages really go back to the OS."""

from __future__ import annotations

import ctypes
import time

import pytest

from bertscale.runtime import host_memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.skipif(host_memory._malloc_trim() is None, reason="glibc only")
def test_release_returns_the_free_pages_of_a_fragmented_heap():
    malloc, free = ctypes.CDLL(None).malloc, ctypes.CDLL(None).free
    malloc.restype, malloc.argtypes, free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    chunk = 64 * 1024  # under glibc's mmap threshold: on the heap, like a small tensor's buffer
    blocks = [malloc(chunk) for _ in range(4096)]  # 256 MiB
    for block in blocks:
        ctypes.memset(block, 1, chunk)  # resident
    for block in blocks[:-1]:
        free(block)  # the last block pins the heap's top: free() alone cannot shrink it
    try:
        before = _rss_bytes()
        assert host_memory.release_free_heap() is True
        released = before - _rss_bytes()
        assert released > 128 * 2**20, f"only {released / 2**20:.0f} MiB released"
    finally:
        free(blocks[-1])


def test_trimmer_waits_for_its_interval(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "release_free_heap", lambda: calls.append(1) or True)
    never = host_memory.HeapTrimmer(0)
    assert never.maybe_release() is False
    trimmer = host_memory.HeapTrimmer(0.05)
    assert trimmer.maybe_release() is False  # not before the first interval has passed
    time.sleep(0.06)
    assert trimmer.maybe_release() is True and trimmer.maybe_release() is False
    assert len(calls) == 1
