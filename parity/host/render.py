"""Human-readable reports rendered from report.json alone (so `parity report` never recomputes anything)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from parity.contracts.io import write_text
from parity.contracts.report import CaptureResult, ParityReport


def _num(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    return f"{value:.3g}" if abs(value) >= 1e-3 else f"{value:.2e}"


def _severity(result: CaptureResult) -> tuple[int, float]:
    """Failures first (first divergence on top), then by how much tolerance each pair would need."""
    failing = result.verdict != "pass"
    return (0 if failing and not result.downstream else 1 if failing else 2, -(result.atol_needed or 0.0))


MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")


def md_text(text: str) -> str:
    """Plain text inside Markdown (a GitHub step summary renders inline HTML): one line, markup characters escaped,
    HTML characters as entities."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MD_SPECIAL.sub(r"\\\1", text)


def md_code(text: str) -> str:
    """An inline code span that no content can break out of: a fence longer than any backtick run inside, and `|`
    escaped (GitHub tables split on it even inside code)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_markdown(report: ParityReport) -> str:
    verdict = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}[report.verdict]
    lines = [f"## parity: {md_code(report.recipe_id)} — {verdict}", ""]
    for alert in _alerts(report):
        lines += [f"> **{md_text(alert)}**", ""]
    if report.error:
        lines += [f"**Error:** {md_text(report.error)}", ""]
    if report.first_divergence:
        lines += [f"**First divergence:** {md_code(report.first_divergence)} (later failures are marked downstream)",
                  ""]
    passed = sum(r.verdict == "pass" for r in report.captures)
    worst = max((r.max_abs or 0.0 for r in report.captures), default=0.0)
    lines += [
        f"- captures: {passed}/{len(report.captures)} pass, worst max-abs {_num(worst)}",
        f"- references: {report.dump_producer} dump {md_code(report.dump)}; port: {md_text(report.port)}",
    ]
    if report.registry_recipe_hash is None:
        lines.append("- recipe: its id is not in this registry, so its tolerances are its own")
    elif report.registry_recipe_hash != report.recipe_hash:
        lines.append(f"- recipe: the dump's ({report.recipe_hash[:12]}…) differs from the registry's of this id "
                     f"({report.registry_recipe_hash[:12]}…)")
    if report.conversion:
        c = report.conversion
        state = "ok" if c.ok else f"{len(c.unused)} unmapped, {len(c.missing)} missing, {len(c.shape_errors)} shape errors"
        lines.append(f"- weights: {c.source_keys} original keys → {c.target_keys} port keys, accounting {state}")
    if report.processor:
        p = report.processor
        lines.append(f"- preprocessing ({md_text(p.processor)}): {p.verdict.upper()}"
                     + (f" — {md_text(p.note)}" if p.note else ""))
    if report.durations:
        lines.append("- time: " + ", ".join(f"{md_text(k)} {v:.1f}s" for k, v in report.durations.items()))
    if report.captures:
        lines += ["", "| capture | verdict | max abs | max rel | cosine | atol needed | tolerance |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(report.captures, key=_severity):
            verdict_cell = r.verdict + (" (downstream)" if r.downstream else "")
            tol = f"{_num(r.atol)} / {_num(r.rtol)}" + (" *" if r.tolerance_reason else "")
            lines.append(f"| {md_code(r.name)} | {verdict_cell} | {_num(r.max_abs)} | {_num(r.max_rel)} | "
                         f"{_num(r.cosine)} | {_num(r.atol_needed)} | {tol} |")
        reasons = {r.tolerance_reason for r in report.captures if r.tolerance_reason}
        for reason in sorted(reasons):
            lines.append(f"\n\\* {md_text(reason)}")
    return "\n".join(lines) + "\n"


def write_reports(report: ParityReport, folder: Path) -> None:
    """report.md (fits a GitHub step summary), report.html (self-contained), junit.xml (one testcase)."""
    folder = Path(folder)
    write_text(folder / "report.md", render_markdown(report))
    write_text(folder / "report.html", render_html(report))
    write_text(folder / "junit.xml", render_junit([report]))


def write_summary(reports: list[ParityReport], folder: Path) -> None:
    """For a selector run: one junit.xml with a testcase per variant, and summary.md with one row each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "junit.xml", render_junit(reports))
    lines = ["| variant | verdict | first divergence | worst max-abs | time |", "|---|---|---|---|---|"]
    for r in reports:
        worst = max((c.max_abs or 0.0 for c in r.captures), default=0.0)
        first = md_code(r.first_divergence) if r.first_divergence else md_text(r.error or "")
        lines.append(f"| {md_code(r.recipe_id)} | {r.verdict} | {first} | {_num(worst)} | "
                     f"{r.durations.get('total', 0.0):.1f}s |")
    write_text(folder / "summary.md", "\n".join(lines) + "\n")


