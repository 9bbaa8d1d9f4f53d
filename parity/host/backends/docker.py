"""Docker backend: each step runs in its environment's image (images/<env>/Dockerfile) through the Docker API.

Images are tagged parity/<env>:<hash of every build input> (parity/host/images.py, the one scheme every entry point
uses), so no input change can reuse a stale image; a missing one is built from the repository (base first). Images
hold environments only: the running parity package is mounted read-only (images.code_mounts).

A step container sees exactly what its request says it reads and writes, at the same paths as on the host (so the
runtime's requests need no rewriting; inside the compose `convert` service those are host paths too, because the
checkout, the cache and the fixtures are mounted there at their host paths): its output folders read-write, every
input read-only — also an input inside an output folder (the dump inside out/<id>/ in the port step), by a more
specific read-only bind on top. Beyond that: a read-only root filesystem with a tmpfs /tmp, all capabilities dropped,
no-new-privileges, pids and memory limits, networking off unless the request needs it, a non-root user, a deadline
(the container is killed and removed when it passes), and removal on success, failure, Ctrl-C and SIGTERM alike.

Ownership: steps run as the host side's uid:gid, so everything a run leaves belongs to whoever runs parity (compose's
services switch to the invoking user first: parity.host.runas). Steps never run as root: a host side running as root
hands each step's output folders to PARITY_CONTAINER_USER (default 1000:1000), which then owns what the step writes.

Settings (environment, read when the backend is created): PARITY_DOCKER_TIMEOUT (seconds per step, 7200),
PARITY_DOCKER_MEMORY (memory limit per step, docker syntax such as 16g, or `none`; default three quarters of the
engine's memory), PARITY_DOCKER_PIDS (4096), PARITY_DOCKER_TMPFS (size of /tmp, 4g), PARITY_CONTAINER_USER
(uid:gid of steps when the host side is root, 1000:1000).
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.steps import StepRequest
from parity.host import images
from parity.host.backends import Progress, StepOutput, step_command
from parity.host.envs import cache_dir, split_name

CONTAINER_ENV = {"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "HOME": "/tmp",
                 "XDG_CACHE_HOME": "/tmp/.cache", "MPLCONFIGDIR": "/tmp/.matplotlib", "HF_HUB_OFFLINE": "1"}
POLL_S = 0.5
"""How often a running step's state is checked (the deadline's resolution)."""
HOST_LABEL = "parity.host"
"""Label naming the host side that started a step container (hostname:pid), so leftovers can be traced."""


@dataclass(frozen=True)
class Limits:
    """What a step container may use (PARITY_DOCKER_* settings)."""

    timeout_s: int = 7200
    """Seconds a step may run before its container is killed."""
    memory: int | None = None
    """Memory limit in bytes (swap included), None for none."""
    pids: int = 4096
    """Most processes and threads at once."""
    tmpfs: str = "4g"
    """Size of the tmpfs /tmp (docker syntax)."""

    @classmethod
    def from_env(cls, engine_memory: int | None = None) -> Limits:
        def number(name: str, default: int) -> int:
            value = os.environ.get(name, "").strip()
            if not value:
                return default
            if not value.isdigit() or int(value) <= 0:
                raise ParityError(f"{name}={value!r} is not a positive whole number")
            return int(value)

        memory_setting = os.environ.get("PARITY_DOCKER_MEMORY", "").strip().lower()
        if memory_setting == "none":
            memory = None
        elif memory_setting:
            memory = parse_size(memory_setting, "PARITY_DOCKER_MEMORY")
        else:
            memory = engine_memory * 3 // 4 if engine_memory else None
        tmpfs = os.environ.get("PARITY_DOCKER_TMPFS", "").strip() or cls.tmpfs
        parse_size(tmpfs, "PARITY_DOCKER_TMPFS")
        return cls(timeout_s=number("PARITY_DOCKER_TIMEOUT", cls.timeout_s), memory=memory,
                   pids=number("PARITY_DOCKER_PIDS", cls.pids), tmpfs=tmpfs)


def parse_size(text: str, what: str) -> int:
    """Docker's size syntax (bytes, or a number with k, m, g) in bytes; a bad one is a one-line error."""
    units = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = text.strip().lower()
    digits = value.rstrip("bkmg")
    suffix = value[len(digits):]
    if not digits.isdigit() or suffix not in units or int(digits) <= 0:
        raise ParityError(f"{what}={text!r} is not a size (e.g. 16g, 512m)")
    return int(digits) * units[suffix]


