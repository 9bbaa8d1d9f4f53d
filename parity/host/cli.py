"""`parity`: list variants, convert them, dump originals, diff dumps, re-render reports, export schemas.

Exit codes: 0 every variant passed; 1 a variant failed parity; 2 bad input or an error (one line on stderr).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from parity.contracts.errors import ParityError
from parity.host.progress import StepProgress


def _click_class(name: str) -> type:
    """A click exception class, found through typer (which may bundle its own click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


class OneLineTyper(typer.Typer):
    """Usage errors (unknown option, bad value, missing argument) end like every other error: one line on stderr
    and exit code 2."""

    def __call__(self, *args, **kwargs):
        command = typer.main.get_command(self)
        try:
            code = command.main(*args, **{"prog_name": "parity", **kwargs, "standalone_mode": False})
        except _click_class("ClickException") as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
            else:
                console.print(f"[bold red]parity: error:[/] {escape(' '.join(exc.format_message().split()))} "
                              f"(see parity --help)", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            console.print("[bold red]parity: interrupted[/]")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = OneLineTyper(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)
stdout = Console()


class BackendName(str, Enum):
    local = "local"
    docker = "docker"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _error(message: str) -> None:
    console.print(f"[bold red]parity: error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)


def os_error_line(exc: OSError) -> str:
    """An OSError as one line naming the path: 'cannot write /x/report.md: No space left on device'."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p)
    return f"{paths}: {reason}" if paths else reason


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def one_line_errors(fn: Callable) -> Callable:
    """Every error ends in one line on stderr and exit code 2 (exit 1 is reserved for 'parity failed')."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        # SIGTERM (docker stop, a CI runner's cancel) unwinds like Ctrl-C, so that steps' processes and containers are
        # removed; without a handler it would end the process at once (or, as a container's PID 1, be ignored)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ParityError as exc:
            _error(str(exc))
        except KeyboardInterrupt:
            console.print("[bold red]parity: interrupted[/]")
            raise typer.Exit(130) from None
        except OSError as exc:
            _error(os_error_line(exc))
        except Exception as exc:  # a bug in parity still ends in one line, never a traceback and exit 1
            _error(f"unexpected {type(exc).__name__}: {exc}")
        raise typer.Exit(2)

    return wrapper


OutOption = Annotated[Path, typer.Option("--out", help="Output root; each variant writes OUT/<id>/.")]
BackendOption = Annotated[Optional[BackendName], typer.Option("--backend", envvar="PARITY_BACKEND",
                                                                help="local (default) or docker.")]
DeviceOption = Annotated[Device, typer.Option("--device", envvar="PARITY_DEVICE", help="Where both sides run.")]
AllModulesOption = Annotated[bool, typer.Option("--all-modules", help="Also diff every module pair derived from "
                                                                        "the weight mapping (dump needs it too).")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="torch threads, at least 1 (default: 1 for tiny variants).")]
Sha256Option = Annotated[Optional[str], typer.Option("--sha256", help="Expected sha256 of --checkpoint (64 hex digits, "
                                                                      "any case).")]
TransformersOption = Annotated[Optional[str], typer.Option(
    "--transformers", help="Run the port side with this transformers release (its own environment: "
                           "images/transformers pins with transformers replaced; default: the pinned release).")]
CheckpointOption = Annotated[Optional[Path], typer.Option(help="Original checkpoint file instead of the recipe's.")]
AssetOption = Annotated[Optional[list[str]], typer.Option(
    "--asset", metavar="NAME=PATH", help="A file the original code would download, given instead (hash-checked), e.g. "
                                         "clip-vit-b16=ViT-B-16.pt for CLIPSeg's CLIP archive; repeatable.")]
RecipeOption = Annotated[Optional[Path], typer.Option("--recipe", help="A recipe file (JSON or YAML) instead of a "
                                                                      "registry id.")]
SelectorArgument = Annotated[Optional[str], typer.Argument(help="Variant id, or a prefix selecting several.")]


def _chosen(selector: str | None, recipe_file: Path | None):
    """The recipes a command runs: registry ids by selector, or one recipe file."""
    from parity.host.registry import select

    if recipe_file is not None:
        if selector is not None:
            raise ParityError(f"give a variant id or --recipe FILE, not both ({selector!r} and {recipe_file})")
        from parity.host.recipefiles import load_recipe

        return [load_recipe(recipe_file)]
    if selector is None:
        raise ParityError("give a variant id (see `parity list`) or --recipe FILE")
    return select(selector)


def _threads(recipe, threads: int | None) -> int:
    import os

    return threads if threads is not None else (1 if recipe.tiny else max(1, os.cpu_count() or 1))


def _sha256(value: str | None) -> str | None:
    """--sha256 validated like every sha256 field: case-insensitive, 64 hex digits; an empty one is an error."""
    from parity.contracts.base import parse_sha256

    return None if value is None else parse_sha256(value, "--sha256")


def _out_root(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ParityError(f"--out {out} is a file; give a folder")
    return out


def _print_warnings(report) -> None:
    """What a report must not let pass quietly: a dump recipe looser than the registry's, and NaN/Inf."""
    if report.tolerance_widened:
        first = report.tolerance_widened[0]
        changed = sum(w.verdict_under_registry not in (None, "pass") for w in report.tolerance_widened)
        console.print(f"[bold yellow]parity: warning:[/] {escape(report.recipe_id)}: the dump's own recipe judges "
                      f"{len(report.tolerance_widened)} capture(s) more loosely than the registry's, {changed} of "
                      f"which would not pass under the registry's (e.g. {escape(first.name)}: atol "
                      f"{first.dump_atol:.2g} vs {first.registry_atol:.2g}, rtol {first.dump_rtol:.2g} vs "
                      f"{first.registry_rtol:.2g}); see report.md", highlight=False, soft_wrap=True)
    undeclared = report.undeclared_nonfinite()
    if undeclared:
        first = undeclared[0]
        console.print(f"[bold red]parity: {escape(report.recipe_id)}: NaN/Inf in {len(undeclared)} tensor(s), none "
                      f"declared by the recipe (e.g. {first.where} {escape(first.name)}: {first.count})[/]",
                      highlight=False, soft_wrap=True)


def _backend(name: BackendName | None, device: Device):
    from parity.host.backends import get_backend

    backend = get_backend(name.value if name else None)
    if hasattr(backend, "device"):
        backend.device = device.value
    return backend


@app.command("list")
@one_line_errors
def list_variants(
    selector: Annotated[Optional[str], typer.Argument(help="Id or prefix.")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Only the ids, one per line (for scripts).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Every variant as JSON: id, family, origin, checkpoint "
                                                         "source, assets (files the original downloads), "
                                                         "description, hub id.")] = False,
) -> None:
    """Variants known to parity, with where their original checkpoint comes from. Ids are never shortened: the
    default fits 80 columns, --ids prints only the ids, --json everything."""
    from parity.host.registry import select

    if ids and as_json:
        raise ParityError("--ids and --json are alternatives: choose one")
    recipes = select(selector)
    if ids:
        print("\n".join(recipe.id for recipe in recipes))
        return
    if as_json:
        print(json.dumps([_list_entry(recipe) for recipe in recipes], indent=2))
        return
    width = max(len("id"), *(len(recipe.id) for recipe in recipes))
    origin_width = max(len("origin"), *(len(recipe.origin) for recipe in recipes))
    print(f"{'id':<{width}}  {'origin':<{origin_width}}  checkpoint")
    for recipe in recipes:
        print(f"{recipe.id:<{width}}  {recipe.origin:<{origin_width}}  {_checkpoint_kind(recipe)}")
    print(f"{len(recipes)} variants; descriptions and checkpoint URLs: parity list --json")


def _checkpoint_kind(recipe) -> str:
    source = recipe.checkpoint
    return {"url": "download", "generate": f"seed {source.generate.seed if source.generate else ''}",
            "fixture": "fixture", "file": "your file (--checkpoint)"}[source.kind]


def _list_entry(recipe) -> dict:
    source = recipe.checkpoint
    return {"id": recipe.id, "family": recipe.family, "origin": recipe.origin, "tiny": recipe.tiny,
            "description": recipe.description, "hub_id": recipe.hub_id,
            "checkpoint": source.model_dump(mode="json", exclude_none=True),
            "assets": [asset.model_dump(mode="json") for asset in recipe.spec.assets()]}


def _id_column(table: Table, header: str, ids: list[str]) -> None:
    """A column of variant ids that a narrow terminal never shortens (the id is what a user copies)."""
    table.add_column(header, no_wrap=True, min_width=max([len(header), *map(len, ids)]))


_COLOURS = {"pass": "green", "fail": "red", "error": "red"}


def _summary(rows: list[tuple[str, str, str, str, float]]) -> None:
    table = Table()
    _id_column(table, "variant", [row[0] for row in rows])
    for header in ("verdict", "first divergence", "worst max-abs", "time"):
        table.add_column(header)
    for variant, verdict, first, worst, seconds in rows:
        table.add_row(variant, f"[{_COLOURS[verdict]}]{verdict}[/]", escape(first), worst, f"{seconds:.1f}s")
    stdout.print(table)


def _report_row(report, seconds: float) -> tuple[str, str, str, str, float]:
    worst = max((c.max_abs or 0.0 for c in report.captures), default=0.0)
    first = report.first_divergence or (report.error or "")
    return report.recipe_id, report.verdict, first, f"{worst:.2e}", seconds


@app.command()
@one_line_errors
def convert(
    selector: SelectorArgument = None,
    recipe_file: RecipeOption = None,
    backend: BackendOption = None,
    out: OutOption = Path("out"),
    checkpoint: CheckpointOption = None,
    sha256: Sha256Option = None,
    asset: AssetOption = None,
    device: DeviceOption = Device.cpu,
    threads: ThreadsOption = None,
    all_modules: AllModulesOption = False,
    origin: Annotated[Optional[str], typer.Option(help="Origin stack: one of the family's origins, or 'all' (each "
                                                       "into OUT/<id>/<origin>/, plus origin-vs-origin).")] = None,
) -> None:
    """Dump the original, convert to transformers, diff every capture, save the port and the reports."""
    from parity.host.checkpoints import parse_assets
    from parity.host.pipeline import convert as run_convert

    recipes = _chosen(selector, recipe_file)
    if checkpoint is not None and len(recipes) > 1:
        raise ParityError(f"--checkpoint names one file but {selector!r} selects {len(recipes)} variants")
    sha256 = _sha256(sha256)
    assets = parse_assets(asset or [], recipes)
    out = _out_root(out)
    chosen = _backend(backend, device)
    if origin:
        _convert_origins(recipes, origin, chosen, out, checkpoint=checkpoint, sha256=sha256, device=device.value,
                         threads=threads, all_modules=all_modules, assets=assets)
        return
    rows, reports = [], []
    for recipe in recipes:
        started = time.perf_counter()
        with StepProgress(console, recipe.id) as status:
            try:
                report = run_convert(recipe, chosen, out, checkpoint=checkpoint, sha256=sha256, device=device.value,
                                     threads=_threads(recipe, threads), all_modules=all_modules,
                                     on_progress=status.update, assets=assets)
            except ParityError as exc:
                if len(recipes) == 1:
                    raise
                console.print(f"[red]{recipe.id}: error:[/] {escape(str(exc))}", highlight=False)
                rows.append((recipe.id, "error", str(exc)[:80], "–", time.perf_counter() - started))
                continue
        rows.append(_report_row(report, time.perf_counter() - started))
        reports.append(report)
        _announce(report, out / recipe.id)
    _summary(rows)
    if len(recipes) > 1:
        from parity.host.render import write_summary

        write_summary(reports, out)
    _print_errors(reports)
    _exit_for([row[1] for row in rows])


def _convert_origins(recipes, origin: str, backend, out: Path, *, threads, **kwargs) -> None:
    """`convert --origin NAME|all`: every chosen origin of each variant, one checkpoint, origin-vs-origin table."""
    from parity.host.pipeline import convert_origins
    from parity.host.registry import family_of

    rows, reports = [], []
    for recipe in recipes:
        names = list(family_of(recipe).origins) if origin == "all" else [origin]
        started = time.perf_counter()
        with StepProgress(console, recipe.id) as status:
            try:
                found = convert_origins(recipe, backend, out, names, threads=_threads(recipe, threads),
                                        on_progress=status.update, **kwargs)
            except ParityError as exc:
                if len(recipes) == 1:
                    raise
                console.print(f"[red]{recipe.id}: error:[/] {escape(str(exc))}", highlight=False)
                rows.append((recipe.id, "error", str(exc)[:80], "–", time.perf_counter() - started))
                continue
        for name, report in zip(names, found):
            row = _report_row(report, time.perf_counter() - started)
            rows.append((f"{row[0]} ({name})", *row[1:]))
            reports.append(report)
            _announce(report, out / recipe.id / name)
        if len(names) > 1:
            console.print(f"{recipe.id}: origin vs origin → {out / recipe.id}/origins.md", highlight=False)
    _summary(rows)
    _print_errors(reports)
    _exit_for([row[1] for row in rows])


def _announce(report, folder: Path) -> None:
    """Where a verdict was written, after the warnings it carries; an error verdict is left to its one error line."""
    if report.verdict == "error":
        return
    _print_warnings(report)
    console.print(f"{escape(report.recipe_id)}: [bold]{report.verdict.upper()}[/] → {folder}/report.md",
                  highlight=False)


def _print_errors(reports) -> None:
    for report in reports:
        if report.verdict == "error":
            console.print(f"[bold red]parity: error:[/] {report.recipe_id}: {escape(report.error or '')}", highlight=False, soft_wrap=True)


def _exit_for(verdicts: list[str]) -> None:
    if "error" in verdicts:
        raise typer.Exit(2)
    if "fail" in verdicts:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def dump(
    selector: SelectorArgument = None,
    recipe_file: RecipeOption = None,
    backend: BackendOption = None,
    out: OutOption = Path("out"),
    checkpoint: CheckpointOption = None,
    sha256: Sha256Option = None,
    asset: AssetOption = None,
    device: DeviceOption = Device.cpu,
    threads: ThreadsOption = None,
    all_modules: AllModulesOption = False,
) -> None:
    """Run only the origin side: write OUT/<id>/dump (safetensors + manifest.json)."""
    from parity.host.checkpoints import parse_assets
    from parity.host.pipeline import make_dump

    recipes = _chosen(selector, recipe_file)
    if checkpoint is not None and len(recipes) > 1:
        raise ParityError(f"--checkpoint names one file but {selector!r} selects {len(recipes)} variants")
    sha256 = _sha256(sha256)
    assets = parse_assets(asset or [], recipes)
    out = _out_root(out)
    chosen = _backend(backend, device)
    for recipe in recipes:
        with StepProgress(console, recipe.id) as status:
            folder = make_dump(recipe, chosen, out / recipe.id, checkpoint=checkpoint, sha256=sha256,
                               device=device.value, threads=_threads(recipe, threads),
                               on_progress=status.update, all_modules=all_modules, assets=assets)
        stdout.print(str(folder))


@app.command()
@one_line_errors
def diff(
    dump_dir: Annotated[Path, typer.Option("--dump", help="A dump folder, or a golden fixture folder.")],
    recipe_file: Annotated[Optional[Path], typer.Option("--recipe", help="Recipe file (JSON or YAML): how to import a "
                                                                           "fixture folder, or how to port and judge a "
                                                                           "dump (same original computation).")] = None,
    port: Annotated[Optional[str], typer.Option(help="An existing port (save_pretrained folder or hub id).")] = None,
    mutate: Annotated[Optional[str], typer.Option(help="JSON mutation of the converted weights, to prove the diff "
                                                        "catches it, e.g. '{\"kind\": \"zero\", \"key\": K}'.")] = None,
    backend: BackendOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: out/<variant>; with --port or "
                                                     "--transformers out/<variant>/recheck/transformers-<version>, "
                                                     "so a re-check never replaces a conversion).")] = None,
    device: DeviceOption = Device.cpu,
    threads: ThreadsOption = None,
    all_modules: AllModulesOption = False,
    transformers: TransformersOption = None,
) -> None:
    """Diff a dump against the port: converted from the dump's state dict, or an existing port with --port."""
    from parity.contracts.io import load_model
    from parity.contracts.manifests import DumpManifest
    from parity.host.envs import cache_dir
    from parity.host.pipeline import import_fixture, port_env, recheck_folder, resolve_port, run_diff

    dump_dir = dump_dir.expanduser().resolve()
    if not dump_dir.is_dir():
        raise ParityError(f"dump folder not found: {dump_dir}")
    port = resolve_port(port) if port is not None else None
    port_env(transformers)
    recipe = None
    if recipe_file is not None:
        from parity.host.recipefiles import load_recipe

        recipe = load_recipe(recipe_file)
    chosen = _backend(backend, device)
    started = time.perf_counter()
    with StepProgress(console) as status:
        is_fixture = not (dump_dir / "manifest.json").is_file() and (dump_dir / "fixture.json").is_file()
        if is_fixture:
            dump_dir = import_fixture(dump_dir, chosen, cache_dir(), status.update, recipe=recipe)
        manifest = load_model(DumpManifest, dump_dir / "manifest.json")
        judged = manifest.recipe if is_fixture or recipe is None else recipe
        if judged is not manifest.recipe:
            differs = manifest.recipe.differs_in_computation(judged)
            if differs:
                raise ParityError(f"--recipe {recipe_file} describes another original computation than the dump "
                                  f"({differs} differs); dump again with it: parity dump --recipe {recipe_file}")
        default = _out_root(Path("out")) / judged.id
        target = _out_root(out) if out else (recheck_folder(default, transformers) if port or transformers else default)
        mutation = _parse_mutation(mutate) if mutate else None
        report = run_diff(dump_dir, chosen, target, port=port, device=device.value, mutation=mutation,
                          all_modules=all_modules, transformers=transformers,
                          recipe=None if judged is manifest.recipe else judged,
                          threads=_threads(judged, threads), on_progress=status.update)
    _announce(report, target)
    _summary([_report_row(report, time.perf_counter() - started)])
    _print_errors([report])
    _exit_for([report.verdict])


