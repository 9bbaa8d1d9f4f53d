"""Human-readable reports rendered from report.json alone (so `parity report` never recomputes anything)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.manifests import CaptureResult, ParityReport, load_model


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
    lines = [f"## parity: `{report.variant}` — {verdict}", ""]
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
    folder = Path(folder)
    tmp = folder / ".report.md.tmp"
    tmp.write_text(render_markdown(report))
    tmp.replace(folder / "report.md")


def rerender(path: Path) -> ParityReport:
    """`parity report DIR`: read report.json, write report.md again."""
    path = Path(path)
    json_path = path / "report.json" if path.is_dir() else path
    report = load_model(ParityReport, json_path)
    write_reports(report, json_path.parent)
    return report
