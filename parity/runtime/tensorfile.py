"""Tensors on disk, written and read one at a time, so a full-size model or forward is never held twice in memory.

safetensors files: an 8-byte little-endian header length, a JSON header ({name: {dtype, shape, data_offsets}} plus an
optional "__metadata__"), then every tensor's raw bytes back to back. Writing streams each tensor's bytes straight from
its own memory, hashing the file as it goes (no serialised copy of the whole dict, no second read). Reading maps each
tensor's own byte range of the file (copy-on-write, read only when touched, unmapped when the tensor is dropped), so
only the tensors in use are resident; hashing a tensor reads its bytes from the file without mapping them at all.

Spools: anonymous files that captured tensors are appended to as they are produced, so a forward's captures leave
memory at once and come back as mappings only when read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parity.contracts.errors import ParityError
from parity.runtime.tensors import DTYPE_NAMES, raw_bytes

DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
"""safetensors dtype name -> torch dtype."""
ITEMSIZE = {name: torch.empty((), dtype=dtype).element_size() for name, dtype in DTYPES.items()}
BLOCK = 1 << 24
"""Bytes per read when hashing or copying (16 MiB)."""
SCAN_BLOCK = 1 << 26
"""Bytes per read when a whole file is scanned in a background thread (64 MiB: few hand-overs of the GIL)."""
MAX_HEADER = 1 << 28
"""A header longer than this is a damaged file, not a real one."""


@dataclass(frozen=True)
class Slot:
    """One tensor's place in a file: what the header says about it."""

    name: str
    """Key in the file."""
    dtype: str
    """safetensors dtype name (F32, I64, ...)."""
    shape: tuple[int, ...]
    """Tensor shape."""
    begin: int = 0
    """Offset of the first byte, from the start of the data section."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def slot_of(name: str, tensor: torch.Tensor) -> Slot:
    if tensor.dtype not in DTYPE_NAMES:
        raise ParityError(f"tensor {name!r} has dtype {tensor.dtype}, which a dump cannot store")
    return Slot(name, DTYPE_NAMES[tensor.dtype], tuple(tensor.shape))


Chunks = Callable[[], Iterable[Any]]
"""Yields a tensor's bytes as buffer-protocol objects, in order."""


def write_tensor_file(path: Path, items: Iterable[tuple[Slot, Chunks]], metadata: dict[str, str] | None = None
                      ) -> tuple[str, int]:
    """Write the header, then each tensor's bytes; returns (sha256 of the file, its size).

    Tensors are laid out by falling item size (8-byte types first), keeping the given order within a size, so every
    tensor is aligned to its item size as safetensors' own writer aligns them."""
    ordered = sorted(items, key=lambda item: -ITEMSIZE[item[0].dtype])
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for slot, _chunks in ordered:
        if slot.name in header:
            raise ParityError(f"tensor {slot.name!r} written twice into {path.name}")
        header[slot.name] = {"dtype": slot.dtype, "shape": list(slot.shape),
                             "data_offsets": [offset, offset + slot.nbytes]}
        offset += slot.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for block in (struct.pack("<Q", len(text)), text):
            fh.write(block)
            digest.update(block)
        for slot, chunks in ordered:
            written = 0
            for block in chunks():
                fh.write(block)
                digest.update(block)
                written += memoryview(block).nbytes
            if written != slot.nbytes:
                raise ParityError(f"tensor {slot.name!r}: wrote {written} bytes, its shape needs {slot.nbytes}")
    return digest.hexdigest(), 8 + len(text) + offset


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
                 ) -> tuple[str, int]:
    """A dict of tensors as a safetensors file, each tensor's bytes written from its own memory (tensors sharing
    storage, like aliases in a state dict, are each written in full)."""
    return write_tensor_file(path, [(slot_of(name, tensor), lambda tensor=tensor: (raw_bytes(tensor),))
                                    for name, tensor in tensors.items()], metadata)


def read_range(fh, start: int, length: int) -> Iterator[bytes]:
    """A byte range of an open file, in blocks, without mapping it."""
    while length > 0:
        block = os.pread(fh.fileno(), min(BLOCK, length), start)
        if not block:
            raise ParityError(f"{fh.name} ends early (truncated?)")
        yield block
        start += len(block)
        length -= len(block)


def map_slot(file, slot: Slot, data_start: int = 0) -> torch.Tensor:
    """A tensor backed by its own private copy-on-write mapping of a file's byte range (a path or an open file)."""
    dtype = DTYPES[slot.dtype]
    if slot.nbytes == 0:
        return torch.empty(slot.shape, dtype=dtype)
    window = np.memmap(file, dtype=np.uint8, mode="c", offset=data_start + slot.begin, shape=(slot.nbytes,))
    return torch.from_numpy(window).view(dtype).reshape(slot.shape)


