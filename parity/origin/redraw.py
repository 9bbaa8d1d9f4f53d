"""Seeded re-drawing of EVERY parameter and float buffer of an original model, so no tensor keeps a telltale default
(LayerNorm at 1, bias at 0, layer-scale at 1e-6) and a swapped or transposed tensor moves the outputs visibly.

The walk is shared; each family supplies the rule that says how large each tensor's values are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Site:
    """One tensor to re-draw, with what a rule needs to pick its scale."""

    name: str
    """State-dict key."""
    tensor: torch.Tensor
    """Current value (shape, dtype)."""
    owner: nn.Module
    """Module holding it (the model itself for top-level tensors)."""
    leaf: str
    """Last component of the key (weight, bias, running_var, ...)."""
    normal: torch.Tensor
    """A standard-normal draw of the tensor's shape, already taken from the generator."""
    generator: torch.Generator
    """For rules that need a second draw (e.g. uniform running variances)."""


Rule = Callable[[Site], torch.Tensor]
"""Returns the new value of the tensor at a site."""


def redraw(model: nn.Module, seed: int, rule: Rule, *, skip: Callable[[str], bool] = lambda _name: False) -> None:
    """Visit every floating tensor of the model's state dict in sorted key order (except those `skip` names, which
    take no draw); one standard normal draw per tensor, then the rule's value is copied in place."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point() or skip(name):
                continue
            owner_path, _, leaf = name.rpartition(".")
            normal = torch.randn(tensor.shape, generator=generator)
            tensor.data.copy_(rule(Site(name, tensor, modules.get(owner_path, model), leaf, normal, generator)))
