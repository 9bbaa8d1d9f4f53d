"""Full-size runs, measured side by side in one run: parity's origin and port sides against the floors around them.

    .venv/bin/python benchmarks/full_size.py                      # SAM ViT-H, UperNet ConvNeXt-XL on mmseg0 and mmseg1,
                                                                   # then the fixture-held families' port side
    .venv/bin/python benchmarks/full_size.py sam-vit-base upernet-convnext-tiny@mmseg1 --threads 2 --work /tmp/fs

For each variant that runs here, a random checkpoint of the real size is made by the ORIGINAL code
(`parity generate ID --seed 1`, kept in --work and reused), then each row below runs as its own process, one after
the other, and is measured from that process itself (os.wait4: wall, user, sys, peak RSS, file pages included):

  floor             fresh interpreter: torch.load(mmap=True) of the checkpoint + safetensors save_file (origin env)
  seed-style        the seed scripts' conversion: full torch.load, the HF model random-initialised, load_state_dict,
                    save_pretrained (transformers env; keys renamed with parity's rules)
  parity origin     `python -m parity.origin` dump step: the original loader, the captured forward, the dump
  parity port       `python -m parity.port` step: conversion, the port's forward on the dump's inputs, diffs, reports,
                    save_pretrained
  original alone    the original loader and one image through the original's own API, no captures (origin env)
  port alone        from_pretrained of the saved port and one image through it, no captures (transformers env)

The last two are what the original and the port need by themselves for one image: parity's sides are compared with
them as well as with the checkpoint size. The fixture-held families (ViT-MSN, CLIPSeg, Mask2Former) cannot make a
full-size dump here (their original code does not install, and a dump is only honest when the original wrote it):
their port side runs on the golden fixtures, made by the upstream code, to show it works at that size only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_RUNS = ("sam-vit-huge", "upernet-convnext-xlarge@mmseg0", "upernet-convnext-xlarge@mmseg1", "fixtures")
SEED = 1

FLOOR = """
import sys, torch
from safetensors.torch import save_file
obj = torch.load(sys.argv[1], map_location="cpu", mmap=True, weights_only=True)
state = obj if all(isinstance(v, torch.Tensor) for v in obj.values()) else obj["state_dict"]
save_file({k: v.contiguous() for k, v in state.items()}, sys.argv[2])
"""

FLOOR_SAFETENSORS = """
import sys
from safetensors.torch import load_file, save_file
save_file(load_file(sys.argv[1]), sys.argv[2])
"""

SEED_STYLE = """
import importlib, sys, torch, transformers
from parity.contracts.recipe import Recipe
from parity.port.rules import convert_state_dict
recipe = Recipe.model_validate_json(open(sys.argv[1]).read())
family = importlib.import_module(f"parity.families.{recipe.family}.port")
torch.set_num_threads(int(sys.argv[4]))
obj = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
state = obj if all(isinstance(v, torch.Tensor) for v in obj.values()) else obj["state_dict"]
model = getattr(transformers, recipe.hf.model_class)(family.hf_config(recipe))
converted, record = convert_state_dict(recipe.id, state, family.rules(recipe),
                                       {k: v.shape for k, v in model.state_dict().items()})
assert record.ok, record.error_line()
model.load_state_dict(converted, strict=True)
model.save_pretrained(sys.argv[3])
"""

ORIGINAL_ALONE = """
import pathlib, sys
import numpy as np, torch
from parity.contracts.recipe import Recipe
from parity.origin.images import synthetic_image
from parity.runtime.setup import set_determinism
recipe = Recipe.model_validate_json(open(sys.argv[1]).read())
set_determinism("cpu", int(sys.argv[3]))
spec = recipe.inputs.images[0]
image = synthetic_image(spec.seed, spec.height, spec.width)
if recipe.family == "sam":
    from segment_anything import SamPredictor
    from parity.families.sam import origin
    model, _ = origin.load_original(recipe, pathlib.Path(sys.argv[2]))
    case = next(iter(recipe.spec.prompts.values()))
    predictor = SamPredictor(model)
    predictor.set_image(image)
    predictor.predict(point_coords=np.array(case.point_coords[0]), point_labels=np.array(case.point_labels[0]))
else:
    from parity.families.upernet import origin
    model, _ = origin.load_original(recipe, pathlib.Path(sys.argv[2]))
    bgr = np.ascontiguousarray(image[..., ::-1])
    with torch.no_grad():
        if recipe.origin == "mmseg0":
            from mmseg.apis import inference_segmentor
            inference_segmentor(model, bgr)
        else:
            from mmseg.apis import inference_model
            inference_model(model, bgr)
