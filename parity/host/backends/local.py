"""Local backend: cached venvs built from images/<env>/requirements.txt, one subprocess per step.

A step's process dies with the host: on Linux the kernel sends it SIGKILL when the host dies (PR_SET_PDEATHSIG, even
when the host is killed with SIGKILL), and it runs in its own process group, which the host kills on any exit path
(Ctrl-C included)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from parity.contracts.steps import StepRequest
from parity.host.backends import Progress, StepOutput, step_command
from parity.host.envs import ensure_env, env_vars

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGKILL the child when this process dies (Linux), or None elsewhere. libc is
    resolved here, before the fork, so the child only makes two system calls."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the host died before prctl took effect
            os._exit(137)

    return preexec


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the step's process group (the step and anything it started), then reap the step."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class LocalBackend:
    name = "local"

    def prepare(self, env: str, on_progress: Progress) -> None:
        ensure_env(env, on_progress)

    def run(self, env: str, request: StepRequest, *, log: Path, on_progress: Progress):
        python = ensure_env(env, on_progress)
        log.parent.mkdir(parents=True, exist_ok=True)
        output = StepOutput(on_progress)
        step_temp = tempfile.TemporaryDirectory(prefix=f"parity-step-{os.getpid()}-")
        with step_temp as tmp, open(log, "w", buffering=1) as fh:  # line-buffered: the log can be followed live
            request_file = Path(tmp) / "request.json"
            request_file.write_text(request.model_dump_json(indent=2))
            proc = subprocess.Popen([str(python), *step_command(request, request_file)], env=env_vars(),
                                    stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.PIPE, text=True, bufsize=1,
                                    start_new_session=True, preexec_fn=die_with_parent())
            assert proc.stderr is not None
            try:
                for line in proc.stderr:
                    fh.write(line)
                    output.feed(line)
                code = proc.wait()
            except BaseException:
                kill_group(proc)
                raise
        return output.result(env, request, code, log)
