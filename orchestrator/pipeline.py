"""The steps of one variant, wired together on the host: checkpoint, origin dump, port conversion + diff, reports."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from orchestrator.backends import Backend, Progress
from orchestrator.checkpoints import ResolvedCheckpoint, resolve
from orchestrator.envs import cache_dir
from orchestrator.errors import ParityError
from orchestrator.manifests import MutationResult, ParityReport, Recipe, load_model
from orchestrator.registry import family_of, recipe_for_fixture
from orchestrator.report import write_reports

PORT_ENV = "transformers"
STALE = ("report.json", "report.md", "report.html", "junit.xml", "conversion.json", "hf")


def _recipe_file(recipe: Recipe, folder: Path) -> Path:
    path = folder / "recipe.json"
    path.write_text(recipe.model_dump_json(indent=2))
    return path


def generate_checkpoint(recipe: Recipe, backend: Backend, path: Path, on_progress: Progress,
                        log: Path | None = None) -> None:
    """The original code builds the model, re-draws every tensor from the seed and saves its native container."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        recipe_path = _recipe_file(recipe, Path(tmp))
        backend.run(recipe.origin, ["generate", "--recipe", str(recipe_path), "--out", str(path)],
                    log=log or cache_dir() / "logs" / f"generate-{recipe.id}.log", on_progress=on_progress,
                    readonly=[recipe_path], writable=[path.parent])


def make_dump(recipe: Recipe, backend: Backend, out: Path, *, checkpoint: Path | None, sha256: str | None,
              device: str, threads: int, on_progress: Progress, all_modules: bool = False,
              resolved: ResolvedCheckpoint | None = None) -> Path:
    """Origin side: obtain the checkpoint (generating tiny ones with the original code), then dump."""
    backend.prepare(recipe.origin, on_progress)
    resolved = resolved or resolve(recipe, checkpoint, sha256)
    dump_dir = out / "dump"
    logs = out / "logs"
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        recipe_path = _recipe_file(recipe, Path(tmp))
        if resolved.needs_generation:
            on_progress(f"{recipe.id}: generating the tiny original checkpoint (seed {recipe.checkpoint.generate.seed})")
            generate_checkpoint(recipe, backend, resolved.path, on_progress, log=logs / "generate.log")
        on_progress(f"{recipe.id}: original forward in the {recipe.origin} origin")
        backend.run(recipe.origin, ["dump", "--recipe", str(recipe_path), "--checkpoint", str(resolved.path),
                                    "--checkpoint-source", resolved.source, "--out", str(dump_dir),
                                    "--device", device, "--threads", str(threads)]
                    + (["--all-modules"] if all_modules else []),
                    log=logs / "dump.log", on_progress=on_progress, readonly=[recipe_path, resolved.path],
                    writable=[out])
    return dump_dir


def import_fixture(fixture: Path, backend: Backend, cache: Path, on_progress: Progress) -> Path:
    """A golden fixture folder becomes a dump (cached by the fixture's and the recipe's hashes)."""
    meta = fixture / "fixture.json"
    recipe = recipe_for_fixture(json.loads(meta.read_text())["name"])
    key = hashlib.sha256(meta.read_bytes() + recipe.recipe_hash().encode()).hexdigest()[:16]
    dump_dir = cache / "dumps" / f"fixture-{fixture.name}-{key}"
    if (dump_dir / "manifest.json").is_file():
        return dump_dir
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        recipe_path = _recipe_file(recipe, Path(tmp))
        on_progress(f"importing fixture {fixture.name} (original loader re-exports its state dict)")
        backend.run(family_of(recipe).importer_env, ["import-fixture", "--recipe", str(recipe_path), "--fixture", str(fixture),
                                    "--out", str(dump_dir)],
                    log=cache / "logs" / f"import-{fixture.name}.log", on_progress=on_progress,
                    readonly=[recipe_path, fixture.parent], writable=[dump_dir.parent])
    return dump_dir


