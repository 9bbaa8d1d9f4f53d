"""Forward hooks on the port model: named modules' outputs for the capture plans, every module's first output for
--all-modules.

Recorded CPU tensors of 1 MiB or more are spooled to disk as they are produced and kept as mappings of the spool, so a
full-size forward does not carry its captures in memory (they come back, page by page, when they are compared)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from parity.runtime.tensorfile import Spool
from parity.runtime.tensors import first_tensor

SPOOL_BYTES = 1 << 20
"""Recorded tensors this large or larger are spooled."""


class _Keeper:
    """Keeps recorded outputs: large CPU tensors (alone or in a tuple/list) replaced by mappings of a spool."""

    def __init__(self) -> None:
        self.spool: Spool | None = None

    def __call__(self, value):
        if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.nbytes >= SPOOL_BYTES:
            self.spool = self.spool or Spool()
            slot, _ = self.spool.append("capture", value)
            return self.spool.map(slot)
        if type(value) in (tuple, list):
            return type(value)(self(item) for item in value)
        return value


def main_output(output):
    """A module's main output: a tuple's (or list's) first element, anything else as is."""
    return output[0] if isinstance(output, (tuple, list)) else output


class ForwardHooks:
    """Every call's output of the named port modules (and, for `inputs`, every call's first positional input)."""

    def __init__(self, model, paths: Iterable[str], inputs: Iterable[str] = ()):
        self.outputs: dict[str, list] = {p: [] for p in paths}
        self.inputs: dict[str, list] = {p: [] for p in inputs}
        self.keep = _Keeper()
        self.handles = [model.get_submodule(p).register_forward_hook(self._record_output(p)) for p in self.outputs]
        self.handles += [model.get_submodule(p).register_forward_pre_hook(self._record_input(p)) for p in self.inputs]

    def _record_output(self, path: str):
        def hook(_module, _args, output):
            self.outputs[path].append(self.keep(output))

        return hook

    def _record_input(self, path: str):
        def hook(_module, args):
            self.inputs[path].append(self.keep(args[0]))

        return hook

    def first(self, path: str) -> torch.Tensor:
        """The first call's main output."""
        return main_output(self.outputs[path][0])

    def reset(self) -> None:
        for calls in (*self.outputs.values(), *self.inputs.values()):
            calls.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ModuleOutputs:
    """First output of every port module, for --all-modules."""

    def __init__(self, model):
        self.outputs: dict[str, torch.Tensor] = {}
        self.keep = _Keeper()
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules() if n]

    def _hook(self, name: str):
        def hook(_module, _args, output):
            tensor = first_tensor(output)
            if tensor is not None and name not in self.outputs:
                self.outputs[name] = self.keep(tensor.detach().to("cpu").float())

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