@app.command()
@one_line_errors
def recheck(
    selector: Annotated[str, typer.Argument(help="Variant id, or a prefix selecting several.")],
    transformers: Annotated[str, typer.Option("--transformers", help="Comma-separated transformers releases, e.g. "
                                                                     "5.23.0,5.24.0.")],
    port: Annotated[Optional[str], typer.Option(help="A port to load instead of OUT/<id>/hf (save_pretrained "
                                                     "folder or hub id; one variant only).")] = None,
    backend: BackendOption = None,
    out: OutOption = Path("out"),
    device: DeviceOption = Device.cpu,
    threads: ThreadsOption = None,
) -> None:
    """Re-check saved ports against other transformers releases: load each port (no conversion) in one port
    environment per release, diff it against OUT/<id>/dump, and print one table of verdicts and worst errors."""
    from parity.host.pipeline import port_env, resolve_port
    from parity.host.pipeline import recheck as run_recheck
    from parity.host.registry import select

    versions = [v.strip() for v in transformers.split(",") if v.strip()]
    if not versions:
        raise ParityError("--transformers needs at least one release, e.g. 5.23.0,5.24.0")
    if len(set(versions)) != len(versions):
        raise ParityError(f"--transformers names a release twice: {transformers}")
    for version in versions:
        port_env(version)
    recipes = select(selector)
    if port is not None and len(recipes) > 1:
        raise ParityError(f"--port names one port but {selector!r} selects {len(recipes)} variants")
    port = resolve_port(port) if port is not None else None
    chosen = _backend(backend, device)
    table = Table()
    _id_column(table, "variant", [recipe.id for recipe in recipes])
    table.add_column("transformers", no_wrap=True)
    for header in ("verdict", "first divergence", "worst max-abs", "vs first release"):
        table.add_column(header)
    verdicts = []
    for recipe in recipes:
        with StepProgress(console, recipe.id) as status:
            try:
                reports = run_recheck(recipe, chosen, out, versions, port=port, device=device.value,
                                      threads=_threads(recipe, threads), on_progress=status.update)
            except ParityError as exc:
                if len(recipes) == 1:
                    raise
                console.print(f"[red]{recipe.id}: error:[/] {escape(str(exc))}", highlight=False)
                table.add_row(recipe.id, "–", "[red]error[/]", escape(str(exc)[:80]), "–", "–")
                verdicts.append("error")
                continue
        baseline = reports[0]
        for version, report in zip(versions, reports):
            ran = (report.port_environment.packages.get("transformers") if report.port_environment else None) or "?"
            if ran != version:
                raise ParityError(f"{recipe.id}: asked for transformers {version} but the port ran with {ran}")
            row = _report_row(report, 0.0)
            table.add_row(recipe.id, version, f"[{_COLOURS[report.verdict]}]{report.verdict}[/]", escape(row[2]),
                          row[3], "–" if report is baseline else _compare_captures(baseline, report))
            verdicts.append(report.verdict)
    stdout.print(table)
    _exit_for(verdicts)



