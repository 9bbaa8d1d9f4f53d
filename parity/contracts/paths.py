"""Where the project's data lives, for every side: the checkout (or installed copy) and the golden fixtures."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The `parity` package folder."""
UPSTREAM_RECORD = Path("/opt/parity-upstream.json")
"""In upstream-source images: what images/upstream/upstream.py fetched, patched and built (read into every dump's
environment record)."""


def fixtures_dir() -> Path:
    """Golden fixtures: PARITY_FIXTURES, else ../shared/fixtures beside the checkout."""
    configured = os.environ.get("PARITY_FIXTURES")
    return Path(configured) if configured else PACKAGE_ROOT.parent.parent / "shared" / "fixtures"
