"""Human-readable reports rendered from report.json alone (so `parity report` never recomputes anything)."""

from __future__ import annotations

import html
import math
from pathlib import Path

from parity.contracts.io import load_model
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


def render_markdown(report: ParityReport) -> str:
    verdict = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}[report.verdict]
    lines = [f"## parity: `{report.recipe_id}` — {verdict}", ""]
    if report.error:
        lines += [f"**Error:** {report.error}", ""]
    if report.first_divergence:
        lines += [f"**First divergence:** `{report.first_divergence}` (later failures are marked downstream)", ""]
    passed = sum(r.verdict == "pass" for r in report.captures)
    worst = max((r.max_abs or 0.0 for r in report.captures), default=0.0)
    lines += [
        f"- captures: {passed}/{len(report.captures)} pass, worst max-abs {_num(worst)}",
        f"- references: {report.dump_producer} dump `{report.dump}`; port: {report.port}",
    ]
    if report.conversion:
        c = report.conversion
        state = "ok" if c.ok else f"{len(c.unused)} unmapped, {len(c.missing)} missing, {len(c.shape_errors)} shape errors"
        lines.append(f"- weights: {c.source_keys} original keys → {c.target_keys} port keys, accounting {state}")
    if report.processor:
        p = report.processor
        lines.append(f"- preprocessing ({p.processor}): {p.verdict.upper()}" + (f" — {p.note}" if p.note else ""))
    if report.durations:
        lines.append("- time: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.durations.items()))
    if report.captures:
        lines += ["", "| capture | verdict | max abs | max rel | cosine | atol needed | tolerance |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(report.captures, key=_severity):
            verdict_cell = r.verdict + (" (downstream)" if r.downstream else "")
            tol = f"{_num(r.atol)} / {_num(r.rtol)}" + (" *" if r.tolerance_reason else "")
            lines.append(f"| `{r.name}` | {verdict_cell} | {_num(r.max_abs)} | {_num(r.max_rel)} | "
                         f"{_num(r.cosine)} | {_num(r.atol_needed)} | {tol} |")
        reasons = {r.tolerance_reason for r in report.captures if r.tolerance_reason}
        for reason in sorted(reasons):
            lines.append(f"\n\\* {reason}")
    return "\n".join(lines) + "\n"


def write_reports(report: ParityReport, folder: Path) -> None:
    """report.md (fits a GitHub step summary), report.html (self-contained), junit.xml (one testcase)."""
    folder = Path(folder)
    _write(folder / "report.md", render_markdown(report))
    _write(folder / "report.html", render_html(report))
    _write(folder / "junit.xml", render_junit([report]))


def write_summary(reports: list[ParityReport], folder: Path) -> None:
    """For a selector run: one junit.xml with a testcase per variant, and summary.md with one row each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "junit.xml", render_junit(reports))
    lines = ["| variant | verdict | first divergence | worst max-abs | time |", "|---|---|---|---|---|"]
    for r in reports:
        worst = max((c.max_abs or 0.0 for c in r.captures), default=0.0)
        lines.append(f"| `{r.recipe_id}` | {r.verdict} | {r.first_divergence or r.error or ''} | {_num(worst)} | "
                     f"{r.durations.get('total', 0.0):.1f}s |")
    _write(folder / "summary.md", "\n".join(lines) + "\n")


def rerender(path: Path) -> ParityReport:
    """`parity report DIR`: read report.json, write report.md, report.html and junit.xml again."""
    path = Path(path)
    json_path = path / "report.json" if path.is_dir() else path
    report = load_model(ParityReport, json_path)
    write_reports(report, json_path.parent)
    return report


def _log10(value: float | None) -> float:
    return math.log10(max(value or 0.0, 1e-12))


def _plot_svg(report: ParityReport) -> str:
    """Max-abs error of every capture in origin execution order (log scale), the applied atol as a dash."""
    captures = sorted(report.captures, key=lambda r: r.execution_index)
    if not captures:
        return "<p>No captures.</p>"
    width, height, left, bottom, top = max(640, 12 * len(captures) + 80), 300, 60, 40, 16
    values = [_log10(r.max_abs) for r in captures] + [_log10(r.atol) for r in captures]
    lo, hi = math.floor(min(values)), math.ceil(max(values) + 0.01)
    span = max(hi - lo, 1)

    def x(i: int) -> float:
        return left + (i + 0.5) * (width - left - 10) / len(captures)

    def y(v: float) -> float:
        return top + (hi - v) * (height - top - bottom) / span

    parts = [f'<svg id="depth-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="max abs error per capture">']
    for tick in range(lo, hi + 1):
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" class="tick">1e{tick}</text>')
    for i, r in enumerate(captures):
        parts.append(f'<line x1="{x(i) - 4:.1f}" x2="{x(i) + 4:.1f}" y1="{y(_log10(r.atol)):.1f}" '
                     f'y2="{y(_log10(r.atol)):.1f}" class="atol"/>')
    for i, r in enumerate(captures):
        cls = "pass" if r.verdict == "pass" else ("downstream" if r.downstream else "fail")
        parts.append(f'<circle class="capture {cls}" cx="{x(i):.1f}" cy="{y(_log10(r.max_abs)):.1f}" r="4" '
                     f'data-name="{html.escape(r.name)}"><title>{html.escape(r.name)}: {r.verdict}, max abs '
                     f'{_num(r.max_abs)} (atol {_num(r.atol)})</title></circle>')
    parts.append(f'<text x="{left}" y="{height - 8}" class="axis">captures in origin execution order → '
                 f'(exact zeros sit on the bottom line; dashes: applied atol)</text></svg>')
    return "".join(parts)


def _heatmap_svg(report: ParityReport) -> str:
    hm = report.heatmap
    if hm is None or not hm.values:
        return "<p>No heatmap (nothing was compared).</p>"
    rows, cols = hm.shape
    cell = max(4, min(12, 480 // max(rows, cols)))
    peak = max(max(row) for row in hm.values) or 1.0
    parts = [f'<svg id="heatmap" xmlns="http://www.w3.org/2000/svg" width="{cols * cell}" height="{rows * cell}">']
    for r, row in enumerate(hm.values):
        for c, value in enumerate(row):
            shade = int(255 * (1 - value / peak))
            parts.append(f'<rect x="{c * cell}" y="{r * cell}" width="{cell}" height="{cell}" '
                         f'fill="rgb(255,{shade},{shade})"><title>{value:.3g}</title></rect>')
    parts.append("</svg>")
    caption = (f"<p><code>{html.escape(hm.capture)}</code> {hm.source_shape}: block maxima of |port − origin| "
               f"(darkest = {peak:.3g}), leading axes folded into rows.</p>")
    return caption + "".join(parts)


def _rows(results: list[CaptureResult]) -> str:
    out = []
    for r in sorted(results, key=lambda c: c.execution_index):
        cls = "pass" if r.verdict == "pass" else "fail"
        out.append(
            f'<tr class="{cls}"><td>{r.execution_index}</td><td><code>{html.escape(r.name)}</code></td>'
            f'<td><code>{html.escape(r.port_name or "–")}</code></td>'
            f'<td>{r.verdict}{" (downstream)" if r.downstream else ""}</td><td>{_num(r.max_abs)}</td>'
            f'<td>{_num(r.max_rel)}</td><td>{_num(r.mean_abs)}</td><td>{_num(r.rms)}</td><td>{_num(r.cosine)}</td>'
            f'<td>{_num(r.mismatch_fraction)}</td><td>{_num(r.atol_needed)}</td><td>{_num(r.rtol_needed)}</td>'
            f'<td>{_num(r.atol)} / {_num(r.rtol)}</td>'
            f'<td>{html.escape(r.tolerance_reason or r.note or "")}</td></tr>')
    header = ("<tr><th>#</th><th>origin capture</th><th>port</th><th>verdict</th><th>max abs</th><th>max rel</th>"
              "<th>mean abs</th><th>rms</th><th>cosine</th><th>mismatch</th><th>atol needed</th><th>rtol needed</th>"
              "<th>atol / rtol</th><th>note</th></tr>")
    return f'<table class="sortable"><thead>{header}</thead><tbody>{"".join(out)}</tbody></table>'


def _env_table(report: ParityReport) -> str:
    rows = []
    for label, env in (("origin", report.origin_environment), ("port", report.port_environment)):
        if env is None:
            continue
        packages = ", ".join(f"{k} {v}" for k, v in env.packages.items())
        rows.append(f"<tr><td>{label}</td><td>{html.escape(env.python)}</td><td>{html.escape(env.torch or '–')}</td>"
                    f"<td>{html.escape(env.device)}</td><td>{html.escape(packages)}</td>"
                    f"<td>{html.escape(env.upstream or '')}</td></tr>")
    return ("<table><tr><th>side</th><th>python</th><th>torch</th><th>device</th><th>packages</th><th>upstream</th>"
            f"</tr>{''.join(rows)}</table>")


STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f4f4f4;cursor:pointer}
tr.fail td{background:#fff0f0}.verdict-pass{color:#176f2c}.verdict-fail,.verdict-error{color:#b00020}
.grid{stroke:#eee}.tick{font-size:10px;fill:#666;text-anchor:end}.axis{font-size:11px;fill:#666}.atol{stroke:#888;stroke-dasharray:2}
circle.pass{fill:#2e7d32}circle.fail{fill:#c62828}circle.downstream{fill:#ef9a9a}code{font-size:12px}
"""

SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var num = function (r) { var v = parseFloat(r.cells[col].textContent); return isNaN(v) ? r.cells[col].textContent : v; };
    rows.sort(function (a, b) { var x = num(a), y = num(b); return x < y ? 1 : x > y ? -1 : 0; });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.body.setAttribute('data-ready', String(document.querySelectorAll('#depth-plot circle.capture').length));
"""


def render_html(report: ParityReport) -> str:
    """One self-contained file: no external scripts, styles or fonts."""
    title = f"parity: {report.recipe_id} — {report.verdict.upper()}"
    sections = [f'<h1 class="verdict-{report.verdict}">{html.escape(title)}</h1>']
    if report.error:
        sections.append(f"<p><b>Error:</b> {html.escape(report.error)}</p>")
    if report.first_divergence:
        sections.append(f"<p><b>First divergence:</b> <code>{html.escape(report.first_divergence)}</code></p>")
    facts = [f"recipe hash <code>{report.recipe_hash}</code>", f"checkpoint sha256 <code>{report.checkpoint_sha256}</code>",
             f"references: {report.dump_producer} dump <code>{html.escape(report.dump)}</code>",
             f"port: {html.escape(report.port)}"]
    if report.conversion:
        c = report.conversion
        facts.append(f"weights: {c.source_keys} original → {c.target_keys} port keys, accounting "
                     f"{'ok' if c.ok else 'FAILED'}")
    if report.processor:
        facts.append(f"preprocessing ({html.escape(report.processor.processor)}): {report.processor.verdict}")
    sections.append("<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>")
    sections += ["<h2>Error across depth</h2>", _plot_svg(report), "<h2>Worst difference</h2>", _heatmap_svg(report),
                 "<h2>Captures</h2>", _rows(report.captures)]
    if report.modules:
        sections += [f"<h2>Derived module pairs (first divergence: "
                     f"<code>{html.escape(report.module_first_divergence or 'none')}</code>)</h2>", _rows(report.modules)]
    if report.unpaired:
        sections += ["<h2>Unpaired modules</h2>", "<ul>" + "".join(f"<li><code>{html.escape(u)}</code></li>"
                                                                   for u in report.unpaired) + "</ul>"]
    if report.processor and report.processor.checks:
        sections += ["<h2>Preprocessing</h2>", _rows(report.processor.checks)]
    sections += ["<h2>Environments</h2>", _env_table(report)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(sections)}<script>{SCRIPT}</script></body></html>\n")


def render_junit(reports: list[ParityReport]) -> str:
    """One testcase per variant; a failure carries the first divergence, an error its message."""
    failures = sum(r.verdict == "fail" for r in reports)
    errors = sum(r.verdict == "error" for r in reports)
    total = sum(r.durations.get("total", 0.0) for r in reports)
    cases = []
    for r in reports:
        attrs = (f'classname="parity.{html.escape(r.recipe_id.split("-")[0])}" name="{html.escape(r.recipe_id)}" '
                 f'time="{r.durations.get("total", 0.0):.3f}"')
        if r.verdict == "fail":
            worst = max((c.max_abs or 0.0 for c in r.captures), default=0.0)
            message = f"first divergence: {r.first_divergence} (worst max abs {worst:.3g})"
            body = f'<failure message="{html.escape(message)}">{html.escape(render_markdown(r))}</failure>'
        elif r.verdict == "error":
            body = f'<error message="{html.escape(r.error or "error")}"/>'
        else:
            body = ""
        cases.append(f"<testcase {attrs}>{body}</testcase>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="parity" tests="{len(reports)}" '
            f'failures="{failures}" errors="{errors}" time="{total:.3f}">{"".join(cases)}</testsuite>\n')


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
