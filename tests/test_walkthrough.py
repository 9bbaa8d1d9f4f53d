"""docs/publish.md's walk-through, run exactly as written: generate a tiny original checkpoint, convert, read the
report, publish --dry-run, re-verify the dry-run folder with `diff --port`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_json

DOC = ROOT / "docs" / "publish.md"
MARKER = "<!-- walk-through: tests/test_walkthrough.py runs this block -->"


def walkthrough_commands() -> list[str]:
    """The bash block right after the marker, one command per line."""
    text = DOC.read_text()
    found = re.search(re.escape(MARKER) + r"\n```bash\n(.*?)\n```", text, flags=re.S)
    assert found, f"{DOC} lost its walk-through block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def test_the_walkthrough_covers_every_step_of_the_issue():
    commands = walkthrough_commands()
    assert [c.split()[1] for c in commands if c.startswith("parity ")] == ["generate", "convert", "publish", "diff"]
    assert any(c.startswith("cat ") and c.endswith("report.md") for c in commands)
    assert "--dry-run" in next(c for c in commands if c.startswith("parity publish"))


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    script = "set -euo pipefail\n" + "\n".join(walkthrough_commands()) + "\n"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "TERM": "dumb",
           "NO_COLOR": "1", "COLUMNS": "100"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out" / "sam-tiny-random"
    assert "## parity: `sam-tiny-random` — PASS" in result.stdout
    assert "# my-org/sam-tiny-random" in result.stdout and "## Parity: PASS" in result.stdout
    assert read_json(out / "report.json")["verdict"] == "pass"
    plan = read_json(out / "publish" / "operations.json")
    assert {"README.md", "config.json", "model.safetensors", "parity/report.json"} <= \
        {op["path_in_repo"] for op in plan["operations"]}
    recheck = list((out / "recheck").glob("transformers-*/report.json"))
    assert len(recheck) == 1
    verified = read_json(recheck[0])
    assert verified["verdict"] == "pass" and verified["port"] == str(out / "publish" / "repo")
    manifest = read_json(out / "dump" / "manifest.json")
    assert manifest["checkpoint"]["source"] == f"file {tmp_path / 'sam-tiny.pth'}"
    assert "local file sam-tiny.pth" in (out / "publish" / "repo" / "README.md").read_text()
    assert str(tmp_path) not in (out / "publish" / "repo" / "README.md").read_text()