def _log10(value: float | None) -> float:
    return math.log10(max(value or 0.0, 1e-12))


def _plot(report: ParityReport) -> dict | None:
    """Geometry of the error-across-depth plot: max-abs error of every capture in origin execution order (log scale),
    the applied atol as a dash."""
    captures = sorted(report.captures, key=lambda r: r.execution_index)
    if not captures:
        return None
    width, height, left, bottom, top = max(640, 12 * len(captures) + 80), 300, 60, 40, 16
    values = [_log10(r.max_abs) for r in captures] + [_log10(r.atol) for r in captures]
    lo, hi = math.floor(min(values)), math.ceil(max(values) + 0.01)
    span = max(hi - lo, 1)

    def x(i: int) -> float:
        return left + (i + 0.5) * (width - left - 10) / len(captures)

    def y(v: float) -> float:
        return top + (hi - v) * (height - top - bottom) / span

    ticks = [{"label": f"1e{t}", "y": f"{y(t):.1f}"} for t in range(lo, hi + 1)]
    points = []
    for i, r in enumerate(captures):
        points.append({"x": f"{x(i):.1f}", "x0": f"{x(i) - 4:.1f}", "x1": f"{x(i) + 4:.1f}",
                       "y": f"{y(_log10(r.max_abs)):.1f}", "atol_y": f"{y(_log10(r.atol)):.1f}",
                       "cls": "pass" if r.verdict == "pass" else ("downstream" if r.downstream else "fail"),
                       "name": r.name,
                       "title": f"{r.name}: {r.verdict}, max abs {_num(r.max_abs)} (atol {_num(r.atol)})"})
    return {"width": width, "height": height, "left": left, "right": width - 10, "ticks": ticks, "points": points,
            "axis_y": height - 8, "tick_x": left - 6}


