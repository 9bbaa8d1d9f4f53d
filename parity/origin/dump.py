"""Writing a dump folder atomically: tensors as safetensors, the manifest last, renamed into place when complete."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from parity.contracts.base import SCHEMA_VERSION
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


def file_entry(path: Path) -> FileEntry:
    return FileEntry(name=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def write_dump(
    out_dir: Path,
    *,
    recipe: Recipe,
    producer: str,
    checkpoint: CheckpointRecord,
    environment: EnvironmentRecord,
    determinism: DeterminismRecord,
    state_dict: dict[str, torch.Tensor],
    inputs: CaptureLog,
    references: CaptureLog,
    raw_files: dict[str, Path],
    modules: CaptureLog | None = None,
) -> DumpManifest:
    """Write the dump into a temp folder beside out_dir and rename it into place only when complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        _save_tensors(state_dict, staging / "state_dict.safetensors")
        _save_tensors(inputs.tensors, staging / "inputs.safetensors")
        _save_tensors(references.tensors, staging / "reference.safetensors")
        if modules is not None:
            _save_tensors(modules.tensors, staging / "modules.safetensors")
        progress("dump: tensors written, writing the manifest")
        raw_entries = []
        for name, source in raw_files.items():
            shutil.copyfile(source, staging / name)
            raw_entries.append(file_entry(staging / name))
        manifest = DumpManifest(
            schema_version=SCHEMA_VERSION,
            recipe=recipe,
            recipe_hash=recipe.recipe_hash(),
            producer=producer,
            checkpoint=checkpoint,
            environment=environment,
            determinism=determinism,
            state_dict=file_entry(staging / "state_dict.safetensors"),
            raw_inputs=raw_entries,
            inputs=inputs.entries,
            references=references.entries,
            modules=modules.entries if modules is not None else [],
        )
        write_model(manifest, staging / "manifest.json")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
