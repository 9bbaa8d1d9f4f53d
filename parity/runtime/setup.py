"""The same process setup and environment record on both sides of a comparison."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from parity.contracts.manifests import DeterminismRecord, EnvironmentRecord, ImageUpstreamRecord
from parity.contracts.paths import UPSTREAM_RECORD


def set_determinism(device: str, threads: int) -> DeterminismRecord:
    """Deterministic algorithms, no TF32, no cuDNN autotuning, a fixed thread count: identical on both sides."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    return DeterminismRecord(deterministic_algorithms=True, num_threads=threads, tf32=False, dtype="float32")


def image_upstream(path: Path = UPSTREAM_RECORD) -> ImageUpstreamRecord | None:
    """The image's record of upstream commits, patches and compiled ops; None outside upstream-source images."""
    return ImageUpstreamRecord.model_validate_json(path.read_text()) if path.is_file() else None


def environment_record(device: str, packages: Iterable[str], upstream: str | None = None,
                       code_paths: Mapping[str, str] | None = None) -> EnvironmentRecord:
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return EnvironmentRecord(python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
                             cuda=torch.version.cuda, device=device, packages=versions, upstream=upstream,
                             image_upstream=image_upstream(), code_paths=dict(code_paths or {}))
