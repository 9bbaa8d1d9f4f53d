"""Backends run one runtime verb inside a named environment. One small interface, chosen by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from orchestrator.errors import ParityError

Progress = Callable[[str], None]


class Backend(Protocol):
    name: str

    def prepare(self, env: str, on_progress: Progress) -> None:
        """Make sure `env` can run (build it if needed) or raise ParityError, before any costly step starts."""

    def run(self, env: str, args: list[str], *, log: Path, on_progress: Progress, readonly: list[Path],
            writable: list[Path], network: bool = False) -> None:
        """Run `python -m converters.runtime *args` in environment `env`; raise ParityError on failure.

        readonly / writable name the host paths the command touches (the docker backend mounts exactly these);
        network says whether the step may reach the network (dumps never do).
        """


def get_backend(name: str | None) -> Backend:
    """Explicit choice, or local (the default when no Docker engine is reachable)."""
    from orchestrator.backends.local import LocalBackend

    if name in (None, "local"):
        return LocalBackend()
    if name == "docker":
        from orchestrator.backends.docker import DockerBackend

        return DockerBackend()
    raise ParityError(f"unknown backend {name!r} (choose local or docker)")
