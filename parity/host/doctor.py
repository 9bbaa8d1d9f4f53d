"""`parity doctor`'s Docker checks: the engine and its version, each image (built, stale or missing under the tags
parity.host.images computes), GPU support in the engine, the CA bundle in use, and free disk against what the
missing images need. Each check is one (check, status, detail) row; nothing here builds or changes anything."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from parity.contracts.errors import ParityError
from parity.host import images

Row = tuple[str, str, str]

OWN_GB = {"base": 5.97, "sam": 0.01, "transformers": 0.36, "fixtures": 0.01, "mmseg0": 0.67, "mmseg1": 0.83,
          "msn": 0.02, "clipseg": 0.04, "detectron2": 1.31, "orchestrator": 0.31}
"""What each image adds on top of its parent, in GB (docker image inspect, measured on the images built here:
base is the CUDA torch layer, detectron2 the CUDA_OPS=1 build; orchestrator has no parent). Used when the engine holds
no earlier build of that image to measure."""
DEFAULT_GB = 1.0
"""Estimate for an image not in OWN_GB."""
BUILD_HEADROOM = 1.5
"""Builds need room beyond the final layers (pip's unpacked wheels, compiler output)."""


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"


def engine_rows(client: Any, *, root: Path = images.ROOT, environ: Mapping[str, str] | None = None) -> list[Row]:
    """Every Docker row, given a connected docker.DockerClient."""
    version = client.version()
    info = client.info()
    server = info.get("ServerVersion", version.get("Version", "?"))
    rows: list[Row] = [("docker engine", "ok",
                        f"Docker {server} (API {version.get('ApiVersion', '?')}), {info.get('Driver', '?')} storage, "
                        f"{info.get('NCPU', '?')} CPUs, {_gb(info.get('MemTotal', 0))} memory")]
    runtimes = set(info.get("Runtimes") or {})
    if "nvidia" in runtimes or info.get("DefaultRuntime") == "nvidia":
        rows.append(("GPU in containers", "nvidia runtime", "the engine can give step containers NVIDIA GPUs "
                                                             "(--device cuda, compose.gpu.yaml)"))
    else:
        rows.append(("GPU in containers", "none", f"no nvidia runtime in the engine (runtimes: "
                                                  f"{', '.join(sorted(runtimes)) or 'none'}): --device cuda cannot "
                                                  "reach GPUs from containers; install the NVIDIA container toolkit"))
    rows.append(ca_row(root=root, environ=environ))
    needed = 0.0
    sizes: dict[str, float] = {}
    for env in images.known_images(root):
        tag = images.image_tag(env, root=root, environ=environ)
        repository = tag.split(":")[0]
        held = {t: image for image in client.images.list(name=repository) for t in image.tags
                if t.startswith(repository + ":")}
        if tag in held:
            sizes[env] = held[tag].attrs.get("Size", 0)
            rows.append((f"image {env}", "built", f"{tag} ({_gb(sizes[env])})"))
            continue
        own = _own_estimate(env, held, sizes, root)
        needed += own
        if held:
            rows.append((f"image {env}", "stale", f"{tag} not built; the engine holds {', '.join(sorted(held))} "
                                                  f"(other inputs); a build adds ~{own:.2f} GB"))
        else:
            rows.append((f"image {env}", "missing", f"{tag} (built on first use; ~{own:.2f} GB)"))
    rows.append(disk_row(info.get("DockerRootDir", ""), needed))
    return rows


def _own_estimate(env: str, held: dict[str, Any], sizes: dict[str, float], root: Path) -> float:
    """GB a build of `env` adds: the size of an earlier build minus its parent's, else the measured table."""
    parent = images.parent(env, root)
    if held and (parent is None or parent in sizes):
        largest = max(image.attrs.get("Size", 0) for image in held.values())
        return max(0.0, (largest - (sizes.get(parent, 0) if parent else 0)) / 1e9)
    return OWN_GB.get(env, DEFAULT_GB)


def disk_row(docker_root: str, needed_gb: float) -> Row:
    """Free space where the engine stores images, against what the missing images need."""
    if not docker_root or not Path(docker_root).is_dir():
        return ("disk", "unknown", f"the engine's storage ({docker_root or '?'}) is not visible from here; the missing "
                                   f"images need ~{needed_gb:.1f} GB")
    free = shutil.disk_usage(docker_root).free / 1e9
    want = needed_gb * BUILD_HEADROOM
    status = "ok" if free >= want else "low"
    return ("disk", status, f"{free:.1f} GB free at {docker_root}; the missing images need ~{needed_gb:.1f} GB "
                            f"(~{want:.1f} GB while building)")


def ca_row(*, root: Path = images.ROOT, environ: Mapping[str, str] | None = None) -> Row:
    """Which CA bundle builds copy in and step containers get (parity.host.images.ca_source)."""
    source = images.ca_source(environ)
    if source is None:
        return ("CA bundle", "none", "PARITY_CA_BUNDLE=none: builds and steps use the images' own trust store")
    try:
        data = images.ca_bundle(root, environ)
    except ParityError as exc:
        return ("CA bundle", "error", str(exc))
    where = f"{root / images.CA_CONTEXT_FILE} (as written by the last build)" if source == "context" else source
    if not data.strip():
        return ("CA bundle", "none", f"{where} is empty or absent: builds and steps use the images' own trust store")
    count = data.count(b"-----BEGIN CERTIFICATE-----")
    return ("CA bundle", "in use", f"{where}: {count} certificates, sha256 {hashlib.sha256(data).hexdigest()[:16]} "
                                   "(installed into the images, mounted into every step)")
