"""Ordered capture logs: tensors in the order the original computed them, with their provenance.

A log keeps no tensor in memory: each one is hashed and its bytes appended to a spool file the moment it is recorded
(a full-size forward produces GBs of captures), and `write` turns the spool into a safetensors file at the end."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from parity.contracts.errors import ParityError
from parity.contracts.manifests import TensorEntry
from parity.runtime.tensorfile import Slot, Spool, write_tensor_file
from parity.runtime.tensors import first_tensor


class CaptureLog:
    """Tensors in the order they were recorded; the order is the execution order."""

    def __init__(self) -> None:
        self.entries: list[TensorEntry] = []
        self._slots: dict[str, Slot] = {}
        self._spool = Spool()

    def add(self, name: str, tensor: torch.Tensor, module: str | None = None, layout: str | None = None,
            meaning: str | None = None) -> None:
        if name in self._slots:
            raise ParityError(f"capture {name!r} recorded twice")
        slot, data = self._spool.append(name, tensor)
        self._slots[name] = slot
        self.entries.append(TensorEntry(name=name, shape=list(slot.shape), dtype=slot.dtype,
                                        sha256=hashlib.sha256(data).hexdigest(), module=module,
                                        execution_index=len(self.entries), layout=layout, meaning=meaning))

    def __contains__(self, name: str) -> bool:
        return name in self._slots

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, name: str) -> torch.Tensor:
        """A recorded tensor, mapped back from the spool (for the few captures a later step feeds on)."""
        return self._spool.map(self._slots[name])

    def write(self, path: Path) -> tuple[str, int]:
        """The log as a safetensors file (spool bytes copied block by block); returns (sha256, size)."""
        return write_tensor_file(path, [(slot, lambda slot=slot: self._spool.chunks(slot))
                                        for slot in self._slots.values()], {"format": "pt"})


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
