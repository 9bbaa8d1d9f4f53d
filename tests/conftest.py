"""Shared helpers. Tests that need the origin or port environments run the real CLI in subprocesses; the environments
are built once (cached by pin hash under PARITY_CACHE_DIR or ~/.cache/parity) and reused by every later run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures"


def parity(*args: str, cwd: Path | None = None, check: int | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (output is not a terminal); `check` asserts the exit code; `env` adds variables."""
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "parity.host.cli", *args], cwd=cwd or ROOT, env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def in_env(env: str, code: str) -> str:
    """Run Python code inside a parity environment (built on demand) and return its stdout."""
    from parity.host.envs import ensure_env, env_vars

    python = ensure_env(env)
    result = subprocess.run([str(python), "-c", code], env=env_vars(), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines, "no error output"
    return lines[-1]


def stderr_without_progress(result: subprocess.CompletedProcess) -> list[str]:
    """stderr's non-empty lines other than plain progress lines (what a one-line error must be alone in)."""
    from parity.host.progress import PLAIN_LINE

    return [ln for ln in result.stderr.splitlines() if ln.strip() and not PLAIN_LINE.match(ln)]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One full `parity convert sam-tiny-random` shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("tiny")
    parity("convert", "sam-tiny-random", "--out", str(out), check=0)
    return out / "sam-tiny-random"