def image_tag(env: str) -> str:
    return images.image_tag(env)


def build_spec(env: str) -> dict[str, Any]:
    """Keyword arguments for docker's api.build (parity.host.images.build_spec)."""
    return images.build_spec(env)


def container_user() -> str:
    """Steps run as the host side's uid:gid (what they write belongs to whoever runs parity), never as root: a root
    host side runs them as PARITY_CONTAINER_USER (default 1000:1000) and hands them their output folders."""
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    user = os.environ.get("PARITY_CONTAINER_USER", "").strip() or "1000:1000"
    uid, sep, gid = user.partition(":")
    if not (uid.isdigit() and gid.isdigit() and sep) or int(uid) == 0:
        raise ParityError(f"PARITY_CONTAINER_USER={user!r} must be a non-root numeric uid:gid, e.g. 1000:1000")
    return user


def _resolved(path: Path | str) -> str:
    return str(Path(path).resolve())


def step_mounts(request: StepRequest, request_file: Path) -> dict[str, dict[str, str]]:
    """Docker SDK `volumes` entries for one step: what it writes read-write, what it reads read-only, the code and
    the CA bundle read-only. Host paths are mounted at the same paths. An input inside an output folder gets its own
    read-only bind, which the engine stacks on the read-write one (it mounts the shorter target first)."""
    writable = {_resolved(p) for p in request.writes()}
    readable = {_resolved(p) for p in [*request.reads(), request_file]}
    clash = writable & readable
    if clash:
        raise ParityError(f"step {request.step}: {sorted(clash)[0]} is both an input and an output")
    volumes: dict[str, dict[str, str]] = {}
    for path in sorted(writable):
        volumes[path] = {"bind": path, "mode": "rw"}
    for path in sorted(readable):
        volumes[path] = {"bind": path, "mode": "ro"}
    volumes.update(images.code_mounts())
    volumes.update(images.runtime_ca()["volumes"])
    return volumes


