"""The steps of one variant, wired together on the host: checkpoint, origin dump, port conversion + diff, reports.

Every step is a typed request (parity.contracts.steps) handed to a backend; nothing here builds an argv."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from parity.contracts.errors import ParityError
from parity.contracts.io import load_model, write_text
from parity.contracts.manifests import DumpManifest
from parity.contracts.mutations import Mutation
from parity.contracts.paths import fixtures_dir, safetensors_only_problem
from parity.contracts.recipe import Recipe
from parity.contracts.report import MutationResult, ParityReport
from parity.contracts.steps import (
    DumpRequest,
    GenerateRequest,
    ImportFixtureRequest,
    PortRequest,
    RecipeRequest,
    RecipeSource,
)
from parity.host.backends import Backend, Progress
from parity.host.checkpoints import ResolvedCheckpoint, resolve, resolve_assets
from parity.host.dumps import verify_dump
from parity.host.envs import cache_dir, pinned_version, split_name
from parity.host.registry import all_recipes, family_named, family_of, recipe_for_fixture
from parity.host.render import write_reports
from parity.host.staging import cache_lock, output_lock, sweep_dead

PORT_ENV = "transformers"
STALE = ("report.json", "report.md", "report.html", "junit.xml", "conversion.json", "hf", "publish", "recheck")
"""What a run replaces: a staged publish folder or a re-check of the previous model must not outlive it."""
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A Hugging Face hub id: `org/name`."""


def _reads_fixtures(recipe: Recipe) -> bool:
    return any(image.kind == "fixture-file" for image in recipe.inputs.images) or bool(recipe.spec.fixture_folders())


@contextmanager
def staged(target: Path):
    """A fresh, empty folder beside `target` for a step to write into, so that a sandboxing backend gives the step
    that folder alone (never the checkpoint cache or the dump cache that holds it); the caller renames the result
    into place. Removed afterwards, whatever happened."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # named like every other staging file (`.NAME.PID.tmp`), so a killed run's folder is swept at the next start
    folder = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def generate_checkpoint(recipe: Recipe, backend: Backend, path: Path, on_progress: Progress,
                        log: Path | None = None) -> None:
    """The original code builds the model, re-draws every tensor from the seed and saves its native container."""
    if path.is_dir():
        raise ParityError(f"{path} is a folder; generate writes one checkpoint file (e.g. {path / 'model.pth'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_dead(path.parent, prefix=f".{path.name}.")
    with staged(path) as folder:
        backend.run(recipe.origin, GenerateRequest(recipe=recipe, out=folder / path.name),
                    log=log or cache_dir() / "logs" / f"generate-{recipe.id}.log", on_progress=on_progress)
        (folder / path.name).replace(path)


def _generate_cached(recipe: Recipe, backend: Backend, path: Path, on_progress: Progress, log: Path) -> None:
    """A tiny variant's checkpoint, generated once into the shared cache (concurrent runs wait for the first)."""
    with cache_lock(path.parent, path.name):
        if path.is_file():
            return
        on_progress(f"generating the tiny original checkpoint (seed {recipe.checkpoint.generate.seed})")
        generate_checkpoint(recipe, backend, path, on_progress, log=log)


def make_dump(recipe: Recipe, backend: Backend, out: Path, *, checkpoint: Path | None, sha256: str | None,
              device: str, threads: int, on_progress: Progress, all_modules: bool = False,
              resolved: ResolvedCheckpoint | None = None, assets: dict[str, Path] | None = None) -> Path:
    """Origin side: obtain the checkpoint (generating tiny ones with the original code) and the files the original
    would download (`assets`: the user's, by name), then dump into OUT/dump (OUT is locked for the run)."""
    with output_lock(out):
        return _make_dump(recipe, backend, out, checkpoint=checkpoint, sha256=sha256, device=device, threads=threads,
                          on_progress=on_progress, all_modules=all_modules, resolved=resolved, assets=assets)