def _compare_captures(baseline, report) -> str:
    """Whether a release computes the very numbers the first one did (per-capture max-abs error, same dump)."""
    if report.verdict == "error" or baseline.verdict == "error":
        return "–"
    before = {c.name: c.max_abs for c in baseline.captures}
    changed = [c for c in report.captures if before.get(c.name) != c.max_abs]
    if not changed:
        return "identical"
    worst = max(changed, key=lambda c: abs((c.max_abs or 0.0) - (before.get(c.name) or 0.0)))
    return f"{len(changed)} captures differ (most: {worst.name})"


def _parse_mutation(text: str):
    from pydantic import ValidationError

    from parity.contracts.io import validation_message
    from parity.contracts.mutations import Mutation

    try:
        return Mutation.model_validate_json(text)
    except ValidationError as exc:
        raise ParityError(f"--mutate is not a valid mutation: {validation_message(exc)}") from None


@app.command()
@one_line_errors
def generate(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")],
    selector: Annotated[Optional[str], typer.Argument(help="Variant id (any size).")] = None,
    recipe_file: RecipeOption = None,
    seed: Annotated[int, typer.Option(help="Seed for re-drawing every parameter.")] = 0,
    backend: BackendOption = None,
) -> None:
    """Write a random checkpoint in the variant's ORIGINAL format, made by the original code (offline testing)."""
    from parity.contracts.recipe import CheckpointSource, GenerateSpec
    from parity.host.pipeline import generate_checkpoint

    recipes = _chosen(selector, recipe_file)
    if len(recipes) != 1:
        raise ParityError(f"{selector!r} selects {len(recipes)} variants; generate takes one id")
    recipe = recipes[0]
    out = out.expanduser().resolve()
    if out.is_dir():
        raise ParityError(f"--out {out} is a folder; generate writes one checkpoint file (e.g. {out / 'model.pth'})")
    seeded = recipe.model_copy(update={"checkpoint": CheckpointSource(
        kind="generate", generate=GenerateSpec(seed=seed), container=recipe.checkpoint.container)})
    with StepProgress(console, recipe.id, announce="generating a checkpoint with the original code") as status:
        generate_checkpoint(seeded, _backend(backend, Device.cpu), out, on_progress=status.update)
    stdout.print(str(out))


