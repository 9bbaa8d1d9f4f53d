"""--all-modules: module pairs derived from the weight mapping, generic layout adapters, and their diffs."""

from __future__ import annotations

import numpy as np
import torch

from parity.contracts.conversion import ConversionRecord
from parity.contracts.metrics import compare
from parity.contracts.report import CaptureResult
from parity.port.diffing import Judge
from parity.port.dump import Dump
from parity.runtime.tensors import to_numpy


def derive_module_pairs(record: ConversionRecord) -> list[tuple[str, str]]:
    """Module correspondences implied by the weight mapping.

    The owners of a source and a target tensor correspond. Their ancestors are walked up in step while both paths
    have the same depth, or (when an extra level exists on one side, e.g. an MLP's `layers.0` -> `proj_in`) only
    while the trailing names agree; a pair is kept when every mapping agrees on it (original blocks.3 -> port
    layers.3 always, and no second original module claims the same port module)."""
    candidates: dict[str, set[str]] = {}
    owners: set[tuple[str, str]] = set()
    for mapping in record.mappings:
        if mapping.op == "drop":
            continue
        for source in mapping.sources:
            for target in mapping.targets:
                src, tgt = source.rpartition(".")[0], target.rpartition(".")[0]
                owners.add((src, tgt))
                while src and tgt:
                    candidates.setdefault(src, set()).add(tgt)
                    same_depth = src.count(".") == tgt.count(".")
                    if not same_depth and src.rpartition(".")[2] != tgt.rpartition(".")[2]:
                        break
                    src, tgt = src.rpartition(".")[0], tgt.rpartition(".")[0]
    claimed: dict[str, int] = {}
    for targets in candidates.values():
        for target in targets:
            claimed[target] = claimed.get(target, 0) + 1
    pairs = set(owners)
    for src, targets in candidates.items():
        if len(targets) == 1:
            (tgt,) = targets
            if claimed[tgt] == 1:
                pairs.add((src, tgt))
    return sorted(pairs)


LAYOUTS: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("NHWC -> NCHW", 4, (0, 3, 1, 2)),
    ("NCHW -> NHWC", 4, (0, 2, 3, 1)),
    ("batch-first <-> sequence-first", 3, (1, 0, 2)),
)


def adapt_layout(origin: np.ndarray, port: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Generic layout adapters for derived module pairs, applied only when exactly one makes the shapes agree:
    dropping singleton axes (batch-of-one prompt axes, tuple outputs), NHWC <-> NCHW, sequence- vs batch-first."""
    if origin.shape == port.shape:
        return port, None
    if origin.size == port.size and [d for d in origin.shape if d != 1] == [d for d in port.shape if d != 1]:
        return port.reshape(origin.shape), f"reshaped {list(port.shape)} -> {list(origin.shape)}"
    fits = [(name, axes) for name, ndim, axes in LAYOUTS
            if port.ndim == ndim and tuple(port.shape[a] for a in axes) == origin.shape]
    if len(fits) == 1:
        name, axes = fits[0]
        return port.transpose(axes), name
    return port, None


def diff_modules(judge: Judge, dump: Dump, record: ConversionRecord, port_outputs: dict[str, torch.Tensor]
                 ) -> tuple[list[CaptureResult], list[str]]:
    origin_outputs = dump.module_outputs()
    order = {entry.name: entry.execution_index for entry in dump.manifest.modules}
    results, paired_origin, paired_port = [], set(), set()
    for src, tgt in derive_module_pairs(record):
        if src not in origin_outputs or tgt not in port_outputs:
            continue
        paired_origin.add(src)
        paired_port.add(tgt)
        origin = to_numpy(origin_outputs[src])
        port, note = adapt_layout(origin, to_numpy(port_outputs[tgt]))
        tol = judge.tolerance(src)
        result = compare(src, order[src], origin, port, tol.atol, tol.rtol, port_name=tgt, reason=tol.reason,
                         nonfinite=tol.nonfinite)
        result.note = note
        results.append(result)
    unpaired = [f"original {name}" for name in origin_outputs if name not in paired_origin]
    unpaired += [f"port {name}" for name in port_outputs if name not in paired_port]
    return results, unpaired