def _make_dump(recipe: Recipe, backend: Backend, out: Path, *, checkpoint: Path | None, sha256: str | None,
               device: str, threads: int, on_progress: Progress, all_modules: bool,
               resolved: ResolvedCheckpoint | None, assets: dict[str, Path] | None) -> Path:
    step_assets = resolve_assets(recipe, assets)
    backend.prepare(recipe.origin, on_progress)
    resolved = resolved or resolve(recipe, checkpoint, sha256)
    logs = out / "logs"
    if resolved.needs_generation:
        _generate_cached(recipe, backend, resolved.path, on_progress, logs / "generate.log")
    on_progress(f"original forward in the {recipe.origin} origin")
    request = DumpRequest(recipe=recipe, checkpoint=resolved.path, checkpoint_source=resolved.source,
                          out=out / "dump", device=device, threads=threads, all_modules=all_modules,
                          fixtures=fixtures_dir() if _reads_fixtures(recipe) else None, assets=step_assets)
    return backend.run(recipe.origin, request, log=logs / "dump.log", on_progress=on_progress).dump


def fixture_recipe_of(fixture: Path, recipe: Recipe | None = None) -> Recipe:
    """The recipe that reproduces a fixture folder: the one given (--recipe), else the folder's own recipe file, else
    the registry's recipe for the fixture's name."""
    if recipe is not None:
        return recipe
    from parity.host.recipefiles import fixture_recipe

    own = fixture_recipe(fixture)
    if own is not None:
        return own
    try:
        name = json.loads((fixture / "fixture.json").read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ParityError(f"{fixture / 'fixture.json'} is not a fixture description (no 'name')") from None
    return recipe_for_fixture(name)


def fixture_dump_dir(fixture: Path, recipe: Recipe, cache: Path) -> Path:
    """Where a fixture's import is cached: keyed by the fixture's description and the recipe that reads it."""
    key = hashlib.sha256((fixture / "fixture.json").read_bytes() + recipe.recipe_hash().encode()).hexdigest()[:16]
    return cache / "dumps" / f"fixture-{fixture.name}-{key}"


def import_fixture(fixture: Path, backend: Backend, cache: Path, on_progress: Progress,
                   recipe: Recipe | None = None) -> Path:
    """A golden fixture folder becomes a dump (cached by the fixture's and the recipe's hashes). A cached import is
    reused only after every file in it is checked against its manifest; a damaged one is imported again."""
    recipe = fixture_recipe_of(fixture, recipe)
    dump_dir = fixture_dump_dir(fixture, recipe, cache)
    dumps = dump_dir.parent
    with cache_lock(dumps, dump_dir.name):
        if (dump_dir / "manifest.json").is_file():
            try:
                if verify_dump(dump_dir).recipe_hash == recipe.recipe_hash():
                    return dump_dir
                on_progress(f"cached import of {fixture.name} is for another recipe: importing again")
            except ParityError as exc:
                on_progress(f"cached import of {fixture.name} is damaged ({exc}): importing again")
        for staging in dumps.glob(f".{dump_dir.name}.*"):
            shutil.rmtree(staging, ignore_errors=True)
        on_progress(f"importing fixture {fixture.name} (original loader re-exports its state dict)")
        with staged(dump_dir) as folder:
            request = ImportFixtureRequest(recipe=recipe, fixture=fixture, fixtures=fixture.parent,
                                           out=folder / "dump")
            backend.run(family_of(recipe).importer_env, request, log=cache / "logs" / f"import-{fixture.name}.log",
                        on_progress=on_progress)
            shutil.rmtree(dump_dir, ignore_errors=True)
            (folder / "dump").replace(dump_dir)
        return dump_dir


def clear_stale(out: Path, *extra: str, keep: Path | None = None) -> None:
    """A failed run must not leave an earlier run's report, model or dump looking like this run's result. `keep` (the
    existing port being re-verified) is never removed, nor the conversion record beside it."""
    protected = set()
    if keep is not None:
        protected = {keep, *keep.parents}
        if keep == out / "hf":
            protected.add(out / "conversion.json")
    for name in (*STALE, *extra):
        path = out / name
        if path in protected:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def port_env(transformers: str | None = None) -> str:
    """The port environment: the pinned one, or `transformers@VERSION` (the same pins with another transformers
    release, built and cached by its own pin hash) to re-check a port against that release."""
    if transformers is None or transformers == pinned_version(PORT_ENV):
        return PORT_ENV
    env = f"{PORT_ENV}@{transformers}"
    split_name(env)
    return env


def resolve_port(port: str) -> str:
    """--port: an existing save_pretrained folder (made absolute) or a hub id. A path that does not exist is an error,
    never a hub id (which would turn the network on)."""
    if not port.strip():
        raise ParityError("--port is empty: give a save_pretrained folder or a hub id")
    path = Path(port).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ParityError(f"--port {port!r} is a file; give the save_pretrained folder")
        if not (path / "config.json").is_file():
            raise ParityError(f"--port {port}: not a save_pretrained folder (no config.json)")
        problem = safetensors_only_problem(path.resolve())
        if problem:
            raise ParityError(problem)
        return str(path.resolve())
    if HUB_ID.fullmatch(port):
        return port
    raise ParityError(f"--port {port!r}: no such folder, and not a hub id (ORG/NAME, e.g. facebook/sam-vit-base)")


def run_diff(dump_dir: Path, backend: Backend, out: Path, *, port: str | None, device: str, threads: int,
             on_progress: Progress, mutation: Mutation | None = None, save: bool = True,
             all_modules: bool = False, transformers: str | None = None, recipe: Recipe | None = None
             ) -> ParityReport:
    """Port side: convert (or load `port`), run on the dump's inputs, diff; then render reports. OUT is locked for
    the run; when the registry knows the judged recipe's id, its tolerances travel along so the report names every
    capture the judged recipe treats more loosely. `transformers` picks another transformers release for the port
    environment (default: the pinned one); `recipe` replaces the dump's own for porting and judging (it must describe
    the same original computation)."""
    env = port_env(transformers)
    out = Path(out).expanduser().resolve()
    port = resolve_port(port) if port is not None else None
    local = Path(port) if port is not None and Path(port).is_absolute() else None
    backend.prepare(env, on_progress)
    with output_lock(out):
        clear_stale(out, keep=local)
        manifest = load_model(DumpManifest, dump_dir / "manifest.json")
        registry = all_recipes().get((recipe or manifest.recipe).id)
        request = PortRequest(dump=dump_dir, out=out, port=port, device=device, threads=threads, save=save,
                              all_modules=all_modules, mutate=mutation, recipe=recipe,
                              registry_tolerance=registry.tolerance if registry else None,
                              registry_recipe_hash=registry.recipe_hash() if registry else None)
        on_progress(f"port side in the {env} environment")
        response = backend.run(env, request, log=out / "logs" / "port.log", on_progress=on_progress)
        report = load_model(ParityReport, response.report)
        write_reports(report, out)
        return report


def convert(recipe: Recipe, backend: Backend, out_root: Path, *, checkpoint: Path | None = None,
            sha256: str | None = None, device: str = "cpu", threads: int = 1,
            on_progress: Progress = lambda _m: None, all_modules: bool = False,
            assets: dict[str, Path] | None = None) -> ParityReport:
    out = out_root / recipe.id
    with output_lock(out):
        clear_stale(out, "dump")
        dump_dir = make_dump(recipe, backend, out, checkpoint=checkpoint, sha256=sha256, device=device,
                             threads=threads, on_progress=on_progress, all_modules=all_modules, assets=assets)
        return run_diff(dump_dir, backend, out, port=None, device=device, threads=threads, on_progress=on_progress,
                        all_modules=all_modules)


def recheck_folder(out: Path, transformers: str | None) -> Path:
    """Where a re-check of a saved port writes its report: beside the conversion, never over it."""
    return out / "recheck" / f"transformers-{transformers or pinned_version(PORT_ENV)}"


def recheck(recipe: Recipe, backend: Backend, out_root: Path, versions: list[str], *, port: str | None,
            device: str, threads: int, on_progress: Progress) -> list[ParityReport]:
    """Load the saved (or given) port, without converting, in one port environment per transformers release, and diff
    it against the variant's dump each time: OUT/<id>/recheck/transformers-<version>/."""
    out = out_root / recipe.id
    dump_dir = out / "dump"
    if not (dump_dir / "manifest.json").is_file():
        raise ParityError(f"{recipe.id}: no dump at {dump_dir}: run `parity convert {recipe.id}` (or `parity dump`) "
                          "first")
    if port is None:
        saved = out / "hf"
        if not (saved / "config.json").is_file():
            raise ParityError(f"{recipe.id}: no saved port at {saved}: run `parity convert {recipe.id}` first, "
                              "or pass --port")
        port = str(saved.resolve())
    for version in versions:
        port_env(version)
    reports = []
    for version in versions:
        on_progress(f"transformers {version}")
        reports.append(run_diff(dump_dir.resolve(), backend, recheck_folder(out, version), port=port, device=device,
                                threads=threads, on_progress=on_progress, transformers=version))
    return reports


def run_mutations(dump_dir: Path, backend: Backend, out: Path, mutations: list[Mutation], *, device: str,
                  threads: int, on_progress: Progress) -> list[MutationResult]:
    """Run a list of weight corruptions against one dump in one port process; returns what parity concluded (also
    written to OUT/mutations.json)."""
    with output_lock(out):
        (out / "mutations.json").unlink(missing_ok=True)
        request = PortRequest(dump=dump_dir, out=out, device=device, threads=threads, mutations=mutations)
        results = backend.run(PORT_ENV, request, log=out / "logs" / "mutations.log", on_progress=on_progress).mutations
        write_text(out / "mutations.json", json.dumps([r.model_dump(mode="json") for r in results], indent=2) + "\n")
        return results


def convert_origins(recipe: Recipe, backend: Backend, out_root: Path, origins: list[str], *,
                    checkpoint: Path | None = None, sha256: str | None = None, device: str = "cpu", threads: int = 1,
                    on_progress: Progress = lambda _m: None, all_modules: bool = False,
                    assets: dict[str, Path] | None = None) -> list[ParityReport]:
    """`convert --origin NAME|all`: ONE checkpoint (generated by the recipe's default origin when tiny), dumped by each
    chosen origin into OUT/<id>/<origin>/ and diffed against the port; with two or more origins the origins are also
    compared with each other, capture by capture (OUT/<id>/origins.{json,md})."""
    from parity.host.origins import compare_origins

    known = family_of(recipe).origins
    unknown = [o for o in origins if o not in known]
    if unknown:
        raise ParityError(f"{recipe.id}: unknown origin {unknown[0]!r} (this family has: {', '.join(known)}, or all)")
    root = out_root / recipe.id
    with output_lock(root):
        (root / "origins.json").unlink(missing_ok=True)
        (root / "origins.md").unlink(missing_ok=True)
        for origin in origins:
            backend.prepare(origin, on_progress)
        resolved = resolve(recipe, checkpoint, sha256)
        if resolved.needs_generation:
            _generate_cached(recipe, backend, resolved.path, on_progress, root / "logs" / "generate.log")
            resolved = ResolvedCheckpoint(resolved.path, resolved.source)
        reports, dumps = [], {}
        for origin in origins:
            variant = recipe.model_copy(update={"origin": origin})
            out = root / origin
            with output_lock(out):
                clear_stale(out, "dump")
                dumps[origin] = make_dump(variant, backend, out, checkpoint=None, sha256=None, device=device,
                                          threads=threads, on_progress=on_progress, all_modules=all_modules,
                                          resolved=resolved, assets=assets)
                reports.append(run_diff(dumps[origin], backend, out, port=None, device=device, threads=threads,
                                        on_progress=on_progress, all_modules=all_modules))
        if len(origins) > 1:
            compare_origins(recipe, dumps, reports, root)
        return reports


def new_recipe(source: RecipeSource, backend: Backend, on_progress: Progress) -> tuple[Recipe, list[str]]:
    """`parity recipe new`: the origin environment reads the original's configuration with the original tooling
    (families whose configuration is plain constructor arguments make the recipe here), then the recipe and notes on
    what the configuration did not say."""
    from pydantic import ValidationError

    from parity.contracts.family import recipes_module
    from parity.contracts.io import validation_message

    family = family_named(source.family)
    if family.reads_configuration == "host":
        if source.checkpoint is not None or source.config is not None:
            raise ParityError(f"{source.family} recipes come from constructor arguments (--arg key=value); check a "
                              "checkpoint against the recipe with `parity dump --recipe FILE --checkpoint PATH`")
        try:
            return recipes_module(source.family).new_recipe(source, dict(source.arguments)), []
        except ValidationError as exc:
            raise ParityError(f"the recipe made from the arguments is invalid: {validation_message(exc)}") from None
    backend.prepare(source.origin, on_progress)
    response = backend.run(source.origin, RecipeRequest(source=source),
                           log=cache_dir() / "logs" / f"recipe-{source.id}.log", on_progress=on_progress)
    return response.recipe, response.notes
