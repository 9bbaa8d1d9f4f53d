"""Writing a dump folder atomically: tensors as safetensors, the manifest last, renamed into place when complete.

Every tensor file is streamed: the state dict tensor by tensor from the model's own memory (no copy of it), the
capture logs from their spools; each file is hashed while it is written."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from parity.contracts.base import SCHEMA_VERSION
from parity.contracts.errors import ParityError
from parity.contracts.hashing import sha256_file
from parity.contracts.io import write_model
from parity.contracts.manifests import (
    CheckpointRecord,
    DeterminismRecord,
    DumpManifest,
    EnvironmentRecord,
    FileEntry,
)
from parity.contracts.recipe import Recipe
from parity.origin.capture import CaptureLog
from parity.runtime.protocol import progress
from parity.runtime.tensorfile import save_tensors


def file_entry(path: Path) -> FileEntry:
    return FileEntry(name=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)


class DumpWriter:
    """A dump folder being written: everything goes into a staging folder beside `out_dir` (capture logs spool there
    too), which `finish` renames into place once the manifest is written; leaving the block early removes it."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent))
        self.staging.chmod(0o755)
        self._state_dict: FileEntry | None = None

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(self, *_exc) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def write_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """The original state dict as the original loader left it, streamed from the model's own tensors."""
        sha256, size = save_tensors(self.staging / "state_dict.safetensors", state_dict, {"format": "pt"})
        self._state_dict = FileEntry(name="state_dict.safetensors", sha256=sha256, bytes=size)

    def finish(
        self,
        *,
        recipe: Recipe,
        producer: str,
        checkpoint: CheckpointRecord,
        environment: EnvironmentRecord,
        determinism: DeterminismRecord,
        inputs: CaptureLog,
        references: CaptureLog,
        raw_files: dict[str, Path],
        modules: CaptureLog | None = None,
    ) -> DumpManifest:
        if self._state_dict is None:
            raise ParityError("a dump needs its state dict written before it is finished")
        inputs.write(self.staging / "inputs.safetensors")
        references.write(self.staging / "reference.safetensors")
        if modules is not None:
            modules.write(self.staging / "modules.safetensors")
        progress("dump: tensors written, writing the manifest")
        raw_entries = []
        for name, source in raw_files.items():
            shutil.copyfile(source, self.staging / name)
            raw_entries.append(file_entry(self.staging / name))
        manifest = DumpManifest(
            schema_version=SCHEMA_VERSION,
            recipe=recipe,
            recipe_hash=recipe.recipe_hash(),
            producer=producer,
            checkpoint=checkpoint,
            environment=environment,
            determinism=determinism,
            state_dict=self._state_dict,
            raw_inputs=raw_entries,
            inputs=inputs.entries,
            references=references.entries,
            modules=modules.entries if modules is not None else [],
        )
        write_model(manifest, self.staging / "manifest.json")
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        self.staging.rename(self.out_dir)
        return manifest