def clear_stale(out: Path, *extra: str) -> None:
    """A failed run must not leave an earlier run's report, model or dump looking like this run's result."""
    for name in (*STALE, *extra):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_diff(dump_dir: Path, backend: Backend, out: Path, *, port: str | None, device: str, threads: int,
             on_progress: Progress, mutation: dict | None = None, save: bool = True,
             all_modules: bool = False) -> ParityReport:
    """Port side: convert (or load `port`), run on the dump's inputs, diff; then render reports."""
    out.mkdir(parents=True, exist_ok=True)
    clear_stale(out)
    args = ["port", "--dump", str(dump_dir), "--out", str(out), "--device", device, "--threads", str(threads)]
    if port:
        args += ["--port", port]
    if mutation:
        args += ["--mutate", json.dumps(mutation)]
    if not save:
        args.append("--no-save")
    if all_modules:
        args.append("--all-modules")
    readonly = [dump_dir] + ([Path(port)] if port and Path(port).exists() else [])
    backend.run(PORT_ENV, args, log=out / "logs" / "port.log", on_progress=on_progress, readonly=readonly,
                writable=[out], network=bool(port) and not Path(port).exists())
    report = load_model(ParityReport, out / "report.json")
    write_reports(report, out)
    return report


def convert(recipe: Recipe, backend: Backend, out_root: Path, *, checkpoint: Path | None = None,
            sha256: str | None = None, device: str = "cpu", threads: int = 1,
            on_progress: Progress = lambda _m: None, all_modules: bool = False) -> ParityReport:
    out = out_root / recipe.id
    out.mkdir(parents=True, exist_ok=True)
    clear_stale(out, "dump")
    dump_dir = make_dump(recipe, backend, out, checkpoint=checkpoint, sha256=sha256, device=device,
                         threads=threads, on_progress=on_progress, all_modules=all_modules)
    return run_diff(dump_dir, backend, out, port=None, device=device, threads=threads, on_progress=on_progress,
                    all_modules=all_modules)


