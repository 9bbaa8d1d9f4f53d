"""Origin vs origin: one checkpoint dumped by two or more origin stacks, compared capture by capture beside each
stack's port verdict (OUT/<id>/origins.{json,md})."""

from __future__ import annotations

import json
from pathlib import Path

from parity.contracts.io import load_model, write_text
from parity.contracts.manifests import DumpManifest
from parity.contracts.metrics import compare
from parity.contracts.recipe import Recipe
from parity.contracts.report import ParityReport
from parity.contracts.tolerance import resolve
from parity.host.dumps import read_tensors
from parity.host.render import md_code


def compare_origins(recipe: Recipe, dumps: dict[str, Path], reports: list[ParityReport], out: Path) -> dict:
    """Origin vs origin on every capture (and input) both dumps hold, beside each origin's port verdict.

    The first origin is the reference side; tolerances come from the one resolver (the recipe's policy on the
    device the dumps ran on). numpy only; every tensor is checked against its manifest's sha256 as it is read."""
    names = list(dumps)
    first = names[0]
    port = {name: {c.name: c for c in report.captures} for name, report in zip(names, reports)}
    device = "cuda" if any(r.origin_environment and r.origin_environment.device.startswith("cuda")
                            for r in reports) else "cpu"
    manifests = {name: load_model(DumpManifest, dumps[name] / "manifest.json") for name in names}
    rows = []
    for kind, which in (("input", "inputs"), ("capture", "references")):
        tensors = {name: read_tensors(dumps[name], manifests[name], which) for name in names}
        order = [e.name for e in getattr(manifests[first], which)]
        for index, key in enumerate(order):
            row = {"kind": kind, "name": key, "port": {}, "origins": {}}
            for name in names[1:]:
                if key not in tensors[name]:
                    row["origins"][name] = None
                    continue
                tol = resolve(recipe.tolerance, key, device=device)
                result = compare(key, index, tensors[first][key], tensors[name][key], tol.atol, tol.rtol,
                                 reason=tol.reason, nonfinite=tol.nonfinite)
                row["origins"][name] = {"verdict": result.verdict, "max_abs": result.max_abs,
                                        "atol_needed": result.atol_needed}
            for name in names:
                capture = port[name].get(key)
                row["port"][name] = None if capture is None else {"verdict": capture.verdict,
                                                                  "max_abs": capture.max_abs}
            rows.append(row)
    references = {name: {e.name for e in manifests[name].references} for name in names}
    only = {name: sorted(references[name] - references[first]) for name in names[1:]}
    result = {"variant": recipe.id, "reference_origin": first, "origins": names,
              "port_verdicts": {name: report.verdict for name, report in zip(names, reports)},
              "first_origin_divergence": {name: next((r["name"] for r in rows if r["origins"].get(name) and
                                                      r["origins"][name]["verdict"] != "pass"), None)
                                          for name in names[1:]},
              "only_in": only, "rows": rows}
    write_text(out / "origins.json", json.dumps(result, indent=2))
    write_text(out / "origins.md", _origins_markdown(result))
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
        cells = [row["kind"], md_code(row["name"])] + [cell(row["port"].get(n)) for n in names]
        cells += [cell(row["origins"].get(n)) for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    for name, keys in result["only_in"].items():
        if keys:
            lines += ["", f"Only {name} records: {', '.join(md_code(k) for k in keys)}"]
    return "\n".join(lines) + "\n"
