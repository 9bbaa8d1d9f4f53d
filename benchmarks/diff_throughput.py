"""Diffing throughput of parity.contracts.metrics.compare vs a plain memory copy of the same tensors, side by side.

    .venv/bin/python benchmarks/diff_throughput.py [DUMP_DIR]

Uses a dump's references when given (e.g. out/sam-tiny-random/dump), else 64 MiB of synthetic fp32 activations.
Prints MB/s for both and the ratio (how many memory copies one full comparison costs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from parity.contracts.metrics import compare  # noqa: E402


def tensors(dump: Path | None) -> dict[str, np.ndarray]:
    if dump is not None:
        from safetensors.numpy import load_file

        return load_file(str(dump / "reference.safetensors"))
    rng = np.random.default_rng(0)
    return {f"t{i}": rng.normal(size=(1, 64, 64, 256)).astype(np.float32) for i in range(16)}


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    data = tensors(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    ports = {k: v + np.float32(1e-6) for k, v in data.items()}
    total = sum(v.nbytes for v in data.values()) / 1e6
    targets = {k: np.empty_like(v) for k, v in data.items()}

    def copy_all():
        for k, v in data.items():
            np.copyto(targets[k], v)

    def diff_all():
        for i, (k, v) in enumerate(data.items()):
            compare(k, i, v, ports[k], 1e-5, 1e-4)

    t_copy, t_diff = best_of(copy_all), best_of(diff_all)
    print(f"tensors: {len(data)}, {total:.1f} MB per side")
    print(f"memory copy : {total / t_copy:10.1f} MB/s")
    print(f"parity diff : {total / t_diff:10.1f} MB/s (two sides read, float64 metrics)")
    print(f"ratio diff/copy time: {t_diff / t_copy:.1f}x")


if __name__ == "__main__":
    main()