def run_mutations(dump_dir: Path, backend: Backend, out: Path, mutations: list[dict], *, device: str,
                  threads: int, on_progress: Progress) -> list[MutationResult]:
    """Run a list of weight corruptions against one dump in one port process; returns what parity concluded."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutations.json").unlink(missing_ok=True)
    request = out / "mutation-request.json"
    request.write_text(json.dumps(mutations))
    backend.run(PORT_ENV, ["port", "--dump", str(dump_dir), "--out", str(out), "--device", device,
                           "--threads", str(threads), "--mutations", str(request)],
                log=out / "logs" / "mutations.log", on_progress=on_progress, readonly=[dump_dir], writable=[out])
    return [MutationResult.model_validate(item) for item in json.loads((out / "mutations.json").read_text())]


def convert_origins(recipe: Recipe, backend: Backend, out_root: Path, origins: list[str], *,
                    checkpoint: Path | None = None, sha256: str | None = None, device: str = "cpu", threads: int = 1,
                    on_progress: Progress = lambda _m: None, all_modules: bool = False) -> list[ParityReport]:
    """`convert --origin NAME|all`: ONE checkpoint (generated by the recipe's default origin when tiny), dumped by each
    chosen origin into OUT/<id>/<origin>/ and diffed against the port; with two or more origins the origins are also
    compared with each other, capture by capture (OUT/<id>/origins.{json,md})."""
    known = family_of(recipe).origins
    unknown = [o for o in origins if o not in known]
    if unknown:
        raise ParityError(f"{recipe.id}: unknown origin {unknown[0]!r} (this family has: {', '.join(known)}, or all)")
    root = out_root / recipe.id
    root.mkdir(parents=True, exist_ok=True)
    (root / "origins.json").unlink(missing_ok=True)
    (root / "origins.md").unlink(missing_ok=True)
    for origin in origins:
        backend.prepare(origin, on_progress)
    resolved = resolve(recipe, checkpoint, sha256)
    if resolved.needs_generation:
        on_progress(f"{recipe.id}: generating the tiny original checkpoint in {recipe.origin}")
        generate_checkpoint(recipe, backend, resolved.path, on_progress, log=root / "logs" / "generate.log")
        resolved = ResolvedCheckpoint(resolved.path, resolved.source)
    reports, dumps = [], {}
    for origin in origins:
        variant = recipe.model_copy(update={"origin": origin})
        out = root / origin
        out.mkdir(parents=True, exist_ok=True)
        clear_stale(out, "dump")
        dumps[origin] = make_dump(variant, backend, out, checkpoint=None, sha256=None, device=device, threads=threads,
                                  on_progress=on_progress, all_modules=all_modules, resolved=resolved)
        reports.append(run_diff(dumps[origin], backend, out, port=None, device=device, threads=threads,
                                on_progress=on_progress, all_modules=all_modules))
    if len(origins) > 1:
        compare_origins(recipe, dumps, reports, root)
    return reports


def compare_origins(recipe: Recipe, dumps: dict[str, Path], reports: list[ParityReport], out: Path) -> dict:
    """Origin vs origin on every capture (and input) both dumps hold, beside each origin's port verdict.

    The first origin is the reference side; tolerances are the recipe's. numpy only (orchestrator.diff.compare)."""
    from safetensors.numpy import load_file

    from orchestrator.diff import compare, resolve_tolerance

    names = list(dumps)
    first = names[0]
    port = {name: {c.name: c for c in report.captures} for name, report in zip(names, reports)}
    rows = []
    for kind, file in (("input", "inputs.safetensors"), ("capture", "reference.safetensors")):
        tensors = {name: load_file(str(dumps[name] / file)) for name in names}
        manifest = json.loads((dumps[first] / "manifest.json").read_text())
        order = [e["name"] for e in manifest["inputs" if kind == "input" else "references"]]
        for index, key in enumerate(order):
            row = {"kind": kind, "name": key, "port": {}, "origins": {}}
            for name in names[1:]:
                if key not in tensors[name]:
                    row["origins"][name] = None
                    continue
                atol, rtol, reason = resolve_tolerance(recipe.tolerance, key)
                result = compare(key, index, tensors[first][key], tensors[name][key], atol, rtol, reason=reason)
                row["origins"][name] = {"verdict": result.verdict, "max_abs": result.max_abs,
                                        "atol_needed": result.atol_needed}
            for name in names:
                capture = port[name].get(key)
                row["port"][name] = None if capture is None else {"verdict": capture.verdict,
                                                                  "max_abs": capture.max_abs}
            rows.append(row)
    only = {name: sorted(set(load_file(str(dumps[name] / "reference.safetensors"))) -
                         set(load_file(str(dumps[first] / "reference.safetensors")))) for name in names[1:]}
    result = {"variant": recipe.id, "reference_origin": first, "origins": names,
              "port_verdicts": {name: report.verdict for name, report in zip(names, reports)},
              "first_origin_divergence": {name: next((r["name"] for r in rows if r["origins"].get(name) and
                                                      r["origins"][name]["verdict"] != "pass"), None)
                                          for name in names[1:]},
              "only_in": only, "rows": rows}
    (out / "origins.json").write_text(json.dumps(result, indent=2))
    (out / "origins.md").write_text(_origins_markdown(result))
    return result


def _origins_markdown(result: dict) -> str:
    names = result["origins"]
    first = names[0]

    def cell(entry) -> str:
        if entry is None:
            return "–"
        value = entry["max_abs"]
        return f"{entry['verdict']} {value:.2e}" if value is not None else entry["verdict"]

    head = (["kind", "capture"] + [f"port vs {n}" for n in names] + [f"{first} vs {n}" for n in names[1:]])
    lines = [f"# {result['variant']}: origin vs origin, origin vs port", "",
             (f"Port verdicts: {', '.join(f'{n} {v}' for n, v in result['port_verdicts'].items())}. "
              f"First origin divergence: {', '.join(f'{n}: {v}' for n, v in result['first_origin_divergence'].items())}."),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["kind"], f"`{row['name']}`"] + [cell(row["port"].get(n)) for n in names]
        cells += [cell(row["origins"].get(n)) for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    for name, keys in result["only_in"].items():
        if keys:
            lines += ["", f"Only {name} records: {', '.join(f'`{k}`' for k in keys)}"]
    return "\n".join(lines) + "\n"
