"""Reading original checkpoint files (pickles are opened only on the origin side, and only with weights_only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from parity.contracts.errors import ParityError


def read_torch_file(path: Path, what: str = "checkpoint", *, mmap: bool = False, hint: str = "") -> Any:
    """torch.load(weights_only=True) with one-line errors for missing, unreadable or truncated files."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ParityError(f"{what} not found: {path}") from None
    except Exception as exc:  # torch raises many types for damaged archives
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParityError(f"{what} {path} is not a readable torch file (truncated or damaged?{hint}): {reason}") from None


def load_state_dict_file(path: Path, what: str = "checkpoint", *, mmap: bool = True, hint: str = ""
                         ) -> dict[str, torch.Tensor]:
    """A plain torch.save of a state dict (a dict of tensors)."""
    obj = read_torch_file(path, what, mmap=mmap, hint=hint)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ParityError(f"{what} {path} is not a plain state dict of tensors")
    return obj


def check_strict_load(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path, *,
                      assign: bool = False) -> None:
    """Load like the original loader does (strict), but report missing/unexpected keys and shape mismatches (a
    checkpoint of another variant) in one line.

    assign: the checkpoint's own tensors become the model's (a memory-mapped checkpoint then stays file-backed, and
    the randomly initialised tensors are freed instead of overwritten), when every dtype already matches the model's
    (otherwise they are copied, converted to the model's dtypes as load_state_dict does)."""
    expected = module.state_dict()
    mismatched = [f"{k} {list(v.shape)} vs {list(expected[k].shape)}" for k, v in state_dict.items()
                  if k in expected and v.shape != expected[k].shape]
    if mismatched:
        raise ParityError(f"checkpoint {path} does not fit the original model (another variant?): shape mismatch "
                          f"(checkpoint vs model) {_short(mismatched)}")
    assign = assign and all(v.dtype == expected[k].dtype for k, v in state_dict.items() if k in expected)
    result = module.load_state_dict(state_dict, strict=False, assign=assign)
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
