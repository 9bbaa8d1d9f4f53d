"""Port-side engine shared by every family: strict weight accounting, meta-device loading, capture diffing, saving.

Runs inside the transformers environment. Never unpickles anything (the hand-off is safetensors) and never imports
an original package. A family's port.py supplies: hf_config(recipe), rules(recipe), port_captures(...), and
processor_checks(...).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from orchestrator.diff import compare, mark_first_divergence, resolve_tolerance
from orchestrator.errors import ParityError
from orchestrator.manifests import (
    CaptureResult,
    ConversionRecord,
    DumpManifest,
    EnvironmentRecord,
    KeyMapping,
    ParityReport,
    ProcessorResult,
    Recipe,
    load_model,
    write_model,
)

PORT_PACKAGES = ("transformers", "torch", "torchvision", "safetensors", "tokenizers", "huggingface_hub", "pillow")


@dataclass(frozen=True)
class Rule:
    """One declared mapping rule: a full-match regex over original keys and what the match becomes."""

    name: str
    pattern: str
    targets: tuple[str, ...]
    op: str = "rename"
    transform: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
    """For split/transpose: original tensor -> one tensor per target."""


def rename(name: str, pattern: str, target: str) -> Rule:
    return Rule(name, pattern, (target,))


def drop(name: str, pattern: str) -> Rule:
    return Rule(name, pattern, (), op="drop")


def convert_state_dict(
    recipe_id: str,
    source: dict[str, torch.Tensor],
    rules: Iterable[Rule],
    expected: dict[str, torch.Size],
) -> tuple[dict[str, torch.Tensor], ConversionRecord]:
    """Apply rules with strict accounting: unclaimed source keys, unfilled targets and bad shapes are all errors."""
    rules = list(rules)
    compiled = [(rule, re.compile(rule.pattern)) for rule in rules]
    converted: dict[str, torch.Tensor] = {}
    mappings: list[KeyMapping] = []
    unused: list[str] = []
    shape_errors: list[str] = []
    for key, tensor in source.items():
        for rule, regex in compiled:
            match = regex.fullmatch(key)
            if match:
                break
        else:
            unused.append(key)
            continue
        targets = [match.expand(t) for t in rule.targets]
        values = rule.transform(tensor) if rule.transform else [tensor] * len(targets)
        for target, value in zip(targets, values):
            if target in converted:
                shape_errors.append(f"{target} written twice (second time from {key})")
            converted[target] = value
        mappings.append(KeyMapping(op=rule.op, rule=rule.name, sources=[key], targets=targets))
    for target, value in converted.items():
        if target in expected and tuple(expected[target]) != tuple(value.shape):
            shape_errors.append(f"{target}: converted {tuple(value.shape)} but the port expects {tuple(expected[target])}")
    unexpected = sorted(set(converted) - set(expected))
    shape_errors.extend(f"{t}: no such tensor in the port model" for t in unexpected)
    record = ConversionRecord(
        recipe_id=recipe_id,
        source_keys=len(source),
        target_keys=len(expected),
        mappings=mappings,
        missing=sorted(set(expected) - set(converted)),
        unused=unused,
        shape_errors=shape_errors,
    )
    return converted, record


def accounting_error(record: ConversionRecord) -> str:
    parts = []
    for label, keys in (("unmapped original keys", record.unused), ("port keys left empty", record.missing),
                        ("shape errors", record.shape_errors)):
        if keys:
            parts.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
    return "strict weight accounting failed: " + "; ".join(parts)


def apply_mutation(state: dict[str, torch.Tensor], mutation: dict) -> None:
    """Deliberate corruption of the converted weights, to prove the comparison catches mapping mistakes."""
    kind, key = mutation["kind"], mutation["key"]
    if key not in state:
        raise ParityError(f"mutation names unknown port key {key!r}")
    if kind == "swap":
        other = mutation["other"]
        state[key], state[other] = state[other].clone(), state[key].clone()
    elif kind == "swap-chunks":
        chunks = list(state[key].chunk(mutation["chunks"], dim=0))
        i, j = mutation["i"], mutation["j"]
        chunks[i], chunks[j] = chunks[j], chunks[i]
        state[key] = torch.cat(chunks, dim=0)
    elif kind == "transpose":
        state[key] = state[key].transpose(0, 1).contiguous()
    elif kind == "zero":
        state[key] = torch.zeros_like(state[key])
    elif kind == "scale":
        state[key] = state[key] * mutation.get("factor", 1.01)
    elif kind == "drop":
        del state[key]
    else:
        raise ParityError(f"unknown mutation kind {kind!r}")


def _verify_file(dump: Path, name: str, sha256: str) -> None:
    digest = hashlib.sha256()
    with open(dump / name, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise ParityError(f"{dump / name} does not match the sha256 in its manifest (edited or corrupted dump)")


def load_tensors(path: Path, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys()) if names is None else list(names)
        return {k: fh.get_tensor(k) for k in keys}


class Dump:
    """A validated dump folder: manifest plus lazily loaded tensors."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not (self.folder / "manifest.json").is_file():
            raise ParityError(f"{self.folder} is not a dump (no manifest.json)")
        self.manifest: DumpManifest = load_model(DumpManifest, self.folder / "manifest.json")
        self.recipe: Recipe = self.manifest.recipe
        _verify_file(self.folder, "state_dict.safetensors", self.manifest.state_dict.sha256)
        self.inputs = load_tensors(self.folder / "inputs.safetensors")
        self.references = load_tensors(self.folder / "reference.safetensors")
        for entries, tensors, label in ((self.manifest.inputs, self.inputs, "input"),
                                        (self.manifest.references, self.references, "reference")):
            missing = [e.name for e in entries if e.name not in tensors]
            if missing:
                raise ParityError(f"{self.folder}: {label} tensors listed in the manifest are missing: {missing[:3]}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.folder / "state_dict.safetensors")

    def raw_image(self, name: str = "image"):
        from PIL import Image

        return Image.open(self.folder / f"{name}.png").convert("RGB")


def port_environment(device: str) -> EnvironmentRecord:
    versions = {}
    for name in PORT_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return EnvironmentRecord(python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
                             cuda=torch.version.cuda, device=device, packages=versions)


def build_converted_model(family, recipe: Recipe, state: dict[str, torch.Tensor], mutation: dict | None):
    """Build the HF model on the meta device and assign converted tensors: nothing is random-initialised."""
    import transformers

    config = family.hf_config(recipe)
    model_class = getattr(transformers, recipe.hf.model_class)
    with torch.device("meta"):
        model = model_class(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, record = convert_state_dict(recipe.id, state, family.rules(recipe), expected)
    if not record.ok:
        return None, record
    if mutation:
        apply_mutation(converted, mutation)
    result = model.load_state_dict(converted, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ParityError(f"loading the converted weights left missing {result.missing_keys[:3]} "
                          f"unexpected {result.unexpected_keys[:3]}")
    _materialise_non_persistent_buffers(model, model_class, config)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise ParityError(f"tensors left on the meta device after loading: {still_meta[:3]}")
    return model.eval(), record


def _materialise_non_persistent_buffers(model, model_class, config) -> None:
    """Non-persistent buffers (index tables, constants) are not weights: take them from a real construction.

    Only runs when the model has such buffers; parameters of the throw-away instance are never copied."""
    pending = [name for name, buf in model.named_buffers() if buf.is_meta]
    if not pending:
        return
    reference = model_class(config)
    buffers = dict(reference.named_buffers())
    for name in pending:
        owner_path, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        owner._buffers[leaf] = buffers[name].detach().clone()


def _save(model, processor, out: Path) -> None:
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


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().to("cpu")
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.numpy()


def diff_captures(recipe: Recipe, dump: Dump, captured: dict[str, tuple[str, torch.Tensor]]) -> list[CaptureResult]:
    results = []
    for entry in dump.manifest.references:
        atol, rtol, reason = resolve_tolerance(recipe.tolerance, entry.name)
        port_name, tensor = captured.get(entry.name, (None, None))
        results.append(compare(entry.name, entry.execution_index, _to_numpy(dump.references[entry.name]),
                               None if tensor is None else _to_numpy(tensor), atol, rtol,
                               port_name=port_name, reason=reason))
    return results


def run_port(dump_dir: Path, out: Path, *, port: str | None, device: str, threads: int, mutation: dict | None,
             save: bool) -> ParityReport:
    """Convert (or load an existing port), run it on the origin's inputs, diff every capture, write the report."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    durations: dict[str, float] = {}
    started = time.perf_counter()
    dump = Dump(dump_dir)
    recipe = dump.recipe
    family = importlib.import_module(f"converters.{recipe.family}.port")
    out.mkdir(parents=True, exist_ok=True)
    report = ParityReport(
        variant=recipe.id, recipe_hash=dump.manifest.recipe_hash, dump=str(dump.folder),
        dump_producer=dump.manifest.producer, port=port or "converted", verdict="error",
        origin_environment=dump.manifest.environment, port_environment=port_environment(device),
        checkpoint_sha256=dump.manifest.checkpoint.sha256,
    )
    try:
        if port is None:
            _progress("converting the original state dict (strict accounting)")
            model, record = build_converted_model(family, recipe, dump.state_dict(), mutation)
            report.conversion = record
            write_model(record, out / "conversion.json")
            if model is None:
                raise ParityError(accounting_error(record))
        else:
            model = _load_existing(recipe, port)
        durations["convert"] = time.perf_counter() - started
        model = model.to(device)
        processor = family.build_processor(recipe)
        _progress("running the port on the origin's inputs")
        t0 = time.perf_counter()
        with torch.no_grad():
            captured = family.port_captures(recipe, model, processor, dump, device)
        durations["forward"] = time.perf_counter() - t0
        results = diff_captures(recipe, dump, captured)
        report.first_divergence = mark_first_divergence(results)
        report.captures = results
        report.verdict = "fail" if report.first_divergence else "pass"
        report.processor = _processor_verdict(family, recipe, processor, dump)
        if save and port is None and mutation is None:
            _progress("saving the converted model (save_pretrained)")
            t0 = time.perf_counter()
            _save(model.to("cpu"), processor, out / "hf")
            durations["save"] = time.perf_counter() - t0
    except ParityError as exc:
        report.verdict = "error"
        report.error = str(exc)
    durations["total"] = time.perf_counter() - started
    report.durations = durations
    write_model(report, out / "report.json")
    return report


def _processor_verdict(family, recipe: Recipe, processor, dump: Dump) -> ProcessorResult:
    try:
        checks, note = family.processor_checks(recipe, processor, dump)
    except Exception as exc:  # the processor is reported on, it never hides the model verdict
        return ProcessorResult(processor=type(processor).__name__, verdict="error", checks=[],
                               note=f"{type(exc).__name__}: {exc}")
    results = []
    atol, rtol = recipe.tolerance.defaults()
    for index, (name, port_name, origin, port) in enumerate(checks):
        results.append(compare(name, index, _to_numpy(origin), _to_numpy(port), atol, rtol, port_name=port_name))
    verdict = "pass" if all(r.verdict == "pass" for r in results) else "fail"
    return ProcessorResult(processor=note["processor"], verdict=verdict, checks=results, note=note.get("note"))


def _load_existing(recipe: Recipe, port: str):
    import transformers

    model_class = getattr(transformers, recipe.hf.model_class)
    try:
        return model_class.from_pretrained(port).eval()
    except OSError as exc:
        raise ParityError(f"cannot load port {port!r}: {str(exc).splitlines()[0]}") from None


def _progress(message: str) -> None:
    print(f"parity-progress: {message}", file=sys.stderr, flush=True)