def container_config(env: str, request: StepRequest, request_file: Path, *, device: str = "cpu",
                     user: str | None = None, limits: Limits | None = None) -> dict[str, Any]:
    """Keyword arguments for docker's containers.create: the whole security-relevant shape of one step, derived from
    what the request says it reads and writes."""
    limits = limits or Limits()
    network = request.needs_network()
    config: dict[str, Any] = {
        "image": image_tag(env),
        "command": ["python", *step_command(request, request_file)],
        "volumes": step_mounts(request, request_file),
        "user": user or container_user(),
        "environment": dict(CONTAINER_ENV, HF_HUB_OFFLINE="0" if network else "1",
                            **images.runtime_ca()["environment"]),
        "working_dir": images.CODE_DIR,
        "labels": {"parity.env": env, "parity.step": request.step, HOST_LABEL: f"{socket.gethostname()}:{os.getpid()}"},
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs},mode=1777"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": limits.pids,
        "detach": True,
    }
    if not network:
        config["network_mode"] = "none"
    if limits.memory:
        config["mem_limit"] = limits.memory
        config["memswap_limit"] = limits.memory
    if device.startswith("cuda"):
        import docker.types

        config["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return config


class DockerBackend:
    name = "docker"

    def __init__(self, device: str = "cpu", client: Any = None, limits: Limits | None = None):
        self.device = device
        self.client = client if client is not None else self._connect()
        self.limits = limits or Limits.from_env(self._engine_memory())

    @staticmethod
    def _connect():
        try:
            import docker
        except ImportError:
            raise ParityError("the docker backend needs the docker SDK: pip install 'parity[docker]'") from None
        try:
            client = docker.from_env(timeout=60)
            client.ping()
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ParityError(f"no Docker engine reachable ({reason[:120]}); start one or use --backend local") from None
        return client

    def _engine_memory(self) -> int | None:
        try:
            return int(self.client.info().get("MemTotal") or 0) or None
        except Exception:  # noqa: BLE001 - a fake or old engine without info: no default memory limit
            return None

    def ensure_image(self, env: str, on_progress: Progress) -> str:
        import docker.errors

        if split_name(env)[1] is not None:
            raise ParityError(f"environment {env} runs with the local backend only: the {split_name(env)[0]} image "
                              f"pins one release (images/{split_name(env)[0]}/requirements.txt)")
        tag = image_tag(env)
        try:
            self.client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        on_progress(f"building image {tag} (and any missing parent)")
        images.build([env], self.client, on_line=lambda line: on_progress(line[:120]))
        return tag

    def prepare(self, env: str, on_progress: Progress) -> None:
        self.ensure_image(env, on_progress)

    def run(self, env: str, request: StepRequest, *, log: Path, on_progress: Progress):
        self.ensure_image(env, on_progress)
        output = StepOutput(on_progress)
        user = container_user()
        step_uid, step_gid = (int(x) for x in user.split(":"))
        steps = cache_dir() / "steps"
        steps.mkdir(parents=True, exist_ok=True)
        # the request file lives in the cache: a host path wherever the host side runs (compose mounts it there)
        folder = Path(tempfile.mkdtemp(prefix="step-", dir=steps))
        try:
            request_file = folder / "request.json"
            request_file.write_text(request.model_dump_json(indent=2))
            folder.chmod(0o755)
            request_file.chmod(0o644)
            for path in request.writes():
                Path(path).mkdir(parents=True, exist_ok=True)
                if os.getuid() == 0:
                    os.chown(path, step_uid, step_gid)
            config = container_config(env, request, request_file, device=self.device, user=user,
                                      limits=self.limits)
            log.parent.mkdir(parents=True, exist_ok=True)
            code = self._run_container(env, request, config, log, output)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return output.result(env, request, code, log)

    def _run_container(self, env: str, request: StepRequest, config: dict[str, Any], log: Path,
                       output: StepOutput) -> int:
        """Start the container, stream its output into the log and the progress line, and return its exit code;
        at the deadline it is killed. It is removed in every case (also on KeyboardInterrupt / SIGTERM)."""
        container = self.client.containers.create(**config)
        lines: queue.Queue[str | None] = queue.Queue()
        try:
            container.start()
            follower = threading.Thread(target=_follow, args=(container, lines), daemon=True)
            follower.start()
            deadline = time.monotonic() + self.limits.timeout_s
            with open(log, "w") as fh:
                while True:
                    _drain(lines, fh, output, wait_s=POLL_S)
                    state = self.client.api.inspect_container(container.id)["State"]
                    if not state.get("Running", False):
                        follower.join(timeout=10)  # the stream ends once the container has stopped
                        _drain(lines, fh, output, wait_s=0)
                        return int(state.get("ExitCode", 1))
                    if time.monotonic() > deadline:
                        container.kill()
                        raise ParityError(f"{env} step {request.step} exceeded {self.limits.timeout_s}s "
                                          f"(PARITY_DOCKER_TIMEOUT): container killed and removed; log: {log}")
        finally:
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone: nothing left to clean up
                pass


def _follow(container: Any, lines: queue.Queue) -> None:
    """Put each complete output line on the queue, then None when the stream ends (the container stopped)."""
    pending = b""
    try:
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                lines.put(line.decode(errors="replace"))
        if pending:
            lines.put(pending.decode(errors="replace"))
    except Exception:  # noqa: BLE001 - the container was removed under the stream: the main loop decides
        pass
    finally:
        lines.put(None)


def _drain(lines: queue.Queue, fh, output: StepOutput, *, wait_s: float) -> None:
    """Pass the queued lines to the log and the step output (waiting up to wait_s for the first one)."""
    try:
        line = lines.get(timeout=wait_s) if wait_s else lines.get_nowait()
        while True:
            if line is not None:
                fh.write(line + "\n")
                output.feed(line)
            line = lines.get_nowait()
    except queue.Empty:
        fh.flush()
