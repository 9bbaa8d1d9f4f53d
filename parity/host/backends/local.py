"""Local backend: cached venvs built from images/<env>/requirements.txt, one subprocess per step."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from parity.contracts.steps import StepRequest
from parity.host.backends import Progress, StepOutput, step_command
from parity.host.envs import ensure_env, env_vars


class LocalBackend:
    name = "local"

    def prepare(self, env: str, on_progress: Progress) -> None:
        ensure_env(env, on_progress)

    def run(self, env: str, request: StepRequest, *, log: Path, on_progress: Progress):
        python = ensure_env(env, on_progress)
        log.parent.mkdir(parents=True, exist_ok=True)
        output = StepOutput(on_progress)
        with tempfile.TemporaryDirectory(prefix="parity-step-") as tmp, open(log, "w") as fh:
            request_file = Path(tmp) / "request.json"
            request_file.write_text(request.model_dump_json(indent=2))
            proc = subprocess.Popen([str(python), *step_command(request, request_file)], env=env_vars(),
                                    stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.PIPE, text=True, bufsize=1)
            assert proc.stderr is not None
            try:
                for line in proc.stderr:
                    fh.write(line)
                    output.feed(line)
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        return output.result(env, request, code, log)
