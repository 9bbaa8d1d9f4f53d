"""The port model: built on the meta device and filled with the converted tensors (nothing allocated twice, nothing
random-initialised), saved atomically, or an existing port loaded for re-verification."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from parity.contracts.conversion import ConversionRecord
from parity.contracts.errors import ParityError
from parity.contracts.family import PortModule
from parity.contracts.mutations import Mutation
from parity.contracts.paths import safetensors_only_problem
from parity.contracts.recipe import Recipe
from parity.port.mutations import apply_mutation
from parity.port.rules import convert_state_dict
from parity.runtime.protocol import progress


def model_class(recipe: Recipe):
    import transformers

    try:
        return getattr(transformers, recipe.hf.model_class)
    except AttributeError:
        raise ParityError(f"{recipe.id}: transformers has no class {recipe.hf.model_class!r}") from None


def expected_shapes(model) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _unset(dtype: torch.dtype) -> float | int | None:
    """A fill no computed index table or constant holds (None for bool, where every value is legitimate)."""
    if dtype == torch.bool:
        return None
    return float("nan") if dtype.is_floating_point else torch.iinfo(dtype).max


def _still_unset(value: torch.Tensor) -> bool:
    fill = _unset(value.dtype)
    if fill is None:
        return False
    return bool(value.isnan().any() if value.is_floating_point() else (value == fill).any())


def materialise_non_persistent_buffers(model) -> None:
    """Non-persistent buffers (index tables, constants: not weights, never in a state dict) computed as
    `from_pretrained` computes them: materialised on the CPU, then filled by the owning model's own `_init_weights`
    while every weight is still on the meta device (so the initialisers touch nothing else and draw nothing)."""
    from transformers import PreTrainedModel

    owners = {}
    for name, buffer in list(model.named_buffers()):
        owner_path, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_path)
        if buffer.is_meta and leaf in owner._non_persistent_buffers_set:
            fill = _unset(buffer.dtype)
            owner._buffers[leaf] = torch.full(buffer.shape, False if fill is None else fill, dtype=buffer.dtype)
            owners[owner_path] = owner
    for owner_path, owner in owners.items():
        parts = owner_path.split(".")
        enclosing = (model.get_submodule(".".join(parts[:i])) for i in range(len(parts), -1, -1))
        next(m for m in enclosing if isinstance(m, PreTrainedModel))._init_weights(owner)
        for leaf in owner._non_persistent_buffers_set:
            if owner._buffers.get(leaf) is not None and _still_unset(owner._buffers[leaf]):
                raise ParityError(f"non-persistent buffer {owner_path}.{leaf} is not computed by its model's "
                                  "_init_weights")


def build_converted_model(family: PortModule, recipe: Recipe, state: Mapping[str, torch.Tensor],
                          mutation: Mutation | None = None):
    """(model, record); model is None when strict accounting fails (the record says why)."""
    config = family.hf_config(recipe)
    cls = model_class(recipe)
    with torch.device("meta"):
        model = cls(config)
    materialise_non_persistent_buffers(model)
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
            progress("saving the processor")
            processor.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_existing(recipe: Recipe, port: str | Path):
    """An existing port (a save_pretrained folder as a Path, or a hub id), loaded as transformers loads it but from
    safetensors only: the port side never unpickles, so a folder holding only pytorch_model.bin is refused."""
    if isinstance(port, Path):
        if not port.is_dir():
            raise ParityError(f"port folder not found: {port}")
        problem = safetensors_only_problem(port)
        if problem:
            raise ParityError(problem)
    try:
        return model_class(recipe).from_pretrained(str(port), use_safetensors=True).eval()
    except (OSError, ValueError) as exc:
        raise ParityError(f"cannot load port {str(port)!r}: {str(exc).splitlines()[0]}") from None