recipe_app = typer.Typer(no_args_is_help=True, help="Recipes as files: make one from the original's own "
                                                       "configuration, or edit a known one; check a file.")
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("new")
@one_line_errors
def recipe_new(
    family: Annotated[Optional[str], typer.Argument(help="sam, upernet, mask2former, vit_msn or clipseg.")] = None,
    recipe_id: Annotated[Optional[str], typer.Option("--id", help="Id of the new recipe (lower case).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Recipe file to write (.yaml, .yml or .json); "
                                                              "default: YAML on stdout.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="The original's config (mmseg .py, detectron2 .yaml).")] = None,
    config_root: Annotated[Optional[Path], typer.Option(help="Folder the config's _base_ files live in (default: "
                                                             "the config's folder).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="An original checkpoint (SAM: read the build arguments "
                                                            "off its shapes); loaded strictly as a check.")] = None,
    args: Annotated[Optional[list[str]], typer.Option("--arg", help="Build/constructor argument key=value "
                                                                    "(repeatable).")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="Your class list: .txt (one name a line) or JSON/YAML "
                                                         "(names or {name, isthing, dataset_id}).")] = None,
    origin: Annotated[Optional[str], typer.Option(help="Origin environment (default: the family's first, e.g. "
                                                       "mmseg0; mmseg1 for mmseg 1.x configs).")] = None,
    description: Annotated[Optional[str], typer.Option(help="One line for `parity list`.")] = None,
    base: Annotated[Optional[str], typer.Option("--from", help="Start from a registry variant id or a recipe "
                                                               "file instead.")] = None,
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="Edit a field: dotted.key=value "
                                                                    "(repeatable, applied last).")] = None,
    backend: BackendOption = None,
) -> None:
    """Write a complete recipe made from the ORIGINAL project's own configuration (read by the original tooling in
    its origin environment), or from a known variant (--from) with --set edits."""
    from parity.contracts.steps import RecipeSource
    from parity.host.recipefiles import apply_sets, load_classes, load_recipe, recipe_text, write_recipe
    from parity.host.registry import family_named, select

    made_from_config = any(v is not None for v in (config, config_root, checkpoint, classes)) or bool(args)
    notes: list[str] = []
    if base is not None:
        if made_from_config:
            raise ParityError("--from starts from an existing recipe; --config/--checkpoint/--arg/--classes make a "
                              "new one from the original's configuration (use one or the other)")
        if Path(base).suffix in (".json", ".yaml", ".yml"):
            recipe = load_recipe(Path(base))
        else:
            matches = select(base)
            if len(matches) != 1 or matches[0].id != base.lower():
                raise ParityError(f"--from {base!r} is not one variant id (see `parity list`)")
            recipe = matches[0]
        if family is not None and family != recipe.family:
            raise ParityError(f"--from {base} is a {recipe.family} recipe, not {family}")
        if recipe_id is not None:
            sets = [f"id={recipe_id}", *(sets or [])]
        if description is not None:
            sets = [*(sets or []), f"description={json.dumps(description)}"]
    else:
        if family is None:
            raise ParityError("give a FAMILY (sam, upernet, mask2former, vit_msn, clipseg) or --from VARIANT")
        if recipe_id is None:
            raise ParityError("a new recipe needs --id ID")
        known = family_named(family)
        origin = origin or known.origins[0]
        if origin not in known.origins:
            raise ParityError(f"--origin {origin!r}: {family} runs in {', '.join(known.origins)}")
        from pydantic import ValidationError

        from parity.contracts.io import validation_message
        from parity.host.recipefiles import parse_assignments

        absolute = {name: (path.expanduser().resolve() if path is not None else None)
                    for name, path in (("config", config), ("config_root", config_root), ("checkpoint", checkpoint))}
        for name, path in absolute.items():
            if path is not None and not path.exists():
                raise ParityError(f"--{name.replace('_', '-')} not found: {path}")
        try:
            source = RecipeSource(family=family, id=recipe_id, description=description, origin=origin,
                                  arguments=dict(parse_assignments(args or [], "--arg")),
                                  classes=load_classes(classes) if classes is not None else None, **absolute)
        except ValidationError as exc:
            raise ParityError(f"recipe new: {validation_message(exc)}") from None
        from parity.host.pipeline import new_recipe

        with StepProgress(console, recipe_id, announce="reading the original configuration") as status:
            recipe, notes = new_recipe(source, _backend(backend, Device.cpu), status.update)
    if sets:
        recipe = apply_sets(recipe, sets)
    for note in notes:
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    if out is None:
        print(recipe_text(recipe, ".yaml"), end="")
        return
    write_recipe(recipe, out)
    stdout.print(str(out))


