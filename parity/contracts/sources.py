"""Files the original code would download at run time (e.g. CLIPSeg's clip.load fetching OpenAI's ViT-B/16 archive).
They are checkpoint sources like the checkpoint itself: sha256-pinned, URLs tried in order, or a file the user gives
(`--asset NAME=PATH`). The host resolves them and hands the origin step their paths; no origin ever downloads."""

from __future__ import annotations

from pydantic import Field

from parity.contracts.base import Sha256, Strict

AssetName = str
"""Name of an asset, as `--asset NAME=PATH` and `parity.origin.assets.asset(NAME)` spell it."""


class AssetSource(Strict):
    """One file the original code needs besides the checkpoint."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    """Short name, e.g. `clip-vit-b16`."""
    description: str
    """What the file is, for the error that asks the user to download it."""
    filename: str = Field(pattern=r"^[^/\\]+$")
    """File name as published (kept in the cache, so the original code sees the name it expects)."""
    sha256: Sha256
    """Expected sha256: a file that does not match is never used."""
    urls: list[str] = Field(min_length=1)
    """Download locations, tried in order (the publisher's first, then mirrors)."""