class TensorFile:
    """A safetensors file's header, checked; each tensor mapped from the file on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                head = fh.read(8)
                if len(head) < 8:
                    raise ValueError("shorter than a header")
                (length,) = struct.unpack("<Q", head)
                if length > min(MAX_HEADER, size - 8):
                    raise ValueError(f"header length {length} does not fit a {size}-byte file")
                header = json.loads(fh.read(length))
        except FileNotFoundError:
            raise ParityError(f"{self.path} is missing") from None
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ParityError(f"{self.path} is not a readable safetensors file (truncated or damaged?): "
                              f"{reason}") from None
        self.data_start = 8 + length
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.slots = self._check(header, size - self.data_start)

    def _check(self, header: Any, data_bytes: int) -> dict[str, Slot]:
        """Every entry has a known dtype, a shape matching its byte range, and the ranges tile the data exactly."""
        slots: dict[str, Slot] = {}
        problem = None
        if not isinstance(header, dict):
            problem = "the header is not a JSON object"
        else:
            for name, info in header.items():
                try:
                    begin, end = info["data_offsets"]
                    slot = Slot(name, info["dtype"], tuple(int(n) for n in info["shape"]), int(begin))
                    if slot.dtype not in ITEMSIZE or end - begin != slot.nbytes:
                        raise ValueError
                except (KeyError, TypeError, ValueError):
                    problem = f"entry {name!r} is malformed"
                    break
                slots[name] = slot
        if problem is None:
            cursor = 0
            for slot in sorted(slots.values(), key=lambda s: (s.begin, s.nbytes)):
                if slot.begin != cursor:
                    problem = f"tensor {slot.name!r} does not start where the previous one ends"
                    break
                cursor += slot.nbytes
            else:
                if cursor != data_bytes:
                    problem = f"the header describes {cursor} bytes of data, the file holds {data_bytes}"
        if problem:
            raise ParityError(f"{self.path} is not a readable safetensors file (truncated or damaged?): {problem}")
        return slots

    def __contains__(self, name: str) -> bool:
        return name in self.slots

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor mapped from its own byte range (nothing read until touched)."""
        return map_slot(self.path, self.slots[name], self.data_start)

    def scan(self, each: Callable[[str, torch.Tensor], None] | None = None) -> str:
        """sha256 of the whole file, read once from start to end without mapping it (nothing stays resident); `each`
        is handed every tensor's values on the way, a block at a time (1-d, its own dtype), e.g. to count NaN/Inf."""
        digest = hashlib.sha256()
        buffer = memoryview(bytearray(SCAN_BLOCK))
        with open(self.path, "rb") as fh:
            digest.update(fh.read(self.data_start))
            for slot in sorted(self.slots.values(), key=lambda s: s.begin):
                remaining = slot.nbytes
                while remaining:
                    got = fh.readinto(buffer[:min(SCAN_BLOCK, remaining)])
                    if got != min(SCAN_BLOCK, remaining):
                        raise ParityError(f"{self.path} ends early (truncated?)")
                    digest.update(buffer[:got])
                    if each is not None:
                        each(slot.name, torch.frombuffer(buffer[:got], dtype=DTYPES[slot.dtype]))
                    remaining -= got
        return digest.hexdigest()

    def sha256(self, name: str) -> str:
        """sha256 of the tensor's raw bytes, read from the file (never mapped, so nothing stays resident)."""
        slot = self.slots[name]
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in read_range(fh, self.data_start + slot.begin, slot.nbytes):
                digest.update(block)
        return digest.hexdigest()


_spool_dir: Path | None = None


@contextlib.contextmanager
def spool_in(folder: Path) -> Iterator[None]:
    """Create the spools of this block in `folder` (the output's own filesystem) instead of the system temp folder."""
    global _spool_dir
    previous, _spool_dir = _spool_dir, Path(folder)
    try:
        yield
    finally:
        _spool_dir = previous


class Spool:
    """An anonymous file (gone when closed or when the process ends) that tensors are appended to."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix=".parity-spool-", dir=_spool_dir)
        self.end = 0

    def append(self, name: str, tensor: torch.Tensor) -> tuple[Slot, np.ndarray]:
        """Write the tensor's bytes at the end; returns its slot and the bytes written (a view, for hashing)."""
        data = raw_bytes(tensor)
        slot = dataclasses.replace(slot_of(name, tensor), begin=self.end)
        self.file.write(data)
        self.end += data.nbytes
        return slot, data

    def chunks(self, slot: Slot) -> Iterator[bytes]:
        self.file.flush()
        return read_range(self.file, slot.begin, slot.nbytes)

    def map(self, slot: Slot) -> torch.Tensor:
        self.file.flush()
        return map_slot(self.file, slot)
