"""Reading a dump on the host (numpy, never torch): every tensor read is checked against the sha256 its manifest
records, so a reference edited on disk is refused, never compared.

The check hashes each tensor's bytes exactly as stored in the safetensors file (little-endian, row-major), which is
what `parity.runtime.tensors.tensor_sha256` hashed when the dump was written."""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from pathlib import Path

import numpy as np

from parity.contracts.errors import ParityError
from parity.contracts.hashing import sha256_file
from parity.contracts.io import load_model
from parity.contracts.manifests import DumpManifest, FileEntry, TensorEntry

NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
                "U8": "u1", "BOOL": "?", "BF16": "<u2"}
"""safetensors dtype -> numpy dtype of the stored bytes (BF16 is widened to float32 after the hash check)."""
TENSOR_FILES = {"inputs": "inputs.safetensors", "references": "reference.safetensors", "modules": "modules.safetensors"}
"""Manifest list -> the file holding its tensors."""


def _header(path: Path, data: mmap.mmap | bytes) -> tuple[dict, int]:
    """The safetensors header (name -> dtype, shape, data_offsets) and where the data starts."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if length > len(data) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(bytes(data[8:8 + length]))
        header.pop("__metadata__", None)
        end = 8 + length
        for name, info in header.items():
            begin, stop = info["data_offsets"]
            if not 0 <= begin <= stop <= len(data) - end:
                raise ValueError(f"tensor {name!r} lies past the end of the file")
        return header, end
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ParityError(f"{path} is not a readable safetensors file (truncated or damaged?): {exc}") from None


def verified_tensors(path: Path, entries: list[TensorEntry], label: str) -> dict[str, np.ndarray]:
    """Every tensor the manifest lists for `path`, each checked (dtype, shape, sha256) before it is returned."""
    try:
        with open(path, "rb") as fh:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
    except FileNotFoundError:
        raise ParityError(f"{path} is missing") from None
    header, start = _header(path, data)
    tensors = {}
    for entry in entries:
        info = header.get(entry.name)
        if info is None:
            raise ParityError(f"{path}: {label} tensor {entry.name!r} listed in the manifest is missing")
        if info["dtype"] != entry.dtype or list(info["shape"]) != entry.shape:
            raise ParityError(f"{path}: {label} tensor {entry.name!r} is {info['dtype']} {info['shape']} but the "
                              f"manifest says {entry.dtype} {entry.shape} (edited or corrupted dump)")
        begin, stop = info["data_offsets"]
        raw = data[start + begin:start + stop]
        if hashlib.sha256(raw).hexdigest() != entry.sha256:
            raise ParityError(f"{path}: {label} tensor {entry.name!r} does not match the sha256 in its manifest "
                              "(edited or corrupted dump)")
        if entry.dtype not in NUMPY_DTYPES:
            raise ParityError(f"{path}: {label} tensor {entry.name!r} has dtype {entry.dtype} (not readable here)")
        array = np.frombuffer(raw, dtype=NUMPY_DTYPES[entry.dtype]).reshape(entry.shape)
        if entry.dtype == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[entry.name] = array
    return tensors


def read_tensors(folder: Path, manifest: DumpManifest, which: str) -> dict[str, np.ndarray]:
    """One verified tensor list of a dump: 'inputs', 'references' or 'modules'."""
    return verified_tensors(Path(folder) / TENSOR_FILES[which], getattr(manifest, which), which.rstrip("s"))


def _check_file(folder: Path, entry: FileEntry) -> None:
    path = Path(folder) / entry.name
    if not path.is_file() or path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
        raise ParityError(f"{path} is missing or does not match the sha256 in its manifest (edited or corrupted dump)")


def verify_dump(folder: Path) -> DumpManifest:
    """The whole dump checked against its manifest: every listed tensor, the state dict and the raw input files."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise ParityError(f"{folder} is not a dump (no manifest.json)")
    manifest = load_model(DumpManifest, folder / "manifest.json")
    for which in TENSOR_FILES:
        if getattr(manifest, which):
            read_tensors(folder, manifest, which)
    for entry in [manifest.state_dict, *manifest.raw_inputs]:
        _check_file(folder, entry)
    return manifest
