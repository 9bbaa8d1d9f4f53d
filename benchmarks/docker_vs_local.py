"""Warm `docker compose run --rm convert sam-tiny-random` vs the local backend's `parity convert sam-tiny-random`, side
by side in the same run, as a ratio (what the container path costs over local venvs once images and envs exist).

    .venv/bin/python benchmarks/docker_vs_local.py [--repeats N] [--variant ID]

Needs a Docker engine with compose v2 and the images (tests/test_docker_engine.py or scripts/build-images.sh builds
them) and the local environments (built on first use). Each side runs once untimed first (warm-up: images present,
envs built, generated checkpoint cached), then N timed runs alternating local / docker, into throwaway output
folders; the cache is the usual one (PARITY_CACHE_DIR). Prints each side's wall times, the medians and
docker/local. Set PARITY_OS_IMAGE as for the builds when the public python image cannot be pulled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from parity.host import images  # noqa: E402
from parity.host.envs import cache_dir  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv[:6])} ... failed ({result.returncode}):\n"
                 f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", default="sam-tiny-random")
    args = parser.parse_args()
    (ROOT / "out").mkdir(exist_ok=True)
    # inside the checkout, which compose mounts
    out = Path(tempfile.mkdtemp(prefix="bench-docker-vs-local-", dir=ROOT / "out"))
    env = {**os.environ, "PARITY_CACHE_DIR": str(cache_dir()), "PWD": str(ROOT),
           "PARITY_ORCHESTRATOR_IMAGE": images.image_tag("orchestrator"), "TERM": "dumb"}
    local = [sys.executable, "-m", "parity.host.cli", "convert", args.variant, "--out", str(out / "local")]
    # a later --out wins over the service's own
    docker = ["docker", "compose", "run", "--rm", "convert", "--out", str(out / "docker"), args.variant]
    print(f"{args.variant}: warm-up (images {images.image_tag('sam')}, ..., local envs in {cache_dir()})")
    timed(local, env)
    timed(docker, env)
    times: dict[str, list[float]] = {"local": [], "docker": []}
    for _ in range(args.repeats):
        times["local"].append(timed(local, env))
        times["docker"].append(timed(docker, env))
    for side, values in times.items():
        print(f"{side:>6}: " + "  ".join(f"{v:5.1f}s" for v in values) + f"   median {statistics.median(values):5.1f}s")
    ratio = statistics.median(times["docker"]) / statistics.median(times["local"])
    print(f"docker compose / local backend (medians): {ratio:.2f}x  ({os.cpu_count()} CPUs)")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
