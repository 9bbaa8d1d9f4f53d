"""Judging the port's captures against the references: tolerances from the one resolver, metrics, the heatmap and
the processor verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from parity.contracts.metrics import compare
from parity.contracts.recipe import TolerancePolicy
from parity.contracts.report import (
    CaptureResult,
    Heatmap,
    NonfiniteFinding,
    NonfiniteWhere,
    ProcessorResult,
    ToleranceWidening,
)
from parity.contracts.tolerance import Tolerance, nonfinite_allowance, resolve, widenings
from parity.port.dump import Dump
from parity.runtime.tensors import NonfiniteTally, to_numpy

Captured = dict[str, tuple[str, torch.Tensor]]
"""{origin capture name: (port description, port tensor in the origin's layout)}."""


@dataclass(frozen=True)
class Judge:
    """The tolerance context of one comparison: the recipe's policy, where each side ran, the compute dtype."""

    policy: TolerancePolicy
    device: str
    dtype: str = "float32"
    registry: TolerancePolicy | None = None
    """The registry's policy for the dump's recipe id, when the registry knows it (to flag a widened tolerance)."""

    @classmethod
    def for_dump(cls, dump: Dump, port_device: str, registry: TolerancePolicy | None = None) -> Judge:
        origin_device = dump.manifest.environment.device
        device = "cuda" if "cuda" in (origin_device.split(":")[0], port_device.split(":")[0]) else "cpu"
        return cls(dump.recipe.tolerance, device, dump.manifest.determinism.dtype, registry)

    def tolerance(self, name: str) -> Tolerance:
        return resolve(self.policy, name, device=self.device, dtype=self.dtype)

    def widened(self, names: list[str], judged: dict[str, tuple[np.ndarray, np.ndarray | None]]
                ) -> list[ToleranceWidening]:
        """Names the dump's recipe judges more loosely than the registry's, each with the verdict the registry's
        tolerance gives (`judged`: name -> (origin, port) arrays of the compared pairs)."""
        if self.registry is None:
            return []
        found = widenings(self.policy, self.registry, names, device=self.device, dtype=self.dtype)
        for widening in found:
            if widening.name in judged:
                origin, port = judged[widening.name]
                strict = resolve(self.registry, widening.name, device=self.device, dtype=self.dtype)
                widening.verdict_under_registry = compare(widening.name, 0, origin, port, strict.atol, strict.rtol,
                                                          nonfinite=strict.nonfinite).verdict
        # the captures whose verdict the widening changed come first
        return sorted(found, key=lambda w: w.verdict_under_registry in (None, "pass"))


def diff_captures(judge: Judge, dump: Dump, captured: Captured) -> list[CaptureResult]:
    results = []
    for entry in dump.manifest.references:
        tol = judge.tolerance(entry.name)
        port_name, tensor = captured.get(entry.name, (None, None))
        results.append(compare(entry.name, entry.execution_index, to_numpy(dump.references[entry.name]),
                               None if tensor is None else to_numpy(tensor), tol.atol, tol.rtol,
                               port_name=port_name, reason=tol.reason, nonfinite=tol.nonfinite))
    return results


def judged_pairs(dump: Dump, captured: Captured) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """(origin, port) arrays of every reference, for re-judging under another tolerance."""
    return {name: (to_numpy(ref), None if name not in captured else to_numpy(captured[name][1]))
            for name, ref in dump.references.items()}


def _abs_difference(origin: np.ndarray, port: np.ndarray) -> np.ndarray:
    """|port - origin|, 0 where both hold the same non-finite value, inf where only one side is non-finite."""
    with np.errstate(invalid="ignore"):
        diff = np.abs(port - origin)
    same = (origin == port) | (np.isnan(origin) & np.isnan(port))
    diff[~np.isfinite(diff)] = np.inf
    diff[same & ~np.isfinite(origin)] = 0.0
    return diff


def heatmap(dump: Dump, captured: Captured, results: list[CaptureResult], cells: int = 48) -> Heatmap | None:
    """Block maxima of |diff| for the capture needing the largest atol, folded to 2-D."""
    candidates = [r for r in results if r.atol_needed is not None and r.name in captured]
    if not candidates:
        return None
    worst = max(candidates, key=lambda r: (r.verdict != "pass", r.atol_needed))
    origin = to_numpy(dump.references[worst.name])
    width = origin.shape[-1] if origin.ndim >= 2 else origin.size
    grid_origin = origin.reshape(-1, width)
    grid_port = to_numpy(captured[worst.name][1]).reshape(grid_origin.shape)
    rows = -(-grid_origin.shape[0] // cells)
    starts = np.arange(0, width, -(-width // cells))
    # One band of grid rows at a time, so a full-size capture is never copied whole in float64.
    blocks = np.array([np.maximum.reduceat(_abs_difference(grid_origin[r:r + rows].astype(np.float64),
                                                           grid_port[r:r + rows].astype(np.float64)).max(axis=0),
                                           starts) for r in range(0, grid_origin.shape[0], rows)])
    return Heatmap(capture=worst.name, shape=list(blocks.shape), source_shape=list(origin.shape),
                   values=[[float(v) if np.isfinite(v) else None for v in row] for row in blocks])


def processor_verdict(judge: Judge, family, recipe, processor, dump: Dump
                      ) -> tuple[ProcessorResult, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The HF processor on the raw inputs vs the original preprocessing; reported beside, never instead of, the model
    verdict (an exception in the family's checks becomes an 'error' processor verdict). Also returns the compared
    (original, port) arrays by check name."""
    try:
        checks, note = family.processor_checks(recipe, processor, dump)
    except Exception as exc:  # the processor is reported on, it never hides the model verdict
        return ProcessorResult(processor=type(processor).__name__, verdict="error", checks=[],
                               note=f"{type(exc).__name__}: {exc}"), {}
    results, pairs = [], {}
    for index, (name, port_name, origin, port) in enumerate(checks):
        tol = judge.tolerance(name)
        pairs[name] = (to_numpy(origin), to_numpy(port))
        results.append(compare(name, index, *pairs[name], tol.atol, tol.rtol, port_name=port_name, reason=tol.reason,
                               nonfinite=tol.nonfinite))
    verdict = "pass" if all(r.verdict == "pass" for r in results) else "fail"
    return ProcessorResult(processor=note["processor"], verdict=verdict, checks=results, note=note.get("note")), pairs


def nonfinite_counts(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, set[str]]]:
    """{name: (non-finite elements, which of nan / inf / -inf)} for every floating tensor holding any."""
    tally = NonfiniteTally()
    for name, tensor in tensors.items():
        tally.add(name, tensor)
    return tally.found


def nonfinite_findings(judge: Judge, where: NonfiniteWhere, counts: dict[str, tuple[int, set[str]]]
                       ) -> list[NonfiniteFinding]:
    """NaN/Inf counted in a set of tensors (weights, dump inputs); declared only when the recipe allows every kind
    found."""
    findings = []
    for name, (count, kinds) in counts.items():
        allowance = nonfinite_allowance(judge.policy, name)
        declared = allowance.reason if allowance and kinds <= set(allowance.values) else None
        findings.append(NonfiniteFinding(where=where, name=name, count=count, declared=declared))
    return findings


def capture_findings(results: list[CaptureResult], origin_side: NonfiniteWhere, port_side: NonfiniteWhere
                     ) -> list[NonfiniteFinding]:
    """NaN/Inf counted by the comparisons: declared when the capture's declaration held (same positions, allowed
    kinds); a 'nonfinite' verdict is undeclared."""
    findings = []
    for r in results:
        declared = r.nonfinite_reason if r.verdict != "nonfinite" else None
        for where, count in ((origin_side, r.nonfinite_origin), (port_side, r.nonfinite_port)):
            if count:
                findings.append(NonfiniteFinding(where=where, name=r.name, count=count, declared=declared))
    return findings
