"""The comparison itself: per-pair metrics and the first divergence. numpy only, float64 math, so the host (origin vs
origin) and the port environment compute identical numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


CHUNK = 1 << 20
"""Elements compared at a time: the float64 temporaries stay a few MiB however large the tensor is."""


@dataclass
class _Totals:
    """Running reductions over the chunks of one comparison."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    sum_abs: float = 0.0
    sum_sq: float = 0.0
    dot_oo: float = 0.0
    dot_pp: float = 0.0
    dot_op: float = 0.0
    over: int = 0
    largest_excess: float = -math.inf
    worst: int = 0
    rtol_needed: float = 0.0

    def add(self, o: np.ndarray, p: np.ndarray, start: int, atol: float, rtol: float) -> None:
        diff = np.abs(p - o)
        mag = np.abs(o)
        # excess > 0 exactly where |diff| > atol + rtol * |origin|; the atol that would just pass is max(excess) + atol.
        excess = diff - rtol * mag
        excess -= atol
        worst = int(np.argmax(excess))
        if excess[worst] > self.largest_excess:
            self.largest_excess, self.worst = float(excess[worst]), start + worst
        over = np.flatnonzero(diff > atol)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.divide(diff, mag, out=np.zeros_like(diff), where=mag > 0)
            if over.size:
                self.rtol_needed = max(self.rtol_needed, float(np.max((diff[over] - atol) / mag[over])))
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_rel = max(self.max_rel, float(rel.max()))
        self.sum_abs += float(diff.sum())
        self.sum_sq += float(np.dot(diff, diff))
        self.dot_oo += float(np.dot(o, o))
        self.dot_pp += float(np.dot(p, p))
        self.dot_op += float(np.dot(o, p))
        self.over += int(np.count_nonzero(excess > 0))


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
    flat_o, flat_p = origin.reshape(-1), port.reshape(-1)
    size = flat_o.size
    if size == 0:
        return CaptureResult(verdict="pass", max_abs=0.0, mean_abs=0.0, rms=0.0, mismatch_fraction=0.0, **base)
    totals, bad_o, bad_p, same_nonfinite, kinds = _Totals(), 0, 0, True, set()
    for start in range(0, size, CHUNK):
        o = flat_o[start:start + CHUNK].astype(np.float64)
        p = flat_p[start:start + CHUNK].astype(np.float64)
        if not (np.isfinite(o).all() and np.isfinite(p).all()):
            finite_o, finite_p = np.isfinite(o), np.isfinite(p)
            bad_o += int(o.size - np.count_nonzero(finite_o))
            bad_p += int(p.size - np.count_nonzero(finite_p))
            kinds |= nonfinite_kinds(o) | nonfinite_kinds(p)
            same_nonfinite = same_nonfinite and np.array_equal(finite_o, finite_p) and \
                np.array_equal(o[~finite_o], p[~finite_p], equal_nan=True)
            o, p = np.where(finite_o, o, 0.0), np.where(finite_o, p, 0.0)
        totals.add(o, p, start, atol, rtol)
    if kinds:
        counts = dict(nonfinite_origin=bad_o, nonfinite_port=bad_p)
        unexpected = kinds - (set(nonfinite.values) if nonfinite else set())
        if unexpected:
            note = f"{', '.join(sorted(unexpected))} not declared by the recipe (tolerance.nonfinite)"
            return CaptureResult(verdict="nonfinite", note=note, **counts, **base)
        if not same_nonfinite:
            return CaptureResult(verdict="nonfinite", nonfinite_reason=nonfinite.reason,
                                 note="declared NaN/Inf values sit at different positions or signs", **counts, **base)
        base["nonfinite_reason"] = nonfinite.reason
    norm = math.sqrt(totals.dot_oo * totals.dot_pp)
    # A zero norm means a side is all zeros (after non-finite values are zeroed): the pair is equal iff both are.
    cosine = totals.dot_op / norm if norm > 0 else (1.0 if totals.dot_oo == totals.dot_pp == 0 else 0.0)
    return CaptureResult(
        verdict="pass" if totals.largest_excess <= 0 else "fail",
        max_abs=totals.max_abs,
        max_rel=totals.max_rel,
        mean_abs=totals.sum_abs / size,
        rms=math.sqrt(totals.sum_sq / size),
        cosine=cosine,
        mismatch_fraction=totals.over / size,
        worst_index=[int(i) for i in np.unravel_index(totals.worst, origin.shape)],
        atol_needed=max(0.0, totals.largest_excess + atol),
        rtol_needed=totals.rtol_needed,
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
