"""CLIPSeg's own recipe section: the text prompts (one per image)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from parity.contracts.familyspec import FamilySpec


class ClipSegSpec(FamilySpec):
    """CLIPSeg settings."""

    family: Literal["clipseg"] = "clipseg"
    """This section is CLIPSeg's."""
    texts: list[str] = Field(default_factory=list)
    """Text prompts, one per raw image (in image-name order, `image` first)."""


SPEC = ClipSegSpec
