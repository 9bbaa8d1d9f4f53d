"""The origin environment's steps: generate, dump, import-fixture (requests from parity.contracts.steps)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from parity.contracts.errors import ParityError
from parity.contracts.family import OriginModule, load_half
from parity.contracts.hashing import sha256_file
from parity.contracts.manifests import CheckpointRecord, DeterminismRecord, EnvironmentRecord
from parity.contracts.recipe import Recipe
from parity.contracts.steps import (
    DumpRequest,
    DumpResponse,
    GenerateRequest,
    GenerateResponse,
    ImportFixtureRequest,
    ImportFixtureResponse,
)
from parity.runtime.protocol import progress


def origin_module(recipe: Recipe) -> OriginModule:
    """The family's origin.py, checked against the OriginModule Protocol."""
    return load_half(recipe.family, "origin", OriginModule)


def generate(request: GenerateRequest) -> GenerateResponse:
    if request.recipe.checkpoint.generate is None:
        raise ParityError(f"{request.recipe.id}: generate needs a recipe with checkpoint.generate (a seed)")
    out = request.out
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        origin_module(request.recipe).generate_checkpoint(request.recipe, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return GenerateResponse(checkpoint=out, sha256=sha256_file(out))


def dump(request: DumpRequest) -> DumpResponse:
    from parity.origin.capture import ModuleRecorder
    from parity.origin.dump import DumpWriter, file_entry
    from parity.origin.images import raw_images
    from parity.runtime.setup import environment_record, set_determinism
    from parity.runtime.tensorfile import spool_in

    recipe = request.recipe
    origin = origin_module(recipe)
    determinism = set_determinism(request.device, request.threads)
    with DumpWriter(request.out) as writer:
        progress("loading the original checkpoint with the original code")
        model, state_dict = origin.load_original(recipe, request.checkpoint)
        n_tensors = len(state_dict)
        progress("re-exporting the loaded state dict")
        writer.write_state_dict(state_dict)
        del state_dict
        with tempfile.TemporaryDirectory() as staging, spool_in(writer.staging):
            images, files = raw_images(recipe, Path(staging), request.fixtures)
            progress("running the original forward with captures")
            recorder = ModuleRecorder(model) if request.all_modules else None
            try:
                inputs, refs = origin.run_captures(recipe, model, images, request.device)
            finally:
                if recorder is not None:
                    recorder.remove()
            ckpt = file_entry(request.checkpoint)
            progress("writing the dump")
            writer.finish(
                recipe=recipe,
                producer="origin",
                checkpoint=CheckpointRecord(source=request.checkpoint_source, sha256=ckpt.sha256, bytes=ckpt.bytes,
                                            container=recipe.checkpoint.container, n_tensors=n_tensors),
                environment=environment_record(request.device, origin.PACKAGES, origin.UPSTREAM),
                determinism=determinism,
                inputs=inputs,
                references=refs,
                raw_files=files,
                modules=recorder.log if recorder is not None else None,
            )
    return DumpResponse(dump=request.out, references=len(refs.entries))


def import_fixture(request: ImportFixtureRequest) -> ImportFixtureResponse:
    """A golden fixture becomes a dump: the original loader re-exports the state dict, tensors are copied as made."""
    import torch
    from safetensors.torch import load_file

    from parity.origin.capture import CaptureLog
    from parity.origin.dump import DumpWriter, file_entry
    from parity.runtime.tensorfile import spool_in

    recipe = request.recipe
    fixture = request.fixture
    meta = json.loads((fixture / "fixture.json").read_text())
    checkpoint = fixture / recipe.checkpoint.filename
    ckpt = file_entry(checkpoint)
    if recipe.checkpoint.sha256 and ckpt.sha256 != recipe.checkpoint.sha256:
        raise ParityError(f"fixture checkpoint {checkpoint} has sha256 {ckpt.sha256}, recipe pins {recipe.checkpoint.sha256}")
    if (fixture / "state_dict.safetensors").is_file():
        progress("reading the fixture's re-exported state dict")
        state_dict = load_file(str(fixture / "state_dict.safetensors"))
    else:
        progress("reading the fixture checkpoint with the family's original loading recipe")
        state_dict = origin_module(recipe).fixture_state_dict(recipe, checkpoint)

    def log_from(file: str, entries: list[dict]) -> CaptureLog:
        tensors = load_file(str(fixture / file))
        log = CaptureLog()
        for entry in entries:
            log.add(entry["key"], tensors[entry["key"]], module=entry.get("origin"), layout=entry.get("layout"),
                    meaning=entry.get("meaning"))
        return log

    env = meta["environment"]
    known = {"python", "torch", "device", "platform"}
    with DumpWriter(request.out) as writer, spool_in(writer.staging):
        writer.write_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state_dict.items()})
        writer.finish(
            recipe=recipe,
            producer="fixture",
            checkpoint=CheckpointRecord(source=f"fixture {fixture.name}/{checkpoint.name}", sha256=ckpt.sha256,
                                        bytes=ckpt.bytes, container=recipe.checkpoint.container,
                                        n_tensors=len(state_dict)),
            environment=EnvironmentRecord(
                python=env.get("python", "?"), platform=env.get("platform", "?"), torch=env.get("torch"),
                device=env.get("device", "cpu"), upstream=f"{meta['upstream']['repo']} @ {meta['upstream']['commit']}",
                packages={k: str(v) for k, v in env.items() if k not in known},
            ),
            determinism=DeterminismRecord(deterministic_algorithms=True,
                                          num_threads=int(env.get("torch_num_threads", 1)), tf32=False,
                                          dtype=str(env.get("dtype", "float32"))),
            inputs=log_from("inputs.safetensors", meta["inputs"]),
            references=log_from("reference.safetensors", meta["references"]),
            raw_files={p.name: p for p in sorted(fixture.glob("image*.png"))},
        )
    return ImportFixtureResponse(dump=request.out)
