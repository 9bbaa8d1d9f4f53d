"""Local environments built from the same pin files the Docker images use (images/<name>/requirements.txt).

The torch layer (images/base) is one venv shared by every environment through a .pth file, like a Docker base layer:
5 GB once, not per environment. Each environment is cached under its pin hash and rebuilt only when a pin changes.
Builds happen in a temp folder renamed into place when complete, so a broken build never looks usable.

An environment may also be named `NAME@VERSION`: images/NAME's pins with the pin of the distribution NAME replaced by
VERSION (e.g. `transformers@5.25.0`, to re-check a saved port against another transformers release). Its pin file is
generated into the cache, and it is cached by its own pin hash like any other environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from parity.contracts.errors import ParityError
from parity.contracts.paths import PACKAGE_ROOT

PROJECT_ROOT = Path(os.environ["PARITY_ROOT"]).expanduser().resolve() if os.environ.get("PARITY_ROOT") \
    else PACKAGE_ROOT.parent
"""The checkout holding images/ (pin files, Dockerfiles): PARITY_ROOT, else the folder the parity package sits in (a
checkout or an editable install). An installed copy (`pip install .`) carries no images/: it needs PARITY_ROOT."""
IMAGES = PROJECT_ROOT / "images"
LAYER = "base"
COMPLETE = "parity-env.json"
NO_BUILD_ISOLATION = "requirements-nobuildisolation.txt"
"""Optional second stage of an environment: source builds that must see the installed torch / setuptools pins
(`pip install --no-build-isolation`), installed after requirements.txt. The Dockerfiles run the same two stages."""


def images_dir() -> Path:
    """IMAGES, or a one-line error naming PARITY_ROOT when this copy of parity has no images/ beside it."""
    if not IMAGES.is_dir():
        raise ParityError(missing_images_message())
    return IMAGES


def missing_images_message() -> str:
    if os.environ.get("PARITY_ROOT"):
        return (f"PARITY_ROOT={os.environ['PARITY_ROOT']} holds no images/ folder: point PARITY_ROOT at a parity "
                "checkout")
    return (f"this copy of parity ({PACKAGE_ROOT}) has no images/ folder (pin files, Dockerfiles) beside it: set "
            "PARITY_ROOT to a parity checkout")


def code_root() -> Path:
    """What environments put on PYTHONPATH to import the running parity package: the folder it sits in (a checkout),
    or, for an installed copy, a folder in the cache linking to it (site-packages itself would put the host's
    packages ahead of the environment's own)."""
    if PACKAGE_ROOT.parent.name not in ("site-packages", "dist-packages"):
        return PACKAGE_ROOT.parent
    link_dir = cache_dir() / "code" / hashlib.sha256(str(PACKAGE_ROOT).encode()).hexdigest()[:12]
    link = link_dir / "parity"
    if not link.is_symlink() or link.resolve() != PACKAGE_ROOT:
        link_dir.mkdir(parents=True, exist_ok=True)
        tmp = link_dir / f".parity.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(PACKAGE_ROOT, target_is_directory=True)
        tmp.replace(link)
    return link_dir


def cache_dir() -> Path:
    return Path(os.environ.get("PARITY_CACHE_DIR", Path.home() / ".cache" / "parity")).expanduser()


def python_for_envs() -> str:
    return os.environ.get("PARITY_PYTHON", sys.executable)


RELEASE = re.compile(r"^\d+(\.\d+){1,3}((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")
"""A release version as `NAME@VERSION` accepts it (PEP 440 public versions, no ranges)."""
BUILD_TIMES = "build-times.json"
"""Seconds the last build of each environment took (by base name), for the next build's estimate."""
FIRST_BUILD_ESTIMATE = {LAYER: "~2.5 min, ~5.5 GB", None: "~1 min"}
"""What a first build takes on 2 cores (ENVIRONMENTS.md): the torch layer, and an environment on it."""


def split_name(name: str) -> tuple[str, str | None]:
    """`NAME@VERSION` -> (NAME, VERSION); a plain name -> (name, None). A malformed version is a one-line error."""
    base, sep, version = name.partition("@")
    if sep and not RELEASE.match(version):
        raise ParityError(f"{version!r} is not a release version of {base} (e.g. 5.24.0)")
    return base, (version if sep else None)


def pinned_version(base: str, distribution: str | None = None) -> str:
    """The version images/BASE/requirements.txt pins for `distribution` (default: the distribution named BASE)."""
    distribution = distribution or base
    own = _own_pins(base)
    for line in own.read_text().splitlines():
        found = re.match(rf"^\s*{re.escape(distribution)}\s*==\s*(\S+)", line, flags=re.IGNORECASE)
        if found:
            return found.group(1)
    raise ParityError(f"{own} pins no {distribution}==VERSION, so {base}@VERSION cannot replace it")


def _own_pins(base: str) -> Path:
    own = images_dir() / base / "requirements.txt"
    if not own.is_file():
        known = sorted(p.parent.name for p in IMAGES.glob("*/requirements.txt"))
        raise ParityError(f"no environment {base!r} (images/{base}/requirements.txt missing; "
                          f"known: {', '.join(known)})")
    return own


def _derived_pins(base: str, version: str) -> Path:
    """images/BASE/requirements.txt with BASE pinned to VERSION, written into the cache (same content, same file)."""
    pinned_version(base)
    lines = _own_pins(base).read_text().splitlines()
    pattern = re.compile(rf"^\s*{re.escape(base)}\s*==\s*\S+", flags=re.IGNORECASE)
    text = "\n".join(f"{base}=={version}" if pattern.match(line) else line for line in lines) + "\n"
    path = cache_dir() / "pins" / f"{base}@{version}" / "requirements.txt"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".requirements.txt.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def pin_files(name: str) -> list[Path]:
    """The layer's pins, then the environment's own (the same files the Dockerfiles COPY)."""
    base, version = split_name(name)
    if base == LAYER and version:
        raise ParityError(f"the torch layer cannot be re-pinned ({name!r})")
    own = _derived_pins(base, version) if version else _own_pins(base)
    if base == LAYER:
        return [own]
    second = images_dir() / base / NO_BUILD_ISOLATION
    return [IMAGES / LAYER / "requirements.txt", own] + ([second] if second.is_file() else [])


def pin_hash(name: str) -> str:
    digest = hashlib.sha256(f"python{platform.python_version_tuple()[:2]}".encode())
    for path in pin_files(name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def local_unsupported(name: str) -> str | None:
    """Why an origin cannot be built here (images/<name>/LOCAL_UNSUPPORTED), or None."""
    marker = images_dir() / split_name(name)[0] / "LOCAL_UNSUPPORTED"
    return marker.read_text().strip() if marker.is_file() else None


def env_dir(name: str) -> Path:
    kind = "layers" if name == LAYER else "envs"
    return cache_dir() / kind / f"{name.replace('@', '-')}-{pin_hash(name)}"


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


def _run(cmd: list[str], log: Path, what: str, on_progress: Callable[[str], None] = lambda _m: None) -> None:
    """Run one install command into the log; pip's 'Installing collected packages' line is passed on as progress."""
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if line.startswith("Installing collected packages:"):
                names = line.split(":", 1)[1].strip()
                on_progress(f"{what}: installing {names[:160]}{'…' if len(names) > 160 else ''}")
        returncode = proc.wait()
    if returncode != 0:
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
        on_progress(build_announcement(name))
        started = time.perf_counter()
        try:
            _install(name, staging, log, on_progress)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        seconds = time.perf_counter() - started
        pins = pin_files(name)
        record = {"name": name, "pin_hash": pin_hash(name), "pins": {p.name if p.parent.name == name else
                  f"{p.parent.name}/{p.name}": p.read_text() for p in pins}, "python": python_for_envs(),
                  "build_seconds": round(seconds, 1)}
        (staging / COMPLETE).write_text(json.dumps(record, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        _remember_build_time(name, seconds)
    on_progress(f"environment {name} built in {_duration(seconds)} ({target})")
    return target / "bin" / "python"


def _pins_of(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def build_announcement(name: str) -> str:
    """What a build is about to install and roughly how long it takes: the last build of this environment (any pin
    set), else the measured first-build time."""
    pins = [pin for path in pin_files(name)[0 if name == LAYER else 1:] for pin in _pins_of(path)]
    shown = ", ".join(pins[:4]) + (f" and {len(pins) - 4} more pins" if len(pins) > 4 else "")
    where = "the torch layer every environment shares" if name == LAYER else f"environment {name} on the torch layer"
    last = _build_times().get(split_name(name)[0])
    estimate = f"the last build took {_duration(last)}" if last else \
        f"usually {FIRST_BUILD_ESTIMATE[LAYER if name == LAYER else None]}"
    return f"building {where}: {shown} ({estimate}; log in {cache_dir() / 'logs'})"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _build_times() -> dict[str, float]:
    try:
        return json.loads((cache_dir() / BUILD_TIMES).read_text())
    except (OSError, ValueError):
        return {}


def _remember_build_time(name: str, seconds: float) -> None:
    times = _build_times()
    times[split_name(name)[0]] = round(seconds, 1)
    path = cache_dir() / BUILD_TIMES
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{BUILD_TIMES}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _install(name: str, staging: Path, log: Path, on_progress: Callable[[str], None]) -> None:
    _run([python_for_envs(), "-m", "venv", str(staging)], log, f"creating venv for {name}")
    python = str(staging / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    pins = pin_files(name)
    if name == LAYER:
        _run([*pip, "-r", str(pins[0])], log, "installing the torch layer", on_progress)
    else:
        layer_site = _site_packages(env_dir(LAYER))
        (_site_packages(staging) / "_parity_torch_layer.pth").write_text(f"{layer_site}\n")
        _run([*pip, "-r", str(pins[1]), "-c", str(pins[0])], log, f"installing environment {name}", on_progress)
        for stage in pins[2:]:
            _run([*pip, "--no-build-isolation", "-r", str(stage), "-c", str(pins[0])], log,
                 f"installing environment {name} ({stage.name})", on_progress)


def env_vars() -> dict[str, str]:
    """What every environment process gets: the project on sys.path and deterministic hashing / cuBLAS."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code_root())
    env["PYTHONHASHSEED"] = "0"
    env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    return env
