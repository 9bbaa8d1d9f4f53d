"""Inside an origin environment: the files the host resolved for the current step (DumpRequest.assets), by name.

Original code that would download a file at run time (clip.load) reads it from here instead; an origin never
downloads, so a run is reproducible and works where the publisher's URL no longer does."""

from __future__ import annotations

from pathlib import Path

from parity.contracts.errors import ParityError

_step_assets: dict[str, Path] = {}
"""Asset name -> file, as the current step request gives them."""


def use_assets(assets: dict[str, Path]) -> None:
    """Set by the origin runtime for the step it serves."""
    global _step_assets
    _step_assets = {name: Path(path) for name, path in assets.items()}


def asset(name: str) -> Path:
    """The file the host resolved for NAME (hash-checked there); an error naming it when the step carries none."""
    path = _step_assets.get(name)
    if path is None:
        raise ParityError(f"the step carries no asset {name!r} (the host resolves it; pass --asset {name}=PATH)")
    if not path.is_file():
        raise ParityError(f"asset {name!r} not found at {path} inside the origin (is it mounted?)")
    return path
