"""UperNet-ConvNeXt-XLarge conversion cost against the floor, on a full-size random checkpoint made by the ORIGINAL code.

    .venv/bin/python benchmarks/convert_upernet_xlarge.py [--checkpoint X.pth] [--json OUT.json]

Without --checkpoint it runs `parity generate upernet-convnext-xlarge --seed 5` (mmseg 0.30 code, 1.56 GB). Then
the mmseg0 origin dumps it once (load with the original loader + forward; timed, not part of the ratio), and in
separate processes, each measured for wall time, user CPU time and peak RSS:
  floor (.pth)         : torch.load(mmap=True, weights_only=True) of the original file + safetensors save_file
                         (in the mmseg0 origin env: the port env never unpickles)
  floor (safetensors)  : safetensors load (mmap) of the dump's state dict + save_file (transformers env)
  parity               : strict conversion onto a meta-device UperNetForSemanticSegmentation + save_pretrained
Ratios are parity / floor, measured in the same run (this VM's timings swing with memory state).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from convert_cost import FLOOR, PARITY, measure

FLOOR_PTH = """
import sys, time, torch
from safetensors.torch import save_file
t = time.perf_counter()
ckpt = torch.load(sys.argv[1], map_location="cpu", mmap=True, weights_only=True)
save_file({k: v.contiguous() for k, v in ckpt["state_dict"].items()}, sys.argv[2])
print(time.perf_counter() - t)
"""
VARIANT = "upernet-convnext-xlarge"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from parity.host.backends.local import LocalBackend
    from parity.host.pipeline import make_dump

    from parity.host.envs import ensure_env
    from parity.host.registry import select

    (recipe,) = select(VARIANT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = tmp / "upernet_convnext_xlarge_random.pth"
            subprocess.run([sys.executable, "-m", "parity.host.cli", "generate", VARIANT, "--seed", "5", "--out",
                            str(checkpoint)], check=True, cwd=ROOT)
        started = time.perf_counter()
        dump = make_dump(recipe, LocalBackend(), tmp / "run", checkpoint=checkpoint, sha256=None, device="cpu",
                         threads=2, on_progress=lambda _m: None)
        dump_s = time.perf_counter() - started
        floor_pth = measure(ensure_env("mmseg0"), FLOOR_PTH, str(checkpoint), str(tmp / "floor-pth.safetensors"))
        (tmp / "floor-pth.safetensors").unlink()
        python = ensure_env("transformers")
        floor_st = measure(python, FLOOR, str(dump / "state_dict.safetensors"), str(tmp / "floor.safetensors"))
        (tmp / "floor.safetensors").unlink()
        ours = measure(python, PARITY, str(dump), str(tmp / "hf"))
        size = (dump / "state_dict.safetensors").stat().st_size / 1e6
    rows = {"floor (.pth mmap load + save)": floor_pth, "floor (safetensors mmap load + save)": floor_st,
            "parity convert + save_pretrained": ours}
    print(f"{VARIANT}: {size:.0f} MB of weights; origin dump (original loader + 640x640 forward, 2 threads) "
          f"{dump_s:.1f}s")
    for name, row in rows.items():
        print(f"  {name:38s} wall {row['wall_s']:6.2f}s  user {row['user_s']:6.2f}s  peak RSS {row['peak_rss_mb']:7.0f} MB")
    ratios = {label: {k: round(ours[k] / floor[k], 2) for k in floor}
              for label, floor in (("vs .pth floor", floor_pth), ("vs safetensors floor", floor_st))}
    for label, ratio in ratios.items():
        print(f"  ratio parity/floor {label}: {json.dumps(ratio)}")
    if args.json:
        args.json.write_text(json.dumps({"variant": VARIANT, "weights_mb": round(size), "origin_dump_s": round(dump_s, 1),
                                         "rows": rows, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