def _heatmap(report: ParityReport) -> dict | None:
    hm = report.heatmap
    if hm is None or not hm.values:
        return None
    rows, cols = hm.shape
    cell = max(4, min(12, 480 // max(rows, cols)))
    finite = [v for row in hm.values for v in row if v is not None]
    peak = max(finite, default=0.0) or 1.0
    cells = []
    for r, row in enumerate(hm.values):
        for c, value in enumerate(row):
            if value is None:
                fill, title = "rgb(0,0,0)", "NaN/Inf"
            else:
                shade = int(255 * (1 - value / peak))
                fill, title = f"rgb(255,{shade},{shade})", f"{value:.3g}"
            cells.append({"x": c * cell, "y": r * cell, "fill": fill, "title": title})
    return {"capture": hm.capture, "source_shape": str(hm.source_shape), "width": cols * cell, "height": rows * cell,
            "cell": cell, "cells": cells, "peak": f"{peak:.3g}", "nonfinite": len(finite) < rows * cols}


def _rows(results: list[CaptureResult]) -> list[dict]:
    return [{"cls": "pass" if r.verdict == "pass" else "fail", "index": r.execution_index, "name": r.name,
             "port": r.port_name or "–", "verdict": r.verdict + (" (downstream)" if r.downstream else ""),
             "numbers": [_num(v) for v in (r.max_abs, r.max_rel, r.mean_abs, r.rms, r.cosine, r.mismatch_fraction,
                                           r.atol_needed, r.rtol_needed)],
             "tolerance": f"{_num(r.atol)} / {_num(r.rtol)}",
             "note": " ".join(n for n in (r.tolerance_reason, r.nonfinite_reason, r.note) if n)}
            for r in sorted(results, key=lambda c: c.execution_index)]


def _alerts(report: ParityReport) -> list[str]:
    """What must be seen first, in every format: undeclared NaN/Inf and a dump recipe looser than the registry's."""
    alerts = []
    undeclared = report.undeclared_nonfinite()
    if undeclared:
        shown = "; ".join(f"{f.where} {f.name} ({f.count})" for f in undeclared[:5])
        alerts.append(f"NaN/Inf not declared by the recipe in {len(undeclared)} tensor(s): {shown}"
                      + (" …" if len(undeclared) > 5 else ""))
    declared = [f for f in report.nonfinite if f.declared is not None]
    if declared:
        alerts.append(f"NaN/Inf declared by the recipe in {len(declared)} tensor(s): "
                      + "; ".join(f"{f.where} {f.name} ({f.count}): {f.declared}" for f in declared[:5]))
    if report.tolerance_widened:
        shown = "; ".join(
            f"{w.name}: atol {_num(w.dump_atol)} vs {_num(w.registry_atol)}, rtol {_num(w.dump_rtol)} vs "
            f"{_num(w.registry_rtol)}" + (f", allows {'/'.join(w.nonfinite_only_in_dump)}" if w.nonfinite_only_in_dump
                                          else "")
            + (f", {w.verdict_under_registry} under the registry's" if w.verdict_under_registry else "")
            for w in report.tolerance_widened[:5])
        changed = sum(w.verdict_under_registry not in (None, "pass") for w in report.tolerance_widened)
        alerts.append(f"TOLERANCE WIDENED: the dump's own recipe is looser than the registry's recipe of the same id "
                      f"for {len(report.tolerance_widened)} capture(s), {changed} of which would not pass under the "
                      f"registry's: {shown}" + (" …" if len(report.tolerance_widened) > 5 else ""))
    return alerts


TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=True, trim_blocks=True,
                        lstrip_blocks=True, undefined=StrictUndefined)
"""Autoescaping on for every template: each string from report.json is escaped by construction, so no markup can be
injected through a crafted dump or report."""


def render_html(report: ParityReport) -> str:
    """One self-contained file: no external scripts, styles or fonts."""
    widened = [{"name": w.name, "dump": f"{_num(w.dump_atol)} / {_num(w.dump_rtol)}",
                "registry": f"{_num(w.registry_atol)} / {_num(w.registry_rtol)}",
                "nonfinite": ", ".join(w.nonfinite_only_in_dump) or "–", "verdict": w.verdict_under_registry or "–",
                "reason": w.dump_reason or ""} for w in report.tolerance_widened]
    environments = [(label, env) for label, env in (("origin", report.origin_environment),
                                                     ("port", report.port_environment)) if env is not None]
    return TEMPLATES.get_template("report.html.j2").render(
        r=report, title=f"parity: {report.recipe_id} — {report.verdict.upper()}", alerts=_alerts(report),
        plot=_plot(report), heatmap=_heatmap(report), captures=_rows(report.captures), modules=_rows(report.modules),
        processor_checks=_rows(report.processor.checks) if report.processor else [], widened=widened,
        environments=environments)


def _xml_text(text: str) -> str:
    """Text XML 1.0 can carry: control characters (other than tab and newline) dropped."""
    return "".join(ch for ch in text if ch in "\t\n" or ord(ch) >= 0x20)


def render_junit(reports: list[ParityReport]) -> str:
    """One testcase per variant; a failure carries the first divergence (or the undeclared NaN/Inf), an error its
    message; alerts (NaN/Inf, widened tolerances) come first in each testcase as properties. Built with
    ElementTree, so every value is escaped by construction."""
    suite = ET.Element("testsuite", name="parity", tests=str(len(reports)),
                       failures=str(sum(r.verdict == "fail" for r in reports)),
                       errors=str(sum(r.verdict == "error" for r in reports)),
                       time=f"{sum(r.durations.get('total', 0.0) for r in reports):.3f}")
    for r in reports:
        case = ET.SubElement(suite, "testcase", classname=_xml_text(f"parity.{r.recipe_id.split('-')[0]}"),
                             name=_xml_text(r.recipe_id), time=f"{r.durations.get('total', 0.0):.3f}")
        alerts = _alerts(r)
        if alerts:
            properties = ET.SubElement(case, "properties")
            for alert in alerts:
                ET.SubElement(properties, "property", name="parity-alert", value=_xml_text(alert))
        if r.verdict == "fail":
            worst = max((c.max_abs or 0.0 for c in r.captures), default=0.0)
            message = (f"first divergence: {r.first_divergence} (worst max abs {worst:.3g})" if r.first_divergence
                       else alerts[0])
            failure = ET.SubElement(case, "failure", message=_xml_text(message))
            failure.text = _xml_text(render_markdown(r))
        elif r.verdict == "error":
            ET.SubElement(case, "error", message=_xml_text(r.error or "error"))
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
