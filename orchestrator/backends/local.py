"""Local backend: cached venvs built from images/<env>/requirements.txt, subprocesses for each step."""

from __future__ import annotations

import subprocess
from collections import deque
from pathlib import Path

from converters.runtime import ERROR_MARKER, PROGRESS_MARKER
from orchestrator.backends import Progress
from orchestrator.envs import ensure_env, env_vars
from orchestrator.errors import ParityError


class LocalBackend:
    name = "local"

    def prepare(self, env: str, on_progress: Progress) -> None:
        ensure_env(env, on_progress)

    def run(self, env: str, args: list[str], *, log: Path, on_progress: Progress, readonly: list[Path],
            writable: list[Path], network: bool = False) -> None:
        python = ensure_env(env, on_progress)
        log.parent.mkdir(parents=True, exist_ok=True)
        tail: deque[str] = deque(maxlen=40)
        error = None
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                [str(python), "-m", "converters.runtime", *args], env=env_vars(), stdin=subprocess.DEVNULL,
                stdout=fh, stderr=subprocess.PIPE, text=True, bufsize=1,
            )
            assert proc.stderr is not None
            try:
                for line in proc.stderr:
                    fh.write(line)
                    if line.startswith(PROGRESS_MARKER):
                        on_progress(line[len(PROGRESS_MARKER):].strip())
                    elif line.startswith(ERROR_MARKER):
                        error = line[len(ERROR_MARKER):].strip()
                    else:
                        tail.append(line.rstrip())
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if code != 0:
            raise ParityError(error or f"{env} step {args[0]} exited with {code} ({tail[-1] if tail else 'no output'});"
                                       f" log: {log}")
