"""SAM's own recipe section: the prompt cases, each one call of the original model on the image embedding."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from parity.contracts.base import Strict
from parity.contracts.familyspec import FamilySpec


class PromptCase(Strict):
    """One call of the model with one set of prompts, in the ORIGINAL image frame (before any resizing)."""

    point_coords: list[list[list[float]]] | None = None
    """Points (x, y) in pixels of the raw image, shape (prompts, points, 2)."""
    point_labels: list[list[int]] | None = None
    """1 foreground, 0 background; shape (prompts, points)."""
    boxes: list[list[float]] | None = None
    """Boxes (x0, y0, x1, y1) in pixels of the raw image, shape (prompts, 4)."""
    mask_from: str | None = None
    """Feed back the low-res logits of an earlier case as a mask prompt (the name of an earlier case)."""
    mask_index: int | None = Field(default=None, ge=0)
    """Which of mask_from's multimask outputs (`low_res_logits[:, i]`, i < num_multimask_outputs; output i is mask
    token i + 1) is fed back; None picks, as SamPredictor users do, the one with the highest predicted IoU of
    mask_from's first prompt. The origin records the chosen mask as `<case>.mask_inputs`, so the port receives the
    same tensor."""

    @model_validator(mode="after")
    def _consistent(self) -> PromptCase:
        if (self.point_coords is None) != (self.point_labels is None):
            raise ValueError("point_coords and point_labels go together")
        if self.point_coords is None and self.boxes is None:
            raise ValueError("a prompt case needs points or a box")
        if self.point_coords is not None:
            shape = [[len(p) for p in prompt] for prompt in self.point_coords]
            if any(n != 2 for prompt in shape for n in prompt):
                raise ValueError("every point is (x, y)")
            if [len(p) for p in self.point_labels or []] != [len(p) for p in self.point_coords]:
                raise ValueError("point_labels must match point_coords point for point")
        if self.boxes is not None and any(len(b) != 4 for b in self.boxes):
            raise ValueError("every box is (x0, y0, x1, y1)")
        if self.mask_index is not None and self.mask_from is None:
            raise ValueError("mask_index needs mask_from")
        return self


class SamSpec(FamilySpec):
    """SAM / SlimSAM settings."""

    family: Literal["sam"] = "sam"
    """This section is SAM's."""
    prompts: dict[str, PromptCase] = Field(default_factory=dict)
    """Named prompt cases, each one decoder call on the image embedding, in order."""

    def check_original_config(self, original_config: dict[str, Any]) -> None:
        outputs = original_config.get("mask_decoder", {}).get("num_multimask_outputs")
        for name, case in self.prompts.items():
            if case.mask_index is not None and outputs is not None and case.mask_index >= outputs:
                raise ValueError(f"prompt case {name!r}: mask_index {case.mask_index} but the decoder has "
                                 f"{outputs} multimask outputs")

    @model_validator(mode="after")
    def _mask_sources_exist(self) -> SamSpec:
        names = list(self.prompts)
        for i, (name, case) in enumerate(self.prompts.items()):
            if case.mask_from is not None and case.mask_from not in names[:i]:
                raise ValueError(f"prompt case {name!r}: mask_from {case.mask_from!r} is not an earlier case")
        return self


SPEC = SamSpec
