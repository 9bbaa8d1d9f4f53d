"""Backends run one step (a typed request from parity.contracts.steps) inside a named environment and return its
typed response. One small interface, chosen by name; the marker parsing both share lives here."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from parity.contracts.errors import ParityError
from parity.contracts.steps import ERROR_MARKER, PROGRESS_MARKER, RESPONSE_MARKER, RESPONSES, StepRequest

Progress = Callable[[str], None]


class Backend(Protocol):
    name: str

    def prepare(self, env: str, on_progress: Progress) -> None:
        """Make sure `env` can run (build it if needed) or raise ParityError, before any costly step starts."""

    def run(self, env: str, request: StepRequest, *, log: Path, on_progress: Progress):
        """Run `python -m parity.<request.side()> REQUEST` in environment `env` and return the step's response;
        raise ParityError (the step's own one-line error when it gave one) on failure. The request says which host
        paths the step reads and writes and whether it needs the network: a sandboxing backend exposes exactly those."""


def step_command(request: StepRequest, request_file: Path) -> list[str]:
    """The argv after the environment's python."""
    return ["-m", f"parity.{request.side()}", str(request_file)]


class StepOutput:
    """Reads a step's stderr line by line: progress goes to the callback, the error and response markers are kept,
    and the last other lines are remembered for a failure without a marker."""

    def __init__(self, on_progress: Progress):
        self.on_progress = on_progress
        self.error: str | None = None
        self.response: str | None = None
        self.tail: deque[str] = deque(maxlen=40)

    def feed(self, line: str) -> None:
        if line.startswith(PROGRESS_MARKER):
            self.on_progress(line[len(PROGRESS_MARKER):].strip())
        elif line.startswith(ERROR_MARKER):
            self.error = line[len(ERROR_MARKER):].strip()
        elif line.startswith(RESPONSE_MARKER):
            self.response = line[len(RESPONSE_MARKER):].strip()
        elif line.strip():
            self.tail.append(line.rstrip())

    def result(self, env: str, request: StepRequest, code: int, log: Path):
        """The typed response of a successful step, or the one-line error of a failed one."""
        if code != 0:
            raise ParityError(self.error or f"{env} step {request.step} exited with {code} "
                                            f"({self.tail[-1] if self.tail else 'no output'}); log: {log}")
        if self.response is None:
            raise ParityError(f"{env} step {request.step} gave no response; log: {log}")
        try:
            response = RESPONSES.validate_json(self.response)
        except ValidationError:
            raise ParityError(f"{env} step {request.step} gave a malformed response; log: {log}") from None
        if response.step != request.step:
            raise ParityError(f"{env} step {request.step} answered as {response.step}; log: {log}")
        return response


def get_backend(name: str | None) -> Backend:
    """Explicit choice, or local (the default when no Docker engine is reachable)."""
    from parity.host.backends.local import LocalBackend

    if name in (None, "local"):
        return LocalBackend()
    if name == "docker":
        from parity.host.backends.docker import DockerBackend

        return DockerBackend()
    raise ParityError(f"unknown backend {name!r} (choose local or docker)")
