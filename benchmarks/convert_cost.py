"""Conversion cost against the floor: a bare memory-mapped load + safetensors save of the same bytes.

    .venv/bin/python benchmarks/convert_cost.py sam-vit-base

Generates a random checkpoint of the variant's real size with the ORIGINAL code (parity generate), dumps its state
dict through the origin environment once, then measures in separate processes of the transformers environment:
  floor   : safetensors load (mmap) of the dump's state dict + save_file
  parity  : strict conversion onto a meta-device model + save_pretrained
and prints wall time, user CPU time and peak RSS of each, with parity/floor ratios. Timings on a busy 2-core VM swing;
the ratios measured in the same run are what to compare.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLOOR = """
import resource, sys, time
from safetensors.torch import load_file, save_file
t = time.perf_counter()
save_file(load_file(sys.argv[1]), sys.argv[2])
print(time.perf_counter() - t)
"""

PARITY = """
import importlib, sys, time, torch
import json, pathlib, transformers
from parity.port.dump import Dump
from parity.port.model import build_converted_model
# Imports (transformers and the model's lazily imported module) happen before the clock: the floor pays none.
getattr(transformers, json.loads((pathlib.Path(sys.argv[1]) / "manifest.json").read_text())["recipe"]["hf"]["model_class"])
t = time.perf_counter()
dump = Dump(sys.argv[1])
family = importlib.import_module(f"parity.families.{dump.recipe.family}.port")
model, record = build_converted_model(family, dump.recipe, dump.state_dict(), None)
assert record.ok
model.save_pretrained(sys.argv[2])
print(time.perf_counter() - t)
"""


def measure(python: Path, code: str, *args: str) -> dict:
    from parity.host.envs import env_vars

    wrapper = ("import resource, runpy, subprocess, sys\n"
               "r = subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]], capture_output=True, text=True)\n"
               "assert r.returncode == 0, r.stderr\n"
               "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
               "print(r.stdout.strip().splitlines()[-1], u.ru_utime, u.ru_maxrss)\n")
    out = subprocess.run([str(python), "-c", wrapper, code, *args], env=env_vars(), capture_output=True, text=True,
                         check=True).stdout.split()
    return {"wall_s": float(out[0]), "user_s": float(out[1]), "peak_rss_mb": int(out[2]) / 1024}


def main() -> None:
    from parity.host.backends.local import LocalBackend
    from parity.host.pipeline import make_dump

    from parity.host.envs import ensure_env
    from parity.host.registry import select

    variant = sys.argv[1] if len(sys.argv) > 1 else "sam-vit-base"
    (recipe,) = select(variant)
    backend = LocalBackend()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "parity.host.cli", "generate", variant, "--seed", "1", "--out",
                        str(tmp / "ckpt.pth")], check=True, cwd=ROOT)
        dump = make_dump(recipe, backend, tmp / "run", checkpoint=tmp / "ckpt.pth", sha256=None, device="cpu",
                         threads=2, on_progress=lambda _m: None)
        python = ensure_env("transformers")
        floor = measure(python, FLOOR, str(dump / "state_dict.safetensors"), str(tmp / "floor.safetensors"))
        ours = measure(python, PARITY, str(dump), str(tmp / "hf"))
        size = (dump / "state_dict.safetensors").stat().st_size / 1e6
    print(f"{variant}: {size:.0f} MB of weights")
    for name, row in (("floor (mmap load + save)", floor), ("parity convert + save_pretrained", ours)):
        print(f"  {name:34s} wall {row['wall_s']:6.2f}s  user {row['user_s']:6.2f}s  peak RSS {row['peak_rss_mb']:7.0f} MB")
    print("  ratio parity/floor: " + json.dumps({k: round(ours[k] / floor[k], 2) for k in floor}))


if __name__ == "__main__":
    main()
