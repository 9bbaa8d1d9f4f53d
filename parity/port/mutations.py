"""Applying a Mutation (parity.contracts.mutations) to the converted state dict."""

from __future__ import annotations

import torch

from parity.contracts.errors import ParityError
from parity.contracts.mutations import Mutation


def apply_mutation(state: dict[str, torch.Tensor], mutation: Mutation) -> None:
    """Deliberate corruption of the converted weights, in place."""
    key = mutation.key
    if mutation.kind != "swap-prefix" and key not in state:
        raise ParityError(f"mutation names unknown port key {key!r}")
    if mutation.kind == "swap":
        if mutation.other not in state:
            raise ParityError(f"mutation names unknown port key {mutation.other!r}")
        state[key], state[mutation.other] = state[mutation.other].clone(), state[key].clone()
    elif mutation.kind == "swap-chunks":
        chunks = list(state[key].chunk(mutation.chunks, dim=0))
        chunks[mutation.i], chunks[mutation.j] = chunks[mutation.j], chunks[mutation.i]
        state[key] = torch.cat(chunks, dim=0)
    elif mutation.kind == "transpose":
        state[key] = state[key].transpose(0, 1).contiguous()
    elif mutation.kind == "zero":
        state[key] = torch.zeros_like(state[key])
    elif mutation.kind == "scale":
        state[key] = state[key] * mutation.factor
    elif mutation.kind == "drop":
        del state[key]
    else:  # swap-prefix
        first, second = key, mutation.other
        moved = {k: v for k, v in state.items() if k.startswith(first) or k.startswith(second)}
        if not moved:
            raise ParityError(f"mutation prefixes {first!r} / {second!r} match no port key")
        for name, tensor in moved.items():
            swapped = second + name[len(first):] if name.startswith(first) else first + name[len(second):]
            state[swapped] = tensor
