"""Reading a dump folder on the port side: the manifest validated, every tensor checked against its sha256 as it is
read (a reference edited on disk is refused, never compared).

When: inputs, references and raw input files when the Dump is opened; the state dict (one hash of the whole file)
each time it is read; module outputs (--all-modules) when they are read."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from parity.contracts.errors import ParityError
from parity.contracts.hashing import sha256_file
from parity.contracts.io import load_model
from parity.contracts.manifests import DumpManifest, TensorEntry
from parity.contracts.recipe import Recipe
from parity.runtime.tensors import tensor_sha256


def load_tensors(path: Path, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (all, or the named ones); a damaged file is a one-line error naming it."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys()) if names is None else list(names)
            return {k: fh.get_tensor(k) for k in keys}
    except FileNotFoundError:
        raise ParityError(f"{path} is missing") from None
    except Exception as exc:  # safetensors raises its own error types for truncated headers and data
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParityError(f"{path} is not a readable safetensors file (truncated or damaged?): {reason}") from None


class Dump:
    """A validated dump folder: the manifest, inputs and references (each tensor hash-checked when read)."""

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

    def _verified(self, file: str, entries: list[TensorEntry], label: str) -> dict[str, torch.Tensor]:
        path = self.folder / file
        tensors = load_tensors(path)
        missing = [e.name for e in entries if e.name not in tensors]
        if missing:
            raise ParityError(f"{path}: {label} tensors listed in the manifest are missing: {missing[:3]}")
        for entry in entries:
            if tensor_sha256(tensors[entry.name]) != entry.sha256:
                raise ParityError(f"{path}: {label} tensor {entry.name!r} does not match the sha256 in its manifest "
                                  "(edited or corrupted dump)")
        return tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        path = self.folder / "state_dict.safetensors"
        if not path.is_file() or sha256_file(path) != self.manifest.state_dict.sha256:
            raise ParityError(f"{path} does not match the sha256 in its manifest (edited or corrupted dump)")
        return load_tensors(path)

    def module_outputs(self) -> dict[str, torch.Tensor]:
        """--all-modules: the origin's first output of every module, hash-checked."""
        return self._verified("modules.safetensors", self.manifest.modules, "module")

    def raw_image(self, name: str = "image"):
        from PIL import Image

        if not any(e.name == f"{name}.png" for e in self.manifest.raw_inputs):
            raise ParityError(f"{self.folder}: the manifest lists no raw input {name}.png")
        return Image.open(self.folder / f"{name}.png").convert("RGB")

