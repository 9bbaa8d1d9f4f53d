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
    origin = to_numpy(dump.references[worst.name]).astype(np.float64)
    diff = np.abs(to_numpy(captured[worst.name][1]).astype(np.float64).reshape(origin.shape) - origin)
    grid = diff.reshape(-1, diff.shape[-1]) if diff.ndim >= 2 else diff.reshape(1, -1)
    rows = -(-grid.shape[0] // cells)
    cols = -(-grid.shape[1] // cells)
    padded = np.zeros((-(-grid.shape[0] // rows) * rows, -(-grid.shape[1] // cols) * cols))
    padded[: grid.shape[0], : grid.shape[1]] = grid
    blocks = padded.reshape(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols).max(axis=(1, 3))
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
