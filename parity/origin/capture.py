"""Ordered capture logs: tensors in the order the original computed them, with their provenance."""

from __future__ import annotations

import torch

from parity.contracts.errors import ParityError
from parity.contracts.manifests import TensorEntry
from parity.runtime.tensors import DTYPE_NAMES, first_tensor, tensor_sha256


class CaptureLog:
    """Tensors in the order they were recorded; the order is the execution order."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries: list[TensorEntry] = []

    def add(self, name: str, tensor: torch.Tensor, module: str | None = None, layout: str | None = None,
            meaning: str | None = None) -> None:
        if name in self.tensors:
            raise ParityError(f"capture {name!r} recorded twice")
        tensor = tensor.detach().to("cpu").contiguous().clone()
        self.tensors[name] = tensor
        self.entries.append(TensorEntry(name=name, shape=list(tensor.shape), dtype=DTYPE_NAMES[tensor.dtype],
                                        sha256=tensor_sha256(tensor), module=module,
                                        execution_index=len(self.entries), layout=layout, meaning=meaning))

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
