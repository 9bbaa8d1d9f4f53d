"""Where the project's data lives, for every side: the checkout (or installed copy) and the golden fixtures."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The `parity` package folder."""


def fixtures_dir() -> Path:
    """Golden fixtures: PARITY_FIXTURES, else ../shared/fixtures beside the checkout."""
    configured = os.environ.get("PARITY_FIXTURES")
    return Path(configured) if configured else PACKAGE_ROOT.parent.parent / "shared" / "fixtures"
