"""CLIPSeg's own recipe section: the text prompts and where the CLIP tower comes from; and which vision layers the
original hands to its decoder, derived from its constructor arguments (used by both halves to pair captures)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from parity.contracts.base import Sha256, Strict
from parity.contracts.familyspec import FamilySpec
from parity.contracts.sources import AssetSource

OPENAI_TOWER_ASSET = "clip-vit-b16"
"""Asset name of OpenAI's ViT-B-16.pt (`--asset clip-vit-b16=PATH`)."""


class ClipTower(Strict):
    """Where the CLIP ViT-B/16 tower comes from: CLIPSeg's released decoder files hold only the trained decoder."""

    kind: Literal["combined", "openai", "fixture", "file"]
    """combined: inside the checkpoint (clip_model.*); openai: OpenAI's ViT-B-16.pt, a TorchScript archive read by the
    unmodified clip.load, resolved by the host like a checkpoint (the asset `clip-vit-b16`); fixture: a tower file in a
    golden fixture folder (resolved in the fixtures folder the step names); file: a CLIP state dict file on this
    machine."""
    path: str | None = None
    """file: the tower file's absolute path."""
    url: str | None = None
    """openai: where OpenAI publishes the archive (the URL in clip.py)."""
    mirrors: list[str] = Field(default_factory=list)
    """openai: further locations of the same file (same sha256), tried in order after `url`."""
    fixture: str | None = None
    """fixture: the fixture folder's name."""
    filename: str | None = None
    """fixture: the tower file's name inside it."""
    sha256: Sha256 | None = None
    """sha256 of the tower file, checked before it is read."""

    @model_validator(mode="after")
    def _consistent(self) -> ClipTower:
        if self.kind == "fixture" and not (self.fixture and self.filename):
            raise ValueError("a fixture tower needs fixture and filename")
        if self.kind == "openai" and not (self.url and self.sha256):
            raise ValueError("an openai tower needs url and sha256 (the host downloads and checks it)")
        if self.kind != "openai" and self.mirrors:
            raise ValueError("mirrors are download locations of an openai tower")
        if self.kind == "file" and not self.path:
            raise ValueError("a file tower needs path")
        if self.kind == "file" and not self.path.startswith("/"):
            raise ValueError("a file tower's path must be absolute (the origin may run in a container)")
        return self

    def source(self) -> AssetSource:
        """The openai archive as a checkpoint-like source: pinned, URLs in order, or the user's file."""
        return AssetSource(name=OPENAI_TOWER_ASSET, filename="ViT-B-16.pt",
                           description="OpenAI's CLIP ViT-B/16 archive (clip.load's ViT-B-16.pt)", sha256=self.sha256, urls=[self.url, *self.mirrors])


class ClipSegSpec(FamilySpec):
    """CLIPSeg settings."""

    family: Literal["clipseg"] = "clipseg"
    """This section is CLIPSeg's."""
    texts: list[str] = Field(default_factory=list)
    """Text prompts, one per raw image (in image-name order, `image` first)."""
    tower: ClipTower = Field(default_factory=lambda: ClipTower(kind="combined"))
    """Where the CLIP tower comes from (a decoder-only checkpoint needs one beside it)."""

    def check_original_config(self, original_config: dict[str, Any]) -> None:
        decoder, clip = original_config.get("decoder"), original_config.get("clip")
        if decoder is None or clip is None:
            return
        check_extract_layers(decoder["extract_layers"], clip["vision_layers"])

    def fixture_folders(self) -> list[str]:
        return [self.tower.fixture] if self.tower.kind == "fixture" else []

    def local_files(self) -> list[str]:
        return [self.tower.path] if self.tower.kind == "file" else []

    def assets(self) -> list[AssetSource]:
        return [self.tower.source()] if self.tower.kind == "openai" else []


def check_extract_layers(extract_layers: Sequence[int], vision_layers: int) -> None:
    """Layers the original and transformers both use the same way: distinct, after layer 0 (CLIPDensePredT returns
    layer 0 separately and would drop a decoder block for it), inside the tower (the original silently skips others)."""
    layers = list(extract_layers)
    if not layers:
        raise ValueError("extract_layers is empty (CLIPDensePredT needs at least one decoder block)")
    if len(set(layers)) != len(layers):
        raise ValueError(f"extract_layers {layers} repeats a layer (the original would use fewer decoder blocks)")
    outside = [i for i in layers if not 1 <= i < vision_layers]
    if outside:
        raise ValueError(f"extract_layers {layers}: layer {outside[0]} is not one of the tower's layers 1.."
                         f"{vision_layers - 1} (layer 0 is returned apart; the original skips layers it lacks)")


UNPORTED_OPTIONS = {"extra_blocks": 0, "reduce_cond": None, "upsample": False, "n_tokens": None,
                    "rev_activations": False, "trans_conv": None, "fix_shift": False}
"""CLIPDensePredT options transformers' CLIPSeg has no equivalent for, with the value it implies."""


def unported_option(decoder: dict[str, Any]) -> str | None:
    """The first CLIPDensePredT option set to something transformers cannot express, or None."""
    return next((k for k, v in UNPORTED_OPTIONS.items() if decoder.get(k, v) != v), None)


def returned_activation_layers(extract_layers: Sequence[int], vision_layers: int) -> list[int]:
    """CLIPDensePredT.forward calls visual_forward(x, extract_layers=[0] + list(extract_layers)), which appends the
    output of resblock i whenever `i in extract_layers`, in the order the blocks run, and returns them as
    `[activation1] + activations`: item k of the returned list is the output of the k-th of these layers."""
    wanted = {0, *extract_layers}
    return [i for i in range(vision_layers) if i in wanted]


def decoder_layers(extract_layers: Sequence[int]) -> list[int]:
    """The vision layers the decoder consumes, in the order the original collects them (ascending, whatever order
    extract_layers lists them in); reversed, they meet blocks[0], reduces[0], ... in turn."""
    return sorted(extract_layers)


SPEC = ClipSegSpec