"""

PORT_ALONE = """
import sys, torch, transformers
from PIL import Image
from parity.contracts.recipe import Recipe
from parity.runtime.setup import set_determinism
recipe = Recipe.model_validate_json(open(sys.argv[1]).read())
set_determinism("cpu", int(sys.argv[3]))
model = getattr(transformers, recipe.hf.model_class).from_pretrained(sys.argv[2]).eval()
image = Image.open(sys.argv[4]).convert("RGB")
with torch.no_grad():
    if recipe.family == "sam":
        processor = transformers.SamProcessor.from_pretrained(sys.argv[2])
        case = next(iter(recipe.spec.prompts.values()))
        model(**processor(images=image, input_points=[case.point_coords], input_labels=[case.point_labels],
                          return_tensors="pt"))
    else:
        processor = transformers.AutoImageProcessor.from_pretrained(sys.argv[2])
        model(**processor(images=image, return_tensors="pt"))
"""


@dataclass
class Row:
    label: str
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_gb: float
    load: float
    """Mean of the 1-minute load average before and after (other work on the machine)."""


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def measure(label: str, argv: list[str], log: Path) -> Row:
    """Run one process to the end; its own rusage (os.wait4) gives CPU time and peak RSS. Every row starts with no
    dirty page left by the row before (os.sync), so no row's writes are slowed by another's writeback."""
    from parity.host.envs import env_vars

    os.sync()
    before = load_average()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env_vars(), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode}); log: {log}")
    return Row(label, wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 2**20, (before + load_average()) / 2)


def step(python: Path, request, folder: Path) -> list[str]:
    """The argv of one parity step, its request written beside the outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{request.step}-request.json"
    path.write_text(request.model_dump_json(indent=2))
    return [str(python), "-m", f"parity.{request.side()}", str(path)]


def generated_checkpoint(recipe, work: Path) -> tuple[Path, float]:
    """A random checkpoint of the variant's real size, written by the original code (reused when already there)."""
    path = work / f"{recipe.id}-seed{SEED}.pth"
    if path.is_file():
        return path, 0.0
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "parity.host.cli", "generate", recipe.id, "--seed", str(SEED), "--out",
                    str(path)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return path, time.perf_counter() - started


def run_variant(selector: str, work: Path, threads: int) -> dict:
    from parity.contracts.steps import DumpRequest, PortRequest
    from parity.host.envs import ensure_env
    from parity.host.registry import select

    variant, _, origin = selector.partition("@")
    (recipe,) = select(variant)
    if origin:
        recipe = recipe.model_copy(update={"origin": origin})
    checkpoint, generate_s = generated_checkpoint(recipe, work)
    run = work / selector.replace("@", "-")
    recipe_file = run / "recipe.json"
    run.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(recipe.model_dump_json())
    origin_python, port_python = ensure_env(recipe.origin), ensure_env("transformers")
    logs = run / "logs"
    rows = [measure("floor: torch.load(mmap) + save_file", [str(origin_python), "-c", FLOOR, str(checkpoint),
                                                            str(run / "floor.safetensors")], logs / "floor.log")]
    (run / "floor.safetensors").unlink()
    rows.append(measure("seed-style: load, random init, load_state_dict, save_pretrained",
                        [str(port_python), "-c", SEED_STYLE, str(recipe_file), str(checkpoint), str(run / "seed-hf"),
                         str(threads)], logs / "seed-style.log"))
    shutil.rmtree(run / "seed-hf")
    dump = DumpRequest(recipe=recipe, checkpoint=checkpoint, checkpoint_source=f"file {checkpoint}", out=run / "dump",
                       threads=threads)
    rows.append(measure("parity origin (dump step)", step(origin_python, dump, run), logs / "origin.log"))
    port = PortRequest(dump=run / "dump", out=run / "port", threads=threads)
    rows.append(measure("parity port (convert, forward, diff, save)", step(port_python, port, run), logs / "port.log"))
    report = json.loads((run / "port" / "report.json").read_text())
    rows.append(measure("original alone: loader + one image", [str(origin_python), "-c", ORIGINAL_ALONE,
                                                                 str(recipe_file), str(checkpoint), str(threads)],
                        logs / "original-alone.log"))
    rows.append(measure("port alone: from_pretrained + one image", [str(port_python), "-c", PORT_ALONE,
                                                                      str(recipe_file), str(run / "port" / "hf"),
                                                                      str(threads), str(run / "dump" / "image.png")],
                        logs / "port-alone.log"))
    if report["verdict"] == "pass":
        shutil.rmtree(run / "dump")
        shutil.rmtree(run / "port" / "hf")
    return {"run": selector, "checkpoint_gb": checkpoint.stat().st_size / 2**30, "generate_s": generate_s,
            "threads": threads, "verdict": report["verdict"], "captures": len(report["captures"]),
            "durations": report["durations"], "rows": [asdict(r) for r in rows]}


