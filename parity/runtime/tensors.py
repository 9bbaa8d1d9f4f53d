"""Tensor helpers used by both sides."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL", torch.int8: "I8",
}
"""torch dtype -> safetensors dtype name."""


def raw_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's raw little-endian bytes as a uint8 view (any dtype, bf16 included; copied only when the tensor is
    not a contiguous CPU tensor)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hash of the raw bytes: equal hashes mean bit-identical tensors."""
    return hashlib.sha256(raw_bytes(tensor)).hexdigest()


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


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy view for the metrics (half types widened to float32)."""
    tensor = tensor.detach().to("cpu")
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.numpy()


class NonfiniteTally:
    """NaN/Inf per tensor, counted a piece at a time (a tensor may arrive in blocks, as read from a file)."""

    def __init__(self) -> None:
        self.found: dict[str, tuple[int, set[str]]] = {}
        """{name: (non-finite elements, which of nan / inf / -inf)} for every tensor holding any."""

    def add(self, name: str, values: torch.Tensor) -> None:
        if not values.is_floating_point() or bool(torch.isfinite(values.sum())):
            return  # a finite sum has no NaN/Inf among its terms (one pass, no mask)
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        count, kinds = self.found.get(name, (0, set()))
        kinds = kinds | {kind for kind, mask in (("nan", torch.isnan(values)), ("inf", torch.isposinf(values)),
                                                 ("-inf", torch.isneginf(values))) if bool(mask.any())}
        self.found[name] = (count + int(finite.numel() - finite.sum()), kinds)