@recipe_app.command("check")
@one_line_errors
def recipe_check(files: Annotated[list[Path], typer.Argument(help="Recipe files (JSON or YAML).")]) -> None:
    """Validate recipe files against the Recipe schema (exit 2 with the first problem)."""
    from parity.host.recipefiles import load_recipe

    for file in files:
        recipe = load_recipe(file)
        stdout.print(f"{file}: ok ({recipe.family} recipe {recipe.id})", highlight=False)


@app.command()
@one_line_errors
def selftest(
    families_: Annotated[Optional[list[str]], typer.Argument(metavar="[FAMILY]...", help="Default: every family "
                                                             "with a mutation suite.")] = None,
    backend: BackendOption = None,
    out: OutOption = Path("out"),
) -> None:
    """Prove the comparison catches mapping mistakes: each family's mutation suite on its tiny variant."""
    import importlib

    from parity.host.pipeline import make_dump, run_mutations
    from parity.host.registry import all_recipes, families
    from parity.host.staging import output_lock

    chosen = _backend(backend, Device.cpu)
    names = families_ or [n for n in families() if importlib.util.find_spec(f"parity.families.{n}.selftest")]
    table = Table("family", "mutation", "expected first failure", "parity said", "ok")
    failures = 0
    for name in names:
        if name not in families():
            raise ParityError(f"unknown family {name!r} (known: {', '.join(families())})")
        if importlib.util.find_spec(f"parity.families.{name}.selftest") is None:
            raise ParityError(f"family {name!r} has no mutation suite (parity/families/{name}/selftest.py)")
        suite = importlib.import_module(f"parity.families.{name}.selftest")
        recipe = all_recipes()[suite.VARIANT]
        folder = out / "selftest" / recipe.id
        with output_lock(folder), StepProgress(console, recipe.id, announce="dumping the original") as status:
            dump_dir = make_dump(recipe, chosen, folder, checkpoint=None, sha256=None, device="cpu", threads=1,
                                 on_progress=status.update)
            results = run_mutations(dump_dir, chosen, folder, [m for m, _ in suite.MUTATIONS], device="cpu",
                                    threads=1, on_progress=status.update)
        for (mutation, expected), result in zip(suite.MUTATIONS, results):
            said = result.first_divergence if result.verdict == "fail" else result.verdict
            ok = said == expected
            failures += not ok
            table.add_row(name, escape(mutation.label()), expected, escape(str(said)),
                          "[green]yes[/]" if ok else "[red]NO[/]")
    stdout.print(table)
    stdout.print(f"mutations caught at the expected capture: {len(table.rows) - failures} of {len(table.rows)}")
    if failures:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def report(folders: Annotated[list[Path], typer.Argument(help="Folders holding report.json.")]) -> None:
    """Render report.md, report.html and junit.xml again from report.json (no recomputation)."""
    from parity.contracts.io import load_model
    from parity.contracts.report import ParityReport
    from parity.host.render import write_reports
    from parity.host.staging import output_lock

    rows, reports = [], []
    for folder in folders:
        json_path = folder / "report.json" if folder.is_dir() else folder
        if not json_path.is_file():
            raise ParityError(f"no report.json at {folder}")
        result = load_model(ParityReport, json_path)
        with output_lock(json_path.parent):
            write_reports(result, json_path.parent)
        rows.append(_report_row(result, result.durations.get("total", 0.0)))
        reports.append(result)
    _summary(rows)
    _print_errors(reports)
    _exit_for([row[1] for row in rows])


