"""Where the project's data lives, for every side: the checkout (or installed copy) and the golden fixtures."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The `parity` package folder."""
UPSTREAM_RECORD = Path("/opt/parity-upstream.json")
"""In upstream-source images: what images/upstream/upstream.py fetched, patched and built (read into every dump's
environment record)."""

_step_fixtures: Path | None = None
"""The fixtures folder a step request named (set by the origin runtime for the step it serves)."""


def use_fixtures_dir(folder: Path | None) -> None:
    """Inside an environment: the fixtures folder the current step request names (e.g. a copy of a fixture folder
    elsewhere), so a recipe's fixture references resolve there and nowhere else."""
    global _step_fixtures
    _step_fixtures = Path(folder) if folder is not None else None


def fixtures_dir() -> Path:
    """Golden fixtures: the step's fixtures folder, else PARITY_FIXTURES, else ../shared/fixtures by the checkout."""
    if _step_fixtures is not None:
        return _step_fixtures
    configured = os.environ.get("PARITY_FIXTURES")
    return Path(configured) if configured else PACKAGE_ROOT.parent.parent / "shared" / "fixtures"


def safetensors_only_problem(folder: Path) -> str | None:
    """Why a save_pretrained folder cannot be loaded as an existing port (the port side loads safetensors only and
    never unpickles), or None when it holds *.safetensors weights."""
    if any(folder.glob("*.safetensors")):
        return None
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
    held = f"it holds {', '.join(pickled[:3])}" if pickled else "it holds no weights file"
    return (f"port {folder} has no *.safetensors weights ({held}); the port side loads safetensors only and never "
            "unpickles: re-save it with save_pretrained(safe_serialization=True)")
