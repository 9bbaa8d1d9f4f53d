"""Reading a dump folder on the port side: the manifest validated, every tensor checked against its sha256 (a
reference edited on disk is refused, never compared), and tensors mapped from the files only when asked for, so a
full-size dump is never held in memory at once.

When: inputs, references and raw input files when the Dump is opened; the state dict (one hash of the whole file)
each time it is read; module outputs (--all-modules) when they are read."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from parity.contracts.errors import ParityError
from parity.contracts.hashing import sha256_file
from parity.contracts.io import load_model
from parity.contracts.manifests import DumpManifest, TensorEntry
from parity.contracts.recipe import Recipe
from parity.runtime.tensorfile import TensorFile


class TensorFileView(Mapping[str, torch.Tensor]):
    """The tensors of one safetensors file as a read-only mapping; each lookup maps that tensor from the file."""

    def __init__(self, file: TensorFile, names: list[str]):
        self.file, self.names = file, dict.fromkeys(names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        return self.file.tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names


class Dump:
    """A validated dump folder: the manifest, inputs and references (each tensor hash-checked when the dump opens)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not (self.folder / "manifest.json").is_file():
            raise ParityError(f"{self.folder} is not a dump (no manifest.json)")
        self.manifest: DumpManifest = load_model(DumpManifest, self.folder / "manifest.json")
        self.recipe: Recipe = self.manifest.recipe
        self.inputs = self._verified("inputs.safetensors", self.manifest.inputs, "input")
        self.references = self._verified("reference.safetensors", self.manifest.references, "reference")
        for entry in self.manifest.raw_inputs:
            path = self.folder / entry.name
            if not path.is_file() or sha256_file(path) != entry.sha256:
                raise ParityError(f"{path} is missing or does not match the sha256 in its manifest (edited or "
                                  "corrupted dump)")

    def _verified(self, file: str, entries: list[TensorEntry], label: str) -> TensorFileView:
        path = self.folder / file
        tensors = TensorFile(path)
        missing = [e.name for e in entries if e.name not in tensors]
        if missing:
            raise ParityError(f"{path}: {label} tensors listed in the manifest are missing: {missing[:3]}")
        for entry in entries:
            slot = tensors.slots[entry.name]
            if [*slot.shape] != entry.shape or slot.dtype != entry.dtype or tensors.sha256(entry.name) != entry.sha256:
                raise ParityError(f"{path}: {label} tensor {entry.name!r} does not match the sha256 in its manifest "
                                  "(edited or corrupted dump)")
        return TensorFileView(tensors, [e.name for e in entries])

    def state_dict(self) -> TensorFileView:
        """The re-exported original state dict, checked against the manifest's file hash; each tensor is mapped from
        the file when the conversion reaches it (renamed tensors stay file-backed, nothing is copied)."""
        path = self.folder / "state_dict.safetensors"
        if not path.is_file() or sha256_file(path) != self.manifest.state_dict.sha256:
            raise ParityError(f"{path} does not match the sha256 in its manifest (edited or corrupted dump)")
        tensors = TensorFile(path)
        return TensorFileView(tensors, list(tensors.slots))

    def module_outputs(self) -> TensorFileView:
        """--all-modules: the origin's first output of every module, hash-checked."""
        return self._verified("modules.safetensors", self.manifest.modules, "module")

    def raw_image(self, name: str = "image"):
        from PIL import Image

        if not any(e.name == f"{name}.png" for e in self.manifest.raw_inputs):
            raise ParityError(f"{self.folder}: the manifest lists no raw input {name}.png")
        return Image.open(self.folder / f"{name}.png").convert("RGB")

