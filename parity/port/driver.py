"""The port step, one driver for both modes: report mode (convert or load, run, diff, report, save) and self-test mode
(one conversion per mutation, each judged the same way; the response lists what parity concluded)."""

from __future__ import annotations

import time

import torch

from parity.contracts.conversion import ConversionRecord
from parity.contracts.errors import ParityError
from parity.contracts.family import PortModule, load_half
from parity.contracts.io import write_model
from parity.contracts.metrics import mark_first_divergence
from parity.contracts.mutations import Mutation
from parity.contracts.recipe import Recipe
from parity.contracts.report import CaptureResult, MutationResult, ParityReport
from parity.contracts.steps import PortRequest, PortResponse
from parity.port.diffing import (
    Captured,
    Judge,
    capture_findings,
    diff_captures,
    heatmap,
    judged_pairs,
    nonfinite_counts,
    nonfinite_findings,
    processor_verdict,
)
from parity.port.dump import Dump
from parity.port.hooks import ModuleOutputs
from parity.port.model import build_converted_model, conversion_record, load_existing, save_port
from parity.port.pairing import diff_modules
from parity.runtime.paging import PagedWeights, trim_heap
from parity.runtime.protocol import progress
from parity.runtime.setup import environment_record, set_determinism
from parity.runtime.tensorfile import spool_in

PORT_PACKAGES = ("transformers", "torch", "torchvision", "safetensors", "tokenizers", "huggingface_hub", "pillow")


def port_module(recipe: Recipe) -> PortModule:
    """The family's port.py, checked against the PortModule Protocol."""
    return load_half(recipe.family, "port", PortModule)


def _judge_forward(family: PortModule, recipe: Recipe, model, processor, dump: Dump, judge: Judge, device: str
                   ) -> tuple[Captured, list[CaptureResult], str | None]:
    """Run the port's capture plan on the dump's inputs and judge every capture (shared by both modes)."""
    with torch.no_grad():
        captured = family.port_captures(recipe, model.to(device), processor, dump, device)
    results = diff_captures(judge, dump, captured)
    return captured, results, mark_first_divergence(results)


def _mutation_result(family, recipe, state, processor, dump, judge, device, mutation: Mutation) -> MutationResult:
    try:
        model, record = build_converted_model(family, recipe, state, mutation)
        if model is None:
            raise ParityError(record.error_line())
        _, _, first = _judge_forward(family, recipe, model, processor, dump, judge, device)
        return MutationResult(mutation=mutation, verdict="fail" if first else "pass", first_divergence=first)
    except ParityError as exc:
        return MutationResult(mutation=mutation, verdict="error", error=str(exc))


def run(request: PortRequest) -> PortResponse:
    request.out.mkdir(parents=True, exist_ok=True)
    with spool_in(request.out):
        return _run(request)


def _run(request: PortRequest) -> PortResponse:
    set_determinism(request.device, request.threads)
    dump = Dump(request.dump)
    if request.recipe is not None:
        differs = dump.recipe.differs_in_computation(request.recipe)
        if differs:
            raise ParityError(f"the request's recipe describes another original computation than {dump.folder} "
                              f"({differs} differs)")
        dump.recipe = request.recipe
    recipe = dump.recipe
    if request.all_modules and not dump.manifest.modules:
        raise ParityError(f"{dump.folder} has no module captures: dump again with --all-modules")
    family = port_module(recipe)
    judge = Judge.for_dump(dump, request.device, request.registry_tolerance)
    processor = family.build_processor(recipe)
    if request.mutations:
        state = dump.state_dict()
        results = []
        for index, mutation in enumerate(request.mutations):
            progress(f"mutation {index + 1}/{len(request.mutations)}: {mutation.label()}")
            results.append(_mutation_result(family, recipe, state, processor, dump, judge, request.device, mutation))
        return PortResponse(mutations=results)
    report, record = _report(request, dump, family, judge, processor)
    # report.json is written last: a conversion.json or hf/ without it is an interrupted run's (swept at the next start)
    if record is not None:
        write_model(record, request.out / "conversion.json")
    write_model(report, request.out / "report.json")
    return PortResponse(report=request.out / "report.json", verdict=report.verdict)


