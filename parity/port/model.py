"""The port model: built with its weights on the meta device and filled with the converted tensors (nothing
random-initialised, one copy of the weights), saved atomically, or an existing port loaded for re-verification."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from parity.contracts.conversion import ConversionRecord
from parity.contracts.errors import ParityError
from parity.contracts.family import PortModule
from parity.contracts.mutations import Mutation
from parity.contracts.recipe import Recipe
from parity.port.mutations import apply_mutation
from parity.port.rules import convert_state_dict


def model_class(recipe: Recipe):
    import transformers

    try:
        return getattr(transformers, recipe.hf.model_class)
    except AttributeError:
        raise ParityError(f"{recipe.id}: transformers has no class {recipe.hf.model_class!r}") from None


def expected_shapes(model) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


@contextlib.contextmanager
def weights_on_meta() -> Iterator[None]:
    """Construction with every parameter and persistent buffer moved to the meta device as it is registered, so no
    weight is allocated or initialised (initialisers run on meta tensors and do nothing); non-persistent buffers
    (index tables, constants: not weights, never in a state dict) stay real, computed by the model's own code."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        if persistent and tensor is not None:
            tensor = tensor.to("meta")
        register_buffer(module, name, tensor, persistent=persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def build_converted_model(family: PortModule, recipe: Recipe, state: Mapping[str, torch.Tensor],
                          mutation: Mutation | None = None):
    """(model, record); model is None when strict accounting fails (the record says why)."""
    config = family.hf_config(recipe)
    cls = model_class(recipe)
    with weights_on_meta():
        model = cls(config)
    converted, record = convert_state_dict(recipe.id, state, family.rules(recipe), expected_shapes(model))
    if not record.ok:
        return None, record
    if mutation is not None:
        apply_mutation(converted, mutation)
    result = model.load_state_dict(converted, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ParityError(f"loading the converted weights left missing {result.missing_keys[:3]} "
                          f"unexpected {result.unexpected_keys[:3]}")
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise ParityError(f"tensors left on the meta device after loading: {still_meta[:3]}")
    return model.eval(), record


def conversion_record(family: PortModule, recipe: Recipe, model, state: Mapping[str, torch.Tensor]
                      ) -> ConversionRecord:
    """The weight mapping of an existing port (for --all-modules pairing), without building anything."""
    return convert_state_dict(recipe.id, state, family.rules(recipe), expected_shapes(model))[1]


def save_port(model, processor, out: Path) -> None:
    """save_pretrained into a temp folder, then rename: a half-written model folder never exists."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_existing(recipe: Recipe, port: str):
    """An existing port (save_pretrained folder or hub id), loaded as transformers loads it."""
    try:
        return model_class(recipe).from_pretrained(port).eval()
    except OSError as exc:
        raise ParityError(f"cannot load port {port!r}: {str(exc).splitlines()[0]}") from None
