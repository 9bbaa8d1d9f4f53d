"""Weights paged per module: a model whose tensors are memory-mapped from a checkpoint or dump file gives their pages
back after each module that reads them has run, so a side holds about one module's weights at a time, not the model.

A private (copy-on-write) mapping of a regular file that nobody writes to is a cache of the file: giving its pages back
(madvise MADV_DONTNEED) drops them from this process, the kernel's page cache keeps the bytes, and the next read of the
weight faults them back in from there (no disk read, same bytes). Only such mappings are ever touched: a tensor in
anonymous memory (where giving pages back would zero them), in a shared mapping (where they would be written back), or
on a GPU is never registered. The forward reads weights and never writes them; a write would be undone at the next
release, back to the file's bytes.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import os
from collections.abc import Iterable

import torch

MADV_DONTNEED = 4
"""Linux: drop the pages from this process; a private file mapping refills them from the file's page cache."""


def private_file_mappings(maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of every private mapping of a regular file in this process, sorted (empty where /proc is not)."""
    ranges = []
    try:
        with open(maps) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[1][3] != "p" or fields[4] == "0":
            continue
        path = fields[5]
        if not path.startswith("/") or path.startswith(("/dev/", "/memfd:")):
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        ranges.append((start, end))
    return sorted(ranges)


def _madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


class PagedWeights:
    """The file-backed tensors of a model (found once, when built) and the hooks that give their pages back."""

    def __init__(self, model: torch.nn.Module):
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.madvise = _madvise()
        self.ranges: dict[int, tuple[int, int]] = {}
        """storage address -> (first page, length in bytes) of a tensor inside a private file mapping."""
        self.handles: list = []
        mappings = private_file_mappings() if self.madvise is not None else []
        starts = [start for start, _ in mappings]
        for tensor in self._tensors(model):
            storage = tensor.untyped_storage()
            address, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or address in self.ranges:
                continue
            first = address - address % self.page
            last = -(-(address + size) // self.page) * self.page
            index = bisect.bisect_right(starts, first) - 1
            if index >= 0 and mappings[index][0] <= first and last <= mappings[index][1]:
                self.ranges[address] = (first, last - first)

    @staticmethod
    def _tensors(module: torch.nn.Module) -> Iterable[torch.Tensor]:
        return (t for t in itertools.chain(module.parameters(), module.buffers()) if t.device.type == "cpu")

    @property
    def nbytes(self) -> int:
        return sum(length for _, length in self.ranges.values())

    def summary(self, source: str) -> str:
        size = self.nbytes
        amount = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
        return f"weights mapped from the {source}: {amount} in {len(self.ranges)} tensors, paged per module"

    def release(self, tensors: Iterable[torch.Tensor]) -> None:
        """Give back the pages of those of `tensors` that are registered (others are left alone)."""
        for tensor in tensors:
            found = self.ranges.get(tensor.untyped_storage().data_ptr()) if tensor.device.type == "cpu" else None
            if found is not None:
                self.madvise(found[0], found[1], MADV_DONTNEED)

    def release_module(self, module: torch.nn.Module) -> None:
        self.release(self._tensors(module))

    def attach(self, model: torch.nn.Module) -> PagedWeights:
        """After every module's forward, give back the pages of every registered tensor beneath it (weights a parent
        reads directly, like an embedding table, go when that parent returns)."""
        if self.ranges:
            self.release_module(model)
            self.handles = [m.register_forward_hook(lambda module, _args, _out: self.release_module(module))
                            for m in model.modules()]
        return self

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def trim_heap() -> None:
    """Hand the C allocator's free memory back to the system (glibc's malloc_trim; nothing elsewhere): a forward
    leaves hundreds of MB free but held in the heap, which would count again while the next stage runs."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
