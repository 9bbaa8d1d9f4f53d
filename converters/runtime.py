"""Entry point that runs INSIDE an environment: `python -m converters.runtime <verb> ...`.

Origin verbs (origin env): generate, dump, import-fixture. Port verb (transformers env): port.
A ParityError ends the process with its one-line message on stderr after the marker the host looks for.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

from orchestrator.errors import ParityError
from orchestrator.manifests import CheckpointRecord, Recipe, load_model

ERROR_MARKER = "parity: error: "
PROGRESS_MARKER = "parity-progress: "


def progress(message: str) -> None:
    print(f"{PROGRESS_MARKER}{message}", file=sys.stderr, flush=True)


def fixtures_dir() -> Path:
    configured = os.environ.get("PARITY_FIXTURES")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


def _origin(recipe: Recipe):
    return importlib.import_module(f"converters.{recipe.family}.origin")


def _raw_images(recipe: Recipe, staging: Path) -> tuple[dict, dict[str, Path]]:
    import numpy as np
    from PIL import Image

    from converters.dumping import synthetic_image

    arrays, files = {}, {}
    for spec in recipe.inputs.images:
        if spec.kind == "synthetic":
            array = synthetic_image(spec.seed, spec.height, spec.width)
            path = staging / f"{spec.name}.png"
            Image.fromarray(array).save(path, format="PNG")
        else:
            path = fixtures_dir() / spec.fixture / spec.filename
            if not path.is_file():
                raise ParityError(f"fixture image not found: {path}")
        arrays[spec.name] = np.asarray(Image.open(path).convert("RGB"))
        files[f"{spec.name}.png"] = path
    return arrays, files


def cmd_generate(args: argparse.Namespace) -> None:
    recipe = load_model(Recipe, args.recipe)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    _origin(recipe).generate_checkpoint(recipe, tmp)
    tmp.replace(out)


def cmd_dump(args: argparse.Namespace) -> None:
    from converters.dumping import ModuleRecorder, environment_record, file_entry, set_determinism, write_dump

    recipe = load_model(Recipe, args.recipe)
    origin = _origin(recipe)
    determinism = set_determinism(args.device, args.threads)
    checkpoint = Path(args.checkpoint)
    progress("loading the original checkpoint with the original code")
    model, state_dict = origin.load_original(recipe, checkpoint)
    with tempfile.TemporaryDirectory() as staging:
        images, files = _raw_images(recipe, Path(staging))
        progress("running the original forward with captures")
        recorder = ModuleRecorder(model) if args.all_modules else None
        try:
            inputs, refs = origin.run_captures(recipe, model, images, args.device)
        finally:
            if recorder is not None:
                recorder.remove()
        ckpt = file_entry(checkpoint)
        progress("writing the dump")
        write_dump(
            Path(args.out),
            recipe=recipe,
            producer="origin",
            checkpoint=CheckpointRecord(
                source=args.checkpoint_source, sha256=ckpt.sha256, bytes=ckpt.bytes,
                container=recipe.checkpoint.container, n_tensors=len(state_dict),
            ),
            environment=environment_record(args.device, origin.PACKAGES, origin.UPSTREAM),
            determinism=determinism,
            state_dict=state_dict,
            inputs=inputs,
            references=refs,
            raw_files=files,
            modules=recorder.log if recorder is not None else None,
        )


def cmd_import_fixture(args: argparse.Namespace) -> None:
    """A golden fixture becomes a dump: the original loader re-exports the state dict, tensors are copied as made."""
    import torch
    from safetensors.torch import load_file

    from converters.dumping import CaptureLog, file_entry, write_dump
    from orchestrator.manifests import DeterminismRecord, EnvironmentRecord

    recipe = load_model(Recipe, args.recipe)
    fixture = Path(args.fixture)
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
        state_dict = _origin(recipe).fixture_state_dict(recipe, checkpoint)

    def log_from(file: str, entries: list[dict]) -> CaptureLog:
        tensors = load_file(str(fixture / file))
        log = CaptureLog()
        for entry in entries:
            log.add(entry["key"], tensors[entry["key"]], module=entry.get("origin"), layout=entry.get("layout"),
                    meaning=entry.get("meaning"))
        return log

    env = meta["environment"]
    known = {"python", "torch", "device", "platform"}
    write_dump(
        Path(args.out),
        recipe=recipe,
        producer="fixture",
        checkpoint=CheckpointRecord(source=f"fixture {fixture.name}/{checkpoint.name}", sha256=ckpt.sha256,
                                    bytes=ckpt.bytes, container=recipe.checkpoint.container, n_tensors=len(state_dict)),
        environment=EnvironmentRecord(
            python=env.get("python", "?"), platform=env.get("platform", "?"), torch=env.get("torch"),
            device=env.get("device", "cpu"), upstream=f"{meta['upstream']['repo']} @ {meta['upstream']['commit']}",
            packages={k: str(v) for k, v in env.items() if k not in known},
        ),
        determinism=DeterminismRecord(deterministic_algorithms=True, num_threads=int(env.get("torch_num_threads", 1)),
                                      tf32=False, dtype=str(env.get("dtype", "float32"))),
        state_dict={k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state_dict.items()},
        inputs=log_from("inputs.safetensors", meta["inputs"]),
        references=log_from("reference.safetensors", meta["references"]),
        raw_files={p.name: p for p in sorted(fixture.glob("image*.png"))},
    )


def cmd_port(args: argparse.Namespace) -> None:
    from converters.porting import run_port

    from converters.porting import run_mutations

    if args.mutations:
        run_mutations(Path(args.dump), Path(args.out), json.loads(Path(args.mutations).read_text()),
                      device=args.device, threads=args.threads)
        return
    mutation = json.loads(args.mutate) if args.mutate else None
    run_port(Path(args.dump), Path(args.out), port=args.port, device=args.device, threads=args.threads,
             mutation=mutation, save=not args.no_save, all_modules=args.all_modules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="converters.runtime")
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("generate")
    p.add_argument("--recipe", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_generate)
    p = verbs.add_parser("dump")
    for flag in ("--recipe", "--checkpoint", "--checkpoint-source", "--out"):
        p.add_argument(flag, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--all-modules", action="store_true")
    p.set_defaults(fn=cmd_dump)
    p = verbs.add_parser("import-fixture")
    for flag in ("--recipe", "--fixture", "--out"):
        p.add_argument(flag, required=True)
    p.set_defaults(fn=cmd_import_fixture)
    p = verbs.add_parser("port")
    p.add_argument("--dump", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--port", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mutate", default=None)
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--all-modules", action="store_true")
    p.add_argument("--mutations", default=None, help="JSON file with a list of mutations: run each, write mutations.json")
    p.set_defaults(fn=cmd_port)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except ParityError as exc:
        print(f"{ERROR_MARKER}{exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # an unexpected failure still ends in one line the host can show
        traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{ERROR_MARKER}{type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
