"""Origin-side helpers shared by every family: ordered capture logs, environment records, atomic dump writing.

Runs inside origin environments: torch, safetensors, numpy, pillow and pydantic only (never transformers).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from orchestrator.errors import ParityError
from orchestrator.manifests import (
    CheckpointRecord,
    DeterminismRecord,
    DumpManifest,
    EnvironmentRecord,
    FileEntry,
    Recipe,
    TensorEntry,
    write_model,
)

DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL", torch.int8: "I8",
}


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hash of the raw bytes (any dtype, bf16 included): equal hashes mean bit-identical tensors."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def file_entry(path: Path) -> FileEntry:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return FileEntry(name=path.name, sha256=digest.hexdigest(), bytes=path.stat().st_size)


class CaptureLog:
    """Tensors in the order they were recorded, with their provenance; the order is the execution order."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries: list[TensorEntry] = []

    def add(
        self,
        name: str,
        tensor: torch.Tensor,
        module: str | None = None,
        layout: str | None = None,
        meaning: str | None = None,
    ) -> None:
        if name in self.tensors:
            raise ParityError(f"capture {name!r} recorded twice")
        tensor = tensor.detach().to("cpu").contiguous().clone()
        self.tensors[name] = tensor
        self.entries.append(
            TensorEntry(
                name=name,
                shape=list(tensor.shape),
                dtype=DTYPE_NAMES[tensor.dtype],
                sha256=tensor_sha256(tensor),
                module=module,
                execution_index=len(self.entries),
                layout=layout,
                meaning=meaning,
            )
        )

    def __contains__(self, name: str) -> bool:
        return name in self.tensors


class ModuleRecorder:
    """--all-modules: the first output of every submodule, so parity can diff pairs derived from the weight mapping."""

    def __init__(self, model: torch.nn.Module):
        self.log = CaptureLog()
        self.handles = [module.register_forward_hook(self._hook(name))
                        for name, module in model.named_modules() if name]

    def _hook(self, name: str):
        def hook(_module, _args, output):
            tensor = first_tensor(output)
            if tensor is not None and name not in self.log:
                self.log.add(name, tensor.float() if tensor.is_floating_point() else tensor,
                             module=f"forward hook: {name} (first call)")

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def first_tensor(output) -> torch.Tensor | None:
    """The main output of a module: a tensor, or the first tensor of a tuple/list/dict/ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def environment_record(device: str, packages: Iterable[str], upstream: str | None) -> EnvironmentRecord:
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return EnvironmentRecord(
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=device,
        packages=versions,
        upstream=upstream,
    )


def set_determinism(device: str, threads: int) -> DeterminismRecord:
    """Same settings on both sides: deterministic algorithms, no TF32, fixed thread count."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = False
    return DeterminismRecord(deterministic_algorithms=True, num_threads=threads, tf32=False, dtype="float32")


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
        raw_entries = []
        for name, source in raw_files.items():
            shutil.copyfile(source, staging / name)
            raw_entries.append(file_entry(staging / name))
        manifest = DumpManifest(
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


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """torch.load of a plain state-dict container, with one-line errors for unreadable or truncated files."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise ParityError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many types for damaged archives
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParityError(f"checkpoint {path} is not a readable torch file (truncated or damaged?): {reason}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ParityError(f"checkpoint {path} is not a plain state dict of tensors")
    return obj


def check_strict_load(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load like the original loader does (strict), but report missing/unexpected keys in one line."""
    result = module.load_state_dict(state_dict, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {_short(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {_short(result.unexpected_keys)}")
    if problems:
        raise ParityError(f"checkpoint {path} does not fit the original model: {'; '.join(problems)}")


def _short(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return f"[{shown}{', ...' if len(keys) > 3 else ''}] ({len(keys)})"


def synthetic_image(seed: int, height: int, width: int) -> np.ndarray:
    """A deterministic HxWx3 uint8 picture with edges, gradients and texture (not noise alone, not flat)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for channel in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.28)
        image[..., channel] = 128 + 80 * np.sin(fx * 6.28 * xx / width + fy * 6.28 * yy / height + phase)
    for _ in range(4):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.1, 0.3) * min(height, width)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[inside] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)
