"""Docker backend: each step runs in the environment's image (images/<env>/Dockerfile) through the Docker API.

Host paths are mounted at the same paths inside the container, so the runtime's arguments need no rewriting.
Dumps run with networking disabled, inputs read-only, as the calling (non-root) user; containers are always removed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orchestrator.backends import Progress
from orchestrator.envs import pin_hash
from orchestrator.errors import ParityError

STEP_TIMEOUT_S = int(os.environ.get("PARITY_DOCKER_TIMEOUT", "7200"))


def image_tag(env: str) -> str:
    """Images are tagged by the pin hash, so a pin change can never reuse a stale image."""
    return f"parity/{env}:{pin_hash(env)}"


def container_config(env: str, args: list[str], *, readonly: list[Path], writable: list[Path], network: bool,
                     device: str = "cpu", user: str | None = None) -> dict[str, Any]:
    """Keyword arguments for docker's containers.create: the whole security-relevant shape of a step."""
    volumes: dict[str, dict[str, str]] = {}
    for path in readonly:
        volumes[str(Path(path).resolve())] = {"bind": str(Path(path).resolve()), "mode": "ro"}
    for path in writable:
        Path(path).mkdir(parents=True, exist_ok=True)
        volumes[str(Path(path).resolve())] = {"bind": str(Path(path).resolve()), "mode": "rw"}
    config: dict[str, Any] = {
        "image": image_tag(env),
        "command": ["python", "-m", "converters.runtime", *args],
        "volumes": volumes,
        "network_disabled": not network,
        "user": user or f"{os.getuid()}:{os.getgid()}",
        "environment": {"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "HOME": "/tmp"},
        "working_dir": "/opt/parity",
        "labels": {"parity.env": env},
        "detach": True,
    }
    if device.startswith("cuda"):
        import docker.types

        config["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return config


class DockerBackend:
    name = "docker"

    def __init__(self, device: str = "cpu"):
        try:
            import docker
        except ImportError:
            raise ParityError("the docker backend needs the docker SDK: pip install 'parity[docker]'") from None
        try:
            self.client = docker.from_env()
            self.client.ping()
        except Exception as exc:
            raise ParityError(f"no Docker engine reachable ({type(exc).__name__}); use --backend local") from None
        self.device = device

    def run(self, env: str, args: list[str], *, log: Path, on_progress: Progress, readonly: list[Path],
            writable: list[Path], network: bool = False) -> None:
        import docker.errors

        tag = image_tag(env)
        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            raise ParityError(f"image {tag} is missing: docker compose build (or docker build images/{env})") from None
        config = container_config(env, args, readonly=readonly, writable=writable, network=network, device=self.device)
        container = self.client.containers.create(**config)
        try:
            container.start()
            log.parent.mkdir(parents=True, exist_ok=True)
            error = None
            with open(log, "w") as fh:
                for chunk in container.logs(stream=True, follow=True):
                    for line in chunk.decode(errors="replace").splitlines():
                        fh.write(line + "\n")
                        if line.startswith("parity-progress: "):
                            on_progress(line.split(": ", 1)[1])
                        elif line.startswith("parity: error: "):
                            error = line.split(": ", 2)[2]
            status = container.wait(timeout=STEP_TIMEOUT_S)
            if status.get("StatusCode", 1) != 0:
                raise ParityError(error or f"{env} step {args[0]} failed in {tag}; log: {log}")
        finally:
            container.remove(force=True)
