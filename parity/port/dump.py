"""Reading a dump folder on the port side: the manifest validated, every tensor checked against its sha256 (a
reference edited on disk is refused, never compared), and tensors mapped from the files only when asked for, so a
full-size dump is never held in memory at once.

When: inputs, references and raw input files when the Dump is opened; the state dict (one hash of the whole file)
each time it is read; module outputs (--all-modules) when they are read."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from parity.contracts.errors import ParityError
from parity.contracts.hashing import sha256_file
from parity.contracts.io import load_model
from parity.contracts.manifests import DumpManifest, TensorEntry
from parity.contracts.recipe import Recipe
from parity.runtime.tensorfile import TensorFile
from parity.runtime.tensors import NonfiniteTally


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


class StateDictCheck:
    """A state dict file read once in a background thread (hashing and the NaN/Inf counts release the GIL)."""

    def __init__(self, file: TensorFile, sha256: str):
        self.file, self.sha256 = file, sha256
        self.tally = NonfiniteTally()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._scan, name="state-dict-check", daemon=True)
        self._thread.start()

    def _scan(self) -> None:
        try:
            if self.file.scan(self.tally.add) != self.sha256:
                raise ParityError(f"{self.file.path} does not match the sha256 in its manifest (edited or corrupted "
                                  "dump)")
        except Exception as exc:  # re-raised in the thread that waits for it
            self._error = exc

    def result(self) -> dict[str, tuple[int, set[str]]]:
        """Waits for the read; the NaN/Inf counts per tensor, or the error if the file is not the one dumped."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.tally.found


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
        state, check = self.read_state_dict()
        check.result()
        return state

    def read_state_dict(self) -> tuple[TensorFileView, StateDictCheck]:
        """The state dict at once, and its check running meanwhile (conversion needs no checked byte until the port
        runs): one unmapped read of the file, hashed against the manifest, NaN/Inf counted per tensor."""
        path = self.folder / "state_dict.safetensors"
        if not path.is_file():
            raise ParityError(f"{path} does not match the sha256 in its manifest (edited or corrupted dump)")
        tensors = TensorFile(path)
        return TensorFileView(tensors, list(tensors.slots)), StateDictCheck(tensors, self.manifest.state_dict.sha256)

    def module_outputs(self) -> TensorFileView:
        """--all-modules: the origin's first output of every module, hash-checked."""
        return self._verified("modules.safetensors", self.manifest.modules, "module")

    def raw_image(self, name: str = "image"):
        from PIL import Image

        if not any(e.name == f"{name}.png" for e in self.manifest.raw_inputs):
            raise ParityError(f"{self.folder}: the manifest lists no raw input {name}.png")
        return Image.open(self.folder / f"{name}.png").convert("RGB")

