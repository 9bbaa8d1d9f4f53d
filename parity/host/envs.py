"""Local environments built from the same pin files the Docker images use (images/<name>/requirements.txt).

The torch layer (images/base) is one venv shared by every environment through a .pth file, like a Docker base layer:
5 GB once, not per environment. Each environment is cached under its pin hash and rebuilt only when a pin changes.
Builds happen in a temp folder renamed into place when complete, so a broken build never looks usable.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from parity.contracts.errors import ParityError
from parity.contracts.paths import PACKAGE_ROOT

PROJECT_ROOT = PACKAGE_ROOT.parent
"""The checkout: images/ (pin files, Dockerfiles) and the parity package that environments run."""
IMAGES = PROJECT_ROOT / "images"
LAYER = "base"
COMPLETE = "parity-env.json"
NO_BUILD_ISOLATION = "requirements-nobuildisolation.txt"
"""Optional second stage of an environment: source builds that must see the installed torch / setuptools pins
(`pip install --no-build-isolation`), installed after requirements.txt. The Dockerfiles run the same two stages."""


def cache_dir() -> Path:
    return Path(os.environ.get("PARITY_CACHE_DIR", Path.home() / ".cache" / "parity")).expanduser()


def python_for_envs() -> str:
    return os.environ.get("PARITY_PYTHON", sys.executable)


def pin_files(name: str) -> list[Path]:
    """The layer's pins, then the environment's own (the same files the Dockerfiles COPY)."""
    own = IMAGES / name / "requirements.txt"
    if not own.is_file():
        known = sorted(p.parent.name for p in IMAGES.glob("*/requirements.txt"))
        raise ParityError(f"no environment {name!r} (images/{name}/requirements.txt missing; known: {', '.join(known)})")
    if name == LAYER:
        return [own]
    second = IMAGES / name / NO_BUILD_ISOLATION
    return [IMAGES / LAYER / "requirements.txt", own] + ([second] if second.is_file() else [])


def pin_hash(name: str) -> str:
    digest = hashlib.sha256(f"python{platform.python_version_tuple()[:2]}".encode())
    for path in pin_files(name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def local_unsupported(name: str) -> str | None:
    """Why an origin cannot be built here (images/<name>/LOCAL_UNSUPPORTED), or None."""
    marker = IMAGES / name / "LOCAL_UNSUPPORTED"
    return marker.read_text().strip() if marker.is_file() else None


def env_dir(name: str) -> Path:
    kind = "layers" if name == LAYER else "envs"
    return cache_dir() / kind / f"{name}-{pin_hash(name)}"


def env_python(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def is_built(name: str) -> bool:
    return (env_dir(name) / COMPLETE).is_file()


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise ParityError(f"{venv} has no site-packages")
    return found[0]


@contextmanager
def _lock(name: str):
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], log: Path, what: str) -> None:
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        last = lines[-1] if lines else "no output"
        raise ParityError(f"{what} failed ({last.strip()}); full log: {log}")


def ensure_env(name: str, on_progress: Callable[[str], None] = lambda _m: None) -> Path:
    """Return the environment's python, building the torch layer and the environment first if needed."""
    reason = local_unsupported(name)
    if reason:
        raise ParityError(f"origin {name!r} cannot run in a local venv here: {reason}; use --backend docker")
    if name != LAYER:
        ensure_env(LAYER, on_progress)
    target = env_dir(name)
    if (target / COMPLETE).is_file():
        return target / "bin" / "python"
    with _lock(name):
        if (target / COMPLETE).is_file():
            return target / "bin" / "python"
        logs = cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{target.name}.log"
        log.write_text("")
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        on_progress(f"building environment {name} ({'torch layer, ~2 min' if name == LAYER else 'on the torch layer'})")
        try:
            _install(name, staging, log)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        pins = pin_files(name)
        record = {"name": name, "pin_hash": pin_hash(name), "pins": {p.name if p.parent.name == name else
                  f"{p.parent.name}/{p.name}": p.read_text() for p in pins}, "python": python_for_envs()}
        (staging / COMPLETE).write_text(json.dumps(record, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target / "bin" / "python"


def _install(name: str, staging: Path, log: Path) -> None:
    _run([python_for_envs(), "-m", "venv", str(staging)], log, f"creating venv for {name}")
    python = str(staging / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    pins = pin_files(name)
    if name == LAYER:
        _run([*pip, "-r", str(pins[0])], log, "installing the torch layer")
    else:
        layer_site = _site_packages(env_dir(LAYER))
        (_site_packages(staging) / "_parity_torch_layer.pth").write_text(f"{layer_site}\n")
        _run([*pip, "-r", str(pins[1]), "-c", str(pins[0])], log, f"installing environment {name}")
        for stage in pins[2:]:
            _run([*pip, "--no-build-isolation", "-r", str(stage), "-c", str(pins[0])], log,
                 f"installing environment {name} ({stage.name})")


def env_vars() -> dict[str, str]:
    """What every environment process gets: the project on sys.path and deterministic hashing / cuBLAS."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["PYTHONHASHSEED"] = "0"
    env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    return env