def _report(request: PortRequest, dump: Dump, family: PortModule, judge: Judge, processor
            ) -> tuple[ParityReport, ConversionRecord | None]:
    """The report and the conversion record (when one was made); the converted model is saved (hf/) only when the
    run reached a verdict."""
    recipe = dump.recipe
    started = time.perf_counter()
    durations: dict[str, float] = {}
    facts = dict(recipe_id=recipe.id, recipe_hash=dump.manifest.recipe_hash, dump=str(dump.folder),
                 dump_producer=dump.manifest.producer, port=request.port or "converted", device=request.device,
                 origin_environment=dump.manifest.environment,
                 port_environment=environment_record(request.device, PORT_PACKAGES),
                 checkpoint_sha256=dump.manifest.checkpoint.sha256, registry_recipe_hash=request.registry_recipe_hash)
    record = None
    try:
        if request.port is None:
            progress("converting the original state dict (strict accounting)")
            state, check = dump.read_state_dict()
            try:
                model, record = build_converted_model(family, recipe, state, request.mutate)
            except Exception:
                check.result()  # an edited state dict is the error to report, not what converting it did
                raise
            findings = nonfinite_findings(judge, "weight", check.result())
            if model is None:
                raise ParityError(record.error_line())
            paged = PagedWeights(model).attach(model)
            if paged.ranges:
                progress(paged.summary("dump"))
        else:
            model = load_existing(recipe, request.local_port() or request.port)
            findings = nonfinite_findings(judge, "weight", nonfinite_counts(model.state_dict()))
        findings += nonfinite_findings(judge, "input", nonfinite_counts(dump.inputs))
        durations["convert"] = time.perf_counter() - started
        progress("running the port on the origin's inputs")
        t0 = time.perf_counter()
        recorder = ModuleOutputs(model) if request.all_modules else None
        try:
            captured, results, first = _judge_forward(family, recipe, model, processor, dump, judge, request.device)
        finally:
            if recorder is not None:
                recorder.remove()
        durations["forward"] = time.perf_counter() - t0
        extra = {}
        if recorder is not None:
            module_record = record or conversion_record(family, recipe, model, dump.state_dict())
            modules, extra["unpaired"] = diff_modules(judge, dump, module_record, recorder.outputs)
            extra["modules"] = sorted(modules, key=lambda r: r.execution_index)
            # A shape mismatch between derived pairs means the two modules are called differently (e.g. SAM's
            # shared positional-encoding layer), not that a weight is wrong: it is shown, not chased.
            extra["module_first_divergence"] = mark_first_divergence(
                [m for m in extra["modules"] if m.verdict != "shape-mismatch"])
        processor_result, processor_pairs = processor_verdict(judge, family, recipe, processor, dump)
        findings += capture_findings(results, "reference", "port")
        findings += capture_findings(processor_result.checks, "processor-original", "processor-port")
        names = [r.name for r in results] + [c.name for c in processor_result.checks] + \
            [f.name for f in findings if f.where == "weight"]
        widened = judge.widened(names, {**judged_pairs(dump, captured), **processor_pairs})
        failed = first is not None or any(f.declared is None for f in findings)
        report = ParityReport(**facts, verdict="fail" if failed else "pass", first_divergence=first, captures=results,
                              heatmap=heatmap(dump, captured, results), processor=processor_result,
                              conversion=record if request.port is None else None, nonfinite=findings,
                              tolerance_widened=widened, **extra)
        del captured  # its spool mappings, read by the comparisons, would stay resident while the weights are saved
        trim_heap()
        if request.save and request.port is None and request.mutate is None:
            progress("saving the converted model (save_pretrained)")
            t0 = time.perf_counter()
            save_port(model.to("cpu"), processor, request.out / "hf")
            durations["save"] = time.perf_counter() - t0
    except ParityError as exc:
        report = ParityReport(**facts, verdict="error", error=str(exc), conversion=record)
    durations["total"] = time.perf_counter() - started
    report.durations = durations
    return report, record
