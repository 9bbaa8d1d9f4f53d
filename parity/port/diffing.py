"""Judging the port's captures against the references: tolerances from the one resolver, metrics, the heatmap and
the processor verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from parity.contracts.metrics import compare
from parity.contracts.recipe import TolerancePolicy
from parity.contracts.report import CaptureResult, Heatmap, ProcessorResult
from parity.contracts.tolerance import Tolerance, resolve
from parity.port.dump import Dump
from parity.runtime.tensors import to_numpy

Captured = dict[str, tuple[str, torch.Tensor]]
"""{origin capture name: (port description, port tensor in the origin's layout)}."""


@dataclass(frozen=True)
class Judge:
    """The tolerance context of one comparison: the recipe's policy, where each side ran, the compute dtype."""

    policy: TolerancePolicy
    device: str
    dtype: str = "float32"

    @classmethod
    def for_dump(cls, dump: Dump, port_device: str) -> Judge:
        origin_device = dump.manifest.environment.device
        device = "cuda" if "cuda" in (origin_device.split(":")[0], port_device.split(":")[0]) else "cpu"
        return cls(dump.recipe.tolerance, device, dump.manifest.determinism.dtype)

    def tolerance(self, name: str) -> Tolerance:
        return resolve(self.policy, name, device=self.device, dtype=self.dtype)


def diff_captures(judge: Judge, dump: Dump, captured: Captured) -> list[CaptureResult]:
    results = []
    for entry in dump.manifest.references:
        tol = judge.tolerance(entry.name)
        port_name, tensor = captured.get(entry.name, (None, None))
        results.append(compare(entry.name, entry.execution_index, to_numpy(dump.references[entry.name]),
                               None if tensor is None else to_numpy(tensor), tol.atol, tol.rtol,
                               port_name=port_name, reason=tol.reason))
    return results


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
    blocks = np.array([np.maximum.reduceat(np.abs(grid_port[r:r + rows].astype(np.float64) - grid_origin[r:r + rows])
                                           .max(axis=0), starts) for r in range(0, grid_origin.shape[0], rows)])
    return Heatmap(capture=worst.name, shape=list(blocks.shape), source_shape=list(origin.shape),
                   values=[[float(v) for v in row] for row in blocks])


def processor_verdict(judge: Judge, family, recipe, processor, dump: Dump) -> ProcessorResult:
    """The HF processor on the raw inputs vs the original preprocessing; reported beside, never instead of, the model
    verdict (an exception in the family's checks becomes an 'error' processor verdict)."""
    try:
        checks, note = family.processor_checks(recipe, processor, dump)
    except Exception as exc:  # the processor is reported on, it never hides the model verdict
        return ProcessorResult(processor=type(processor).__name__, verdict="error", checks=[],
                               note=f"{type(exc).__name__}: {exc}")
    results = []
    for index, (name, port_name, origin, port) in enumerate(checks):
        tol = judge.tolerance(name)
        results.append(compare(name, index, to_numpy(origin), to_numpy(port), tol.atol, tol.rtol,
                               port_name=port_name, reason=tol.reason))
    verdict = "pass" if all(r.verdict == "pass" for r in results) else "fail"
    return ProcessorResult(processor=note["processor"], verdict=verdict, checks=results, note=note.get("note"))
