"""The comparison itself: per-pair metrics, tolerance resolution and first divergence. numpy only, float64 math."""

from __future__ import annotations

import fnmatch

import numpy as np

from orchestrator.manifests import CaptureResult, TolerancePolicy


def resolve_tolerance(policy: TolerancePolicy, name: str) -> tuple[float, float, str | None]:
    """The first override whose pattern matches the capture name wins; otherwise the recipe defaults."""
    for pattern, override in policy.overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return override.atol, override.rtol, override.reason
    atol, rtol = policy.defaults()
    return atol, rtol, None


def compare(
    name: str,
    execution_index: int,
    origin: np.ndarray,
    port: np.ndarray | None,
    atol: float,
    rtol: float,
    *,
    port_name: str | None = None,
    reason: str | None = None,
) -> CaptureResult:
    base = dict(
        name=name, port_name=port_name, execution_index=execution_index, origin_shape=list(origin.shape),
        port_shape=None if port is None else list(port.shape), atol=atol, rtol=rtol, tolerance_reason=reason,
    )
    if port is None:
        return CaptureResult(verdict="missing", **base)
    if origin.shape != port.shape:
        return CaptureResult(verdict="shape-mismatch", **base)
    origin_float, port_float = np.issubdtype(origin.dtype, np.floating), np.issubdtype(port.dtype, np.floating)
    if origin_float != port_float:
        return CaptureResult(verdict="dtype-mismatch", note=f"{origin.dtype} vs {port.dtype}", **base)
    o = origin.astype(np.float64)
    p = port.astype(np.float64)
    bad_o = int(np.count_nonzero(~np.isfinite(o)))
    bad_p = int(np.count_nonzero(~np.isfinite(p)))
    if bad_o or bad_p:
        same = bad_o == bad_p and np.array_equal(np.isnan(o), np.isnan(p)) and np.array_equal(o[np.isinf(o)], p[np.isinf(p)])
        if not same:
            return CaptureResult(verdict="nonfinite", nonfinite_origin=bad_o, nonfinite_port=bad_p, **base)
        finite = np.isfinite(o)
        o, p = np.where(finite, o, 0.0), np.where(finite, p, 0.0)
    if o.size == 0:
        return CaptureResult(verdict="pass", max_abs=0.0, mean_abs=0.0, rms=0.0, mismatch_fraction=0.0, **base)
    diff = np.abs(p - o)
    mag = np.abs(o)
    excess = diff - (atol + rtol * mag)
    worst = np.unravel_index(int(np.argmax(excess)), o.shape)
    nonzero = mag > 0
    max_rel = float(np.max(diff[nonzero] / mag[nonzero])) if nonzero.any() else 0.0
    over = diff > atol
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_needed = np.where(over, (diff - atol) / mag, 0.0)
    norm = float(np.linalg.norm(o) * np.linalg.norm(p))
    cosine = float(np.dot(o.ravel(), p.ravel()) / norm) if norm > 0 else (1.0 if np.array_equal(o, p) else 0.0)
    passed = bool(np.all(excess <= 0))
    return CaptureResult(
        verdict="pass" if passed else "fail",
        max_abs=float(diff.max()),
        max_rel=max_rel,
        mean_abs=float(diff.mean()),
        rms=float(np.sqrt(np.mean(diff**2))),
        cosine=cosine,
        mismatch_fraction=float(np.count_nonzero(excess > 0) / o.size),
        worst_index=[int(i) for i in worst],
        atol_needed=float(max(0.0, np.max(diff - rtol * mag))),
        rtol_needed=float(np.max(rel_needed)) if over.any() else 0.0,
        nonfinite_origin=bad_o,
        nonfinite_port=bad_p,
        **base,
    )


def mark_first_divergence(results: list[CaptureResult]) -> str | None:
    """Order by origin execution; the first failing pair is the divergence, later failures are downstream."""
    results.sort(key=lambda r: r.execution_index)
    first = None
    for result in results:
        if result.verdict == "pass":
            continue
        if first is None:
            first = result.name
        else:
            result.downstream = True
    return first