@app.command()
@one_line_errors
def publish(
    variant: Annotated[str, typer.Argument(help="Variant id (its OUT/<id>/ from `parity convert`), or that folder.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repository, ORG/NAME.")],
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to commit to (created when missing).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Stage the folder and the list of commit operations "
                                                            "under OUT/<id>/publish/ and stop: no network.")] = False,
    open_pr: Annotated[bool, typer.Option("--open-pr", help="Open a pull request on an existing repository.")] = False,
    allow_fail: Annotated[bool, typer.Option("--allow-fail", help="Publish a port whose latest report failed, with "
                                                                  "the failure in the card.")] = False,
    out: OutOption = Path("out"),
) -> None:
    """Upload the saved port, its processor, a model card generated from the report, and the proof (reports,
    conversion record, dump manifest), in one commit; refused unless the variant's latest report passed."""
    from parity.host.publish import check_repo_id, stage, upload

    check_repo_id(repo_id)
    folder = Path(variant).expanduser()
    if not (folder / "report.json").is_file():
        from parity.host.registry import select

        recipes = select(variant)
        if len(recipes) != 1 or recipes[0].id != variant.lower():
            raise ParityError(f"{variant!r} is not one variant id (or a folder holding report.json)")
        folder = out / recipes[0].id
    plan = stage(folder, repo_id, allow_fail=allow_fail, private=private, revision=revision, create_pr=open_pr)
    size = sum(op.bytes for op in plan.operations)
    console.print(f"{plan.recipe_id}: {plan.verdict.upper()}; staged {len(plan.operations)} files ({size / 1e6:.1f} MB)"
                  f" → {plan.folder}", highlight=False, soft_wrap=True)
    if dry_run:
        stdout.print(str(plan.folder.parent / "operations.json"), highlight=False, soft_wrap=True)
        return
    with StepProgress(console, plan.recipe_id, announce=f"uploading to {repo_id} in one commit"):
        url = upload(plan)
    stdout.print(url, highlight=False, soft_wrap=True)


