"""Port-side engine shared by every family: strict weight accounting, meta-device loading, capture diffing, saving.

Runs inside the transformers environment. Never unpickles anything (the hand-off is safetensors) and never imports
an original package. A family's port.py supplies: hf_config(recipe), rules(recipe), port_captures(...), and
processor_checks(...).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
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
    Heatmap,
    KeyMapping,
    MutationResult,
    ParityReport,
    ProcessorResult,
    Recipe,
    TolerancePolicy,
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
    if kind != "swap-prefix" and key not in state:
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
    elif kind == "swap-prefix":
        first, second = key, mutation["other"]
        moved = {k: v for k, v in state.items() if k.startswith(first) or k.startswith(second)}
        for name, tensor in moved.items():
            swapped = second + name[len(first):] if name.startswith(first) else first + name[len(second):]
            state[swapped] = tensor
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


def effective_policy(policy: TolerancePolicy, device: str) -> TolerancePolicy:
    """A recipe written for fp32 on CPU is judged by the fp32-cuda profile when it runs on a GPU (TF32 stays off)."""
    if device.startswith("cuda") and policy.profile == "fp32-cpu":
        return policy.model_copy(update={"profile": "fp32-cuda"})
    return policy


def diff_captures(policy: TolerancePolicy, dump: Dump, captured: dict[str, tuple[str, torch.Tensor]]
                  ) -> list[CaptureResult]:
    results = []
    for entry in dump.manifest.references:
        atol, rtol, reason = resolve_tolerance(policy, entry.name)
        port_name, tensor = captured.get(entry.name, (None, None))
        results.append(compare(entry.name, entry.execution_index, _to_numpy(dump.references[entry.name]),
                               None if tensor is None else _to_numpy(tensor), atol, rtol,
                               port_name=port_name, reason=reason))
    return results


def derive_module_pairs(record: ConversionRecord) -> list[tuple[str, str]]:
    """Module correspondences implied by the weight mapping.

    The owners of a source and a target tensor correspond. Their ancestors are walked up in step while both paths
    have the same depth, or (when an extra level exists on one side, e.g. an MLP's `layers.0` -> `proj_in`) only
    while the trailing names agree; a pair is kept when every mapping agrees on it (original blocks.3 -> port
    layers.3 always, and no second original module claims the same port module)."""
    candidates: dict[str, set[str]] = {}
    owners: set[tuple[str, str]] = set()
    for mapping in record.mappings:
        if mapping.op == "drop":
            continue
        for source in mapping.sources:
            for target in mapping.targets:
                src, tgt = source.rpartition(".")[0], target.rpartition(".")[0]
                owners.add((src, tgt))
                while src and tgt:
                    candidates.setdefault(src, set()).add(tgt)
                    same_depth = src.count(".") == tgt.count(".")
                    if not same_depth and src.rpartition(".")[2] != tgt.rpartition(".")[2]:
                        break
                    src, tgt = src.rpartition(".")[0], tgt.rpartition(".")[0]
    claimed: dict[str, int] = {}
    for targets in candidates.values():
        for target in targets:
            claimed[target] = claimed.get(target, 0) + 1
    pairs = set(owners)
    for src, targets in candidates.items():
        if len(targets) == 1:
            (tgt,) = targets
            if claimed[tgt] == 1:
                pairs.add((src, tgt))
    return sorted(pairs)


LAYOUTS: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("NHWC -> NCHW", 4, (0, 3, 1, 2)),
    ("NCHW -> NHWC", 4, (0, 2, 3, 1)),
    ("batch-first <-> sequence-first", 3, (1, 0, 2)),
)


def _adapt_layout(origin: np.ndarray, port: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Generic layout adapters for derived module pairs, applied only when exactly one makes the shapes agree:
    dropping singleton axes (batch-of-one prompt axes, tuple outputs), NHWC <-> NCHW, sequence- vs batch-first."""
    if origin.shape == port.shape:
        return port, None
    if origin.size == port.size and [d for d in origin.shape if d != 1] == [d for d in port.shape if d != 1]:
        return port.reshape(origin.shape), f"reshaped {list(port.shape)} -> {list(origin.shape)}"
    fits = [(name, axes) for name, ndim, axes in LAYOUTS
            if port.ndim == ndim and tuple(port.shape[a] for a in axes) == origin.shape]
    if len(fits) == 1:
        name, axes = fits[0]
        return port.transpose(axes), name
    return port, None


def diff_modules(policy: TolerancePolicy, dump: Dump, record: ConversionRecord, port_outputs: dict[str, torch.Tensor]
                 ) -> tuple[list[CaptureResult], list[str]]:
    origin_outputs = load_tensors(dump.folder / "modules.safetensors")
    order = {entry.name: entry.execution_index for entry in dump.manifest.modules}
    results, paired_origin, paired_port = [], set(), set()
    for src, tgt in derive_module_pairs(record):
        if src not in origin_outputs or tgt not in port_outputs:
            continue
        paired_origin.add(src)
        paired_port.add(tgt)
        origin = _to_numpy(origin_outputs[src])
        port, note = _adapt_layout(origin, _to_numpy(port_outputs[tgt]))
        atol, rtol, reason = resolve_tolerance(policy, src)
        result = compare(src, order[src], origin, port, atol, rtol, port_name=tgt, reason=reason)
        result.note = note
        results.append(result)
    unpaired = [f"original {name}" for name in origin_outputs if name not in paired_origin]
    unpaired += [f"port {name}" for name in port_outputs if name not in paired_port]
    return results, unpaired


def heatmap(dump: Dump, captured: dict[str, tuple[str, torch.Tensor]], results: list[CaptureResult],
            cells: int = 48) -> Heatmap | None:
    """Block maxima of |diff| for the capture needing the largest atol, folded to 2-D."""
    candidates = [r for r in results if r.atol_needed is not None and r.name in captured]
    if not candidates:
        return None
    worst = max(candidates, key=lambda r: (r.verdict != "pass", r.atol_needed))
    origin = _to_numpy(dump.references[worst.name]).astype(np.float64)
    diff = np.abs(_to_numpy(captured[worst.name][1]).astype(np.float64).reshape(origin.shape) - origin)
    grid = diff.reshape(-1, diff.shape[-1]) if diff.ndim >= 2 else diff.reshape(1, -1)
    rows = -(-grid.shape[0] // cells)
    cols = -(-grid.shape[1] // cells)
    padded = np.zeros((-(-grid.shape[0] // rows) * rows, -(-grid.shape[1] // cols) * cols))
    padded[: grid.shape[0], : grid.shape[1]] = grid
    blocks = padded.reshape(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols).max(axis=(1, 3))
    return Heatmap(capture=worst.name, shape=list(blocks.shape), source_shape=list(origin.shape),
                   values=[[float(v) for v in row] for row in blocks])


class ForwardHooks:
    """Every call's output of the named port modules (and, for `inputs`, every call's first positional input)."""

    def __init__(self, model, paths: Iterable[str], inputs: Iterable[str] = ()):
        self.outputs: dict[str, list] = {p: [] for p in paths}
        self.inputs: dict[str, list] = {p: [] for p in inputs}
        self.handles = [model.get_submodule(p).register_forward_hook(self._record_output(p)) for p in self.outputs]
        self.handles += [model.get_submodule(p).register_forward_pre_hook(self._record_input(p)) for p in self.inputs]

    def _record_output(self, path: str):
        def hook(_module, _args, output):
            self.outputs[path].append(output)

        return hook

    def _record_input(self, path: str):
        def hook(_module, args):
            self.inputs[path].append(args[0])

        return hook

    def first(self, path: str) -> torch.Tensor:
        """The first call's main output (a tuple's first element)."""
        output = self.outputs[path][0]
        return output[0] if isinstance(output, tuple) else output

    def reset(self) -> None:
        for calls in (*self.outputs.values(), *self.inputs.values()):
            calls.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _ModuleOutputs:
    """First output of every port module, for --all-modules."""

    def __init__(self, model):
        from converters.dumping import first_tensor

        self.outputs: dict[str, torch.Tensor] = {}

        def hook_for(name):
            def hook(_module, _args, output):
                tensor = first_tensor(output)
                if tensor is not None and name not in self.outputs:
                    self.outputs[name] = tensor.detach().to("cpu").float()

            return hook

        self.handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _setup(device: str, threads: int) -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def run_port(dump_dir: Path, out: Path, *, port: str | None, device: str, threads: int, mutation: dict | None,
             save: bool, all_modules: bool = False) -> ParityReport:
    """Convert (or load an existing port), run it on the origin's inputs, diff every capture, write the report."""
    _setup(device, threads)
    durations: dict[str, float] = {}
    started = time.perf_counter()
    dump = Dump(dump_dir)
    if all_modules and not dump.manifest.modules:
        raise ParityError(f"{dump.folder} has no module captures: dump again with --all-modules")
    recipe = dump.recipe
    policy = effective_policy(recipe.tolerance, device)
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
            record = None
        durations["convert"] = time.perf_counter() - started
        model = model.to(device)
        processor = family.build_processor(recipe)
        _progress("running the port on the origin's inputs")
        t0 = time.perf_counter()
        recorder = _ModuleOutputs(model) if all_modules else None
        try:
            with torch.no_grad():
                captured = family.port_captures(recipe, model, processor, dump, device)
        finally:
            if recorder is not None:
                recorder.remove()
        durations["forward"] = time.perf_counter() - t0
        results = diff_captures(policy, dump, captured)
        report.first_divergence = mark_first_divergence(results)
        report.captures = results
        report.verdict = "fail" if report.first_divergence else "pass"
        report.heatmap = heatmap(dump, captured, results)
        if recorder is not None:
            if record is None:
                expected = {k: v.shape for k, v in model.state_dict().items()}
                _, record = convert_state_dict(recipe.id, dump.state_dict(), family.rules(recipe), expected)
            modules, report.unpaired = diff_modules(policy, dump, record, recorder.outputs)
            report.modules = sorted(modules, key=lambda r: r.execution_index)
            # A shape mismatch between derived pairs means the two modules are called differently (e.g. SAM's
            # shared positional-encoding layer), not that a weight is wrong: it is shown, not chased.
            report.module_first_divergence = mark_first_divergence(
                [m for m in report.modules if m.verdict != "shape-mismatch"])
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


def run_mutations(dump_dir: Path, out: Path, mutations: list[dict], *, device: str, threads: int
                  ) -> list[MutationResult]:
    """The harness's own test: corrupt the converted weights one way at a time; parity must notice each."""
    _setup(device, threads)
    dump = Dump(dump_dir)
    recipe = dump.recipe
    policy = effective_policy(recipe.tolerance, device)
    family = importlib.import_module(f"converters.{recipe.family}.port")
    state = dump.state_dict()
    processor = family.build_processor(recipe)
    results = []
    for index, mutation in enumerate(mutations):
        _progress(f"mutation {index + 1}/{len(mutations)}: {mutation['kind']} {mutation['key']}")
        try:
            model, record = build_converted_model(family, recipe, state, mutation)
            if model is None:
                raise ParityError(accounting_error(record))
            with torch.no_grad():
                captured = family.port_captures(recipe, model.to(device), processor, dump, device)
            captures = diff_captures(policy, dump, captured)
            first = mark_first_divergence(captures)
            results.append(MutationResult(mutation=mutation, verdict="fail" if first else "pass",
                                          first_divergence=first))
        except ParityError as exc:
            results.append(MutationResult(mutation=mutation, verdict="error", error=str(exc)))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".mutations.json.tmp"
    tmp.write_text(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
    tmp.replace(out / "mutations.json")
    return results


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
