"""Docker backend: each step runs in its environment's image (images/<env>/Dockerfile) through the Docker API.

Images are tagged parity/<env>:<hash of every build input> (parity/host/images.py, the one scheme every entry point
uses), so no input change can reuse a stale image; a missing one is built from the repository (base first). Images
hold environments only: parity's code is mounted read-only (images.code_mounts). Host paths are mounted at the same
paths inside the container, so the runtime's requests need no rewriting. Every step runs as the calling (non-root) user with a timeout; dumps run with
networking disabled and their inputs read-only; containers are removed on success, failure and Ctrl-C alike.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.steps import StepRequest
from parity.host.backends import Progress, StepOutput, step_command
from parity.host import images
from parity.host.envs import LAYER, split_name

STEP_TIMEOUT_S = int(os.environ.get("PARITY_DOCKER_TIMEOUT", "7200"))
CONTAINER_ENV = {"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "HOME": "/tmp",
                 "HF_HUB_OFFLINE": "1"}


def image_tag(env: str) -> str:
    return images.image_tag(env)


def build_spec(env: str) -> dict[str, Any]:
    """Keyword arguments for docker's api.build (parity.host.images.build_spec)."""
    return images.build_spec(env)


def container_user() -> str:
    """Steps never run as root: the caller's uid:gid, or PARITY_CONTAINER_USER (default 1000:1000) when the
    caller is root (e.g. the compose `convert` service, which needs the Docker socket)."""
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    return os.environ.get("PARITY_CONTAINER_USER", "1000:1000")


def container_config(env: str, request: StepRequest, request_file: Path, *, device: str = "cpu",
                     user: str | None = None) -> dict[str, Any]:
    """Keyword arguments for docker's containers.create: the whole security-relevant shape of one step, derived from
    what the request says it reads and writes."""
    volumes: dict[str, dict[str, str]] = {}
    for path in request.writes():
        Path(path).mkdir(parents=True, exist_ok=True)
        volumes[str(Path(path).resolve())] = {"bind": str(Path(path).resolve()), "mode": "rw"}
    for path in [*request.reads(), request_file]:
        resolved = str(Path(path).resolve())
        if not any(resolved == w or resolved.startswith(w + os.sep) for w in volumes):
            volumes[resolved] = {"bind": resolved, "mode": "ro"}
    volumes.update(images.code_mounts())
    ca = images.runtime_ca()
    volumes.update(ca["volumes"])
    network = request.needs_network()
    config: dict[str, Any] = {
        "image": image_tag(env),
        "command": ["python", *step_command(request, request_file)],
        "volumes": volumes,
        "network_disabled": not network,
        "user": user or container_user(),
        "environment": dict(CONTAINER_ENV, HF_HUB_OFFLINE="0" if network else "1", **ca["environment"]),
        "working_dir": "/opt/parity",
        "labels": {"parity.env": env, "parity.step": request.step},
        "detach": True,
    }
    if device.startswith("cuda"):
        import docker.types

        config["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return config


class DockerBackend:
    name = "docker"

    def __init__(self, device: str = "cpu", client: Any = None):
        self.device = device
        self.client = client if client is not None else self._connect()

    @staticmethod
    def _connect():
        try:
            import docker
        except ImportError:
            raise ParityError("the docker backend needs the docker SDK: pip install 'parity[docker]'") from None
        try:
            client = docker.from_env(timeout=10)
            client.ping()
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ParityError(f"no Docker engine reachable ({reason[:120]}); start one or use --backend local") from None
        return client

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
        if env != LAYER:
            self.ensure_image(LAYER, on_progress)
        on_progress(f"building image {tag}")
        try:
            images.sync_ca_bundle()
            for chunk in self.client.api.build(**build_spec(env)):
                if "stream" in chunk and chunk["stream"].strip():
                    on_progress(f"{tag}: {chunk['stream'].strip()[:100]}")
                if "error" in chunk:
                    raise ParityError(f"building {tag} failed: {chunk['error'].strip()}")
        except docker.errors.APIError as exc:
            raise ParityError(f"building {tag} failed: {exc.explanation or exc}") from None
        return tag

    def prepare(self, env: str, on_progress: Progress) -> None:
        self.ensure_image(env, on_progress)

    def run(self, env: str, request: StepRequest, *, log: Path, on_progress: Progress):
        self.ensure_image(env, on_progress)
        output = StepOutput(on_progress)
        with tempfile.TemporaryDirectory(prefix="parity-step-") as tmp:
            request_file = Path(tmp) / "request.json"
            request_file.write_text(request.model_dump_json(indent=2))
            request_file.chmod(0o644)
            Path(tmp).chmod(0o755)
            config = container_config(env, request, request_file, device=self.device)
            container = self.client.containers.create(**config)
            try:
                container.start()
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "w") as fh:
                    for chunk in container.logs(stream=True, follow=True):
                        for line in chunk.decode(errors="replace").splitlines():
                            fh.write(line + "\n")
                            output.feed(line)
                try:
                    status = container.wait(timeout=STEP_TIMEOUT_S)
                except Exception:
                    raise ParityError(f"{env} step {request.step} exceeded {STEP_TIMEOUT_S}s (PARITY_DOCKER_TIMEOUT)"
                                      ) from None
            finally:
                container.remove(force=True)
        return output.result(env, request, status.get("StatusCode", 1), log)
