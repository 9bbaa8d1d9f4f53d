"""The origin environment's steps: generate, dump, import-fixture, recipe (requests from parity.contracts.steps)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from parity.contracts.errors import ParityError
from parity.contracts.family import OriginModule, load_half, recipes_module
from parity.contracts.hashing import sha256_file
from parity.contracts.io import validation_message
from parity.contracts.manifests import CheckpointRecord, DeterminismRecord, EnvironmentRecord
from parity.contracts.paths import use_fixtures_dir
from parity.contracts.recipe import Recipe
from parity.contracts.steps import (
    DumpRequest,
    DumpResponse,
    GenerateRequest,
    GenerateResponse,
    ImportFixtureRequest,
    ImportFixtureResponse,
    RecipeRequest,
    RecipeResponse,
)
from parity.origin.assets import use_assets
from parity.runtime.protocol import progress


def origin_module(recipe: Recipe) -> OriginModule:
    """The family's origin.py, checked against the OriginModule Protocol."""
    return load_half(recipe.family, "origin", OriginModule)


def generate(request: GenerateRequest) -> GenerateResponse:
    if request.recipe.checkpoint.generate is None:
        raise ParityError(f"{request.recipe.id}: generate needs a recipe with checkpoint.generate (a seed)")
    out = request.out
    if out.is_dir():
        raise ParityError(f"{out} is a folder; generate writes one checkpoint file")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        progress("generate: building the original model and re-drawing every tensor")
        origin_module(request.recipe).generate_checkpoint(request.recipe, tmp)
        progress("generate: checkpoint written to a temp file, moving it into place")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return GenerateResponse(checkpoint=out, sha256=sha256_file(out))


def dump(request: DumpRequest) -> DumpResponse:
    from parity.origin import codepaths
    from parity.origin.capture import ModuleRecorder
    from parity.origin.dump import DumpWriter, file_entry
    from parity.origin.images import raw_images
    from parity.runtime.paging import PagedWeights
    from parity.runtime.setup import environment_record, set_determinism
    from parity.runtime.tensorfile import spool_in

    recipe = request.recipe
    origin = origin_module(recipe)
    use_fixtures_dir(request.fixtures)
    use_assets(request.assets)
    determinism = set_determinism(request.device, request.threads)
    with DumpWriter(request.out) as writer:
        progress("loading the original checkpoint with the original code")
        model, state_dict = origin.load_original(recipe, request.checkpoint)
        n_tensors = len(state_dict)
        progress("re-exporting the loaded state dict")
        writer.write_state_dict(state_dict)
        del state_dict
        paged = PagedWeights(model).attach(model)
        if paged.ranges:
            progress(paged.summary("checkpoint"))
        with tempfile.TemporaryDirectory(prefix=f"parity-step-{os.getpid()}-") as staging, spool_in(writer.staging):
            images, files = raw_images(recipe, Path(staging), request.fixtures)
            progress("running the original forward with captures")
            codepaths.clear()
            recorder = ModuleRecorder(model) if request.all_modules else None
            try:
                inputs, refs = origin.run_captures(recipe, model, images, request.device)
            finally:
                paged.remove()
                if recorder is not None:
                    recorder.remove()
            ckpt = file_entry(request.checkpoint)
            progress("writing the dump")
            writer.finish(
                recipe=recipe,
                producer="origin",
                checkpoint=CheckpointRecord(source=request.checkpoint_source, sha256=ckpt.sha256, bytes=ckpt.bytes,
                                            container=recipe.checkpoint.container, n_tensors=n_tensors,
                                            assets={name: file_entry(path) for name, path in request.assets.items()}),
                environment=environment_record(request.device, origin.PACKAGES, origin.UPSTREAM,
                                               codepaths.recorded()),
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
    use_fixtures_dir(request.fixtures)
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


def new_recipe(request: RecipeRequest) -> RecipeResponse:
    """`parity recipe new`: the family's origin.py reads the original project's configuration with the original
    tooling (`read_configuration`), its recipes.py turns that data into a Recipe; a given checkpoint is then loaded
    strictly into the original model the new recipe builds."""
    source = request.source
    origin = load_half(source.family, "origin", OriginModule)
    reader = getattr(origin, "read_configuration", None)
    if reader is None:
        raise ParityError(f"family {source.family!r} has no read_configuration in origin.py: its recipes are made on "
                          "the host")
    progress("reading the original configuration with the original tooling")
    configuration = reader(source)
    try:
        recipe = recipes_module(source.family).new_recipe(source, configuration)
    except ValidationError as exc:
        raise ParityError(f"the recipe made from the configuration is invalid: {validation_message(exc)}") from None
    if source.checkpoint is not None:
        progress("loading the checkpoint into the original model built from the new recipe (strict)")
        origin.load_original(recipe, source.checkpoint)
    return RecipeResponse(recipe=recipe, notes=list(configuration.get("notes", [])))
