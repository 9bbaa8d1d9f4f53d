"""The comparison itself: per-pair metrics and the first divergence. numpy only, float64 math, so the host (origin vs
origin) and the port environment compute identical numbers."""

from __future__ import annotations

import numpy as np

from parity.contracts.recipe import NonfiniteAllowance
from parity.contracts.report import CaptureResult


def nonfinite_kinds(values: np.ndarray) -> set[str]:
    """Which of nan / inf / -inf occur in `values` (a float array)."""
    kinds = set()
    if np.isnan(values).any():
        kinds.add("nan")
    if np.isposinf(values).any():
        kinds.add("inf")
    if np.isneginf(values).any():
        kinds.add("-inf")
    return kinds


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
    nonfinite: NonfiniteAllowance | None = None,
) -> CaptureResult:
    """One pair's metrics and verdict. NaN/Inf on either side is the 'nonfinite' verdict, even at the same positions,
    unless `nonfinite` (the recipe's declaration) allows those values: then they must sit at the same positions with
    the same sign on both sides, and the finite elements are judged as usual."""
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
    o = origin.astype(np.float64).ravel()
    p = port.astype(np.float64).ravel()
    bad_o = bad_p = 0
    if not (np.isfinite(o).all() and np.isfinite(p).all()):
        finite_o, finite_p = np.isfinite(o), np.isfinite(p)
        bad_o, bad_p = int(o.size - np.count_nonzero(finite_o)), int(p.size - np.count_nonzero(finite_p))
        counts = dict(nonfinite_origin=bad_o, nonfinite_port=bad_p)
        allowed = set(nonfinite.values) if nonfinite else set()
        unexpected = (nonfinite_kinds(o) | nonfinite_kinds(p)) - allowed
        if unexpected:
            note = f"{', '.join(sorted(unexpected))} not declared by the recipe (tolerance.nonfinite)"
            return CaptureResult(verdict="nonfinite", note=note, **counts, **base)
        same = np.array_equal(finite_o, finite_p) and np.array_equal(o[~finite_o], p[~finite_p], equal_nan=True)
        if not same:
            return CaptureResult(verdict="nonfinite", nonfinite_reason=nonfinite.reason,
                                 note="declared NaN/Inf values sit at different positions or signs", **counts, **base)
        base["nonfinite_reason"] = nonfinite.reason
        o, p = np.where(finite_o, o, 0.0), np.where(finite_o, p, 0.0)
    if o.size == 0:
        return CaptureResult(verdict="pass", max_abs=0.0, mean_abs=0.0, rms=0.0, mismatch_fraction=0.0, **base)
    diff = np.abs(p - o)
    mag = np.abs(o)
    # excess > 0 exactly where |diff| > atol + rtol * |origin|; the atol that would just pass is max(excess) + atol.
    excess = diff - rtol * mag
    excess -= atol
    worst = int(np.argmax(excess))
    largest_excess = float(excess[worst])
    over = np.flatnonzero(diff > atol)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.divide(diff, mag, out=np.zeros_like(diff), where=mag > 0)
        rtol_needed = float(np.max((diff[over] - atol) / mag[over])) if over.size else 0.0
    norm = float(np.sqrt(np.dot(o, o) * np.dot(p, p)))
    cosine = float(np.dot(o, p) / norm) if norm > 0 else (1.0 if np.array_equal(o, p) else 0.0)
    return CaptureResult(
        verdict="pass" if largest_excess <= 0 else "fail",
        max_abs=float(diff.max()),
        max_rel=float(rel.max()),
        mean_abs=float(diff.mean()),
        rms=float(np.sqrt(np.dot(diff, diff) / diff.size)),
        cosine=cosine,
        mismatch_fraction=float(np.count_nonzero(excess > 0) / diff.size),
        worst_index=[int(i) for i in np.unravel_index(worst, origin.shape)],
        atol_needed=max(0.0, largest_excess + atol),
        rtol_needed=rtol_needed,
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