class GroupBy(str, Enum):
    none = "none"
    origin = "origin"


@app.command()
@one_line_errors
def matrix(
    selector: Annotated[Optional[str], typer.Argument(help="Id or prefix (default: every variant).")] = None,
    include_tiny: Annotated[bool, typer.Option(help="Include tiny and fixture variants.")] = False,
    group_by: Annotated[GroupBy, typer.Option(help="origin: one entry per origin image with its variants.")] = GroupBy.none,
) -> None:
    """JSON for a CI matrix: the variant ids (published ones by default), optionally grouped by origin image."""
    from parity.host.registry import select

    recipes = [r for r in select(selector) if include_tiny or not r.tiny]
    if group_by is GroupBy.origin:
        groups: dict[str, list[str]] = {}
        for recipe in recipes:
            groups.setdefault(recipe.origin, []).append(recipe.id)
        payload: object = [{"origin": origin, "variants": ids} for origin, ids in groups.items()]
    else:
        payload = [recipe.id for recipe in recipes]
    print(json.dumps(payload, separators=(",", ":")))


@app.command()
@one_line_errors
def doctor() -> None:
    """What can run here: each local environment (built, buildable, or Docker-only), GPU, and the Docker side: the
    engine and its version, each image (built, stale, missing), GPU support in the engine, the CA bundle, free disk."""
    import importlib.util
    import platform
    import shutil

    from parity.host import envs

    table = Table("check", "status", "detail")
    table.add_row("python", "ok", f"{platform.python_version()} ({sys.executable})")
    table.add_row("cache", "ok", str(envs.cache_dir()))
    if envs.IMAGES.is_dir():
        table.add_row("images/", "ok", str(envs.IMAGES))
    else:
        table.add_row("images/", "missing", escape(envs.missing_images_message()))
    gpu = shutil.which("nvidia-smi")
    table.add_row("GPU", "present" if gpu else "none", gpu or "no nvidia-smi on PATH: --device cuda unavailable")
    for folder in sorted(p.parent for p in envs.IMAGES.glob("*/requirements.txt")):
        name = folder.name
        reason = envs.local_unsupported(name)
        if reason:
            state, detail = "docker only", reason
        elif envs.is_built(name):
            state, detail = "built", str(envs.env_dir(name))
        else:
            state, detail = "buildable", f"built on first use into {envs.env_dir(name)}"
        table.add_row(f"env {name}", state, escape(detail))
    if importlib.util.find_spec("docker") is None:
        table.add_row("docker backend", "unavailable", "docker SDK not installed (pip install 'parity[docker]')")
    else:
        try:
            from parity.host.backends.docker import DockerBackend

            client = DockerBackend._connect()
        except ParityError as exc:
            table.add_row("docker backend", "unavailable", escape(str(exc)))
        else:
            from parity.host.doctor import engine_rows

            if envs.IMAGES.is_dir():
                for row in engine_rows(client):
                    table.add_row(*(escape(cell) for cell in row))
    stdout.print(table)


@app.command()
@one_line_errors
def schema(out: Annotated[Path, typer.Option(help="Folder for the JSON Schemas.")] = Path("schemas")) -> None:
    """Write the JSON Schemas of Recipe, DumpManifest, ConversionRecord and ParityReport."""
    from parity.contracts.io import write_text
    from parity.contracts.schemas import SCHEMAS

    out = _out_root(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, model in SCHEMAS.items():
        write_text(out / f"{name}.schema.json", json.dumps(model.model_json_schema(), indent=2) + "\n")
        stdout.print(str(out / f"{name}.schema.json"))


def main() -> None:
    app(prog_name="parity")


if __name__ == "__main__":
    sys.exit(main())