def run_fixtures(work: Path, threads: int) -> list[dict]:
    """The fixture-held families: their port side on the golden fixtures (tiny, made by the upstream code)."""
    from parity.contracts.paths import fixtures_dir
    from parity.contracts.steps import PortRequest
    from parity.host.backends.local import LocalBackend
    from parity.host.envs import ensure_env
    from parity.host.pipeline import import_fixture

    port_python = ensure_env("transformers")
    results = []
    for name in ("msn-vit-tiny-p16", "clipseg-tiny-rd64-refined", "mask2former-tiny-swin-coco-instance"):
        run = work / f"fixture-{name}"
        dump = import_fixture(fixtures_dir() / name, LocalBackend(), work, lambda _m: None)
        size = (dump / "state_dict.safetensors").stat().st_size / 2**30
        rows = [measure("floor: safetensors load + save_file", [str(port_python), "-c", FLOOR_SAFETENSORS,
                                                                str(dump / "state_dict.safetensors"),
                                                                str(run / "floor.safetensors")], run / "floor.log")]
        port = PortRequest(dump=dump, out=run / "port", threads=threads)
        rows.append(measure("parity port (convert, forward, diff, save)", step(port_python, port, run),
                            run / "port.log"))
        report = json.loads((run / "port" / "report.json").read_text())
        results.append({"run": f"fixture {name}", "checkpoint_gb": size, "generate_s": 0.0, "threads": threads,
                        "verdict": report["verdict"], "captures": len(report["captures"]),
                        "durations": report["durations"], "rows": [asdict(r) for r in rows]})
    return results


def print_table(result: dict) -> None:
    size = result["checkpoint_gb"]
    rows = {r["label"]: r for r in result["rows"]}
    print(f"\n### {result['run']} ({size:.2f} GiB of weights, --threads {result['threads']}; verdict "
          f"{result['verdict']}, {result['captures']} captures)\n")
    print("| row | wall s | user s | sys s | max RSS GiB | RSS / weights | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in result["rows"]:
        # Below 64 MiB of weights the interpreter and its libraries are the memory; a ratio would mean nothing.
        ratio = f"{row['max_rss_gb'] / size:.2f}" if size >= 1 / 16 else "n/a"
        print(f"| {row['label']} | {row['wall_s']:.1f} | {row['user_s']:.1f} | {row['sys_s']:.1f} | "
              f"{row['max_rss_gb']:.2f} | {ratio} | {row['load']:.1f} |")
    durations = result["durations"]
    convert_save = durations.get("convert", 0.0) + durations.get("save", 0.0)
    floor = next(r for label, r in rows.items() if label.startswith("floor"))
    port = rows["parity port (convert, forward, diff, save)"]
    lines = [f"port step: convert {durations.get('convert', 0):.1f} s, forward {durations.get('forward', 0):.1f} s, "
             f"save {durations.get('save', 0):.1f} s",
             f"conversion + save / floor wall: {convert_save / floor['wall_s']:.2f}"]
    if size >= 1 / 16:
        lines.append(f"port max RSS / weights: {port['max_rss_gb'] / size:.2f}")
    origin = rows.get("parity origin (dump step)")
    if origin:
        seed = rows["seed-style: load, random init, load_state_dict, save_pretrained"]
        if size >= 1 / 16:
            lines.append(f"origin max RSS / weights: {origin['max_rss_gb'] / size:.2f}")
        lines += [f"origin wall / port wall: {origin['wall_s'] / port['wall_s']:.2f}",
                  f"seed-style wall / floor wall: {seed['wall_s'] / floor['wall_s']:.2f}",
                  f"origin max RSS / original alone: "
                  f"{origin['max_rss_gb'] / rows['original alone: loader + one image']['max_rss_gb']:.2f}",
                  f"port max RSS / port alone: "
                  f"{port['max_rss_gb'] / rows['port alone: from_pretrained + one image']['max_rss_gb']:.2f}"]
        if result["generate_s"]:
            lines.append(f"(generating the checkpoint with the original code took {result['generate_s']:.0f} s)")
    print()
    for line in lines:
        print(f"- {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", default=list(DEFAULT_RUNS),
                        help="variant ids (ID@ORIGIN for another origin), or 'fixtures'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/parity-full-size"),
                        help="generated checkpoints (kept and reused) and each run's outputs and logs")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count()
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    print(f"machine: {cpus} CPUs, {int(memory) / 2**20:.1f} GiB RAM, load average at start {load_average():.2f}")
    results = []
    for selector in args.runs:
        found = run_fixtures(args.work, args.threads) if selector == "fixtures" else [
            run_variant(selector, args.work, args.threads)]
        for result in found:
            print_table(result)
            results.append(result)
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
