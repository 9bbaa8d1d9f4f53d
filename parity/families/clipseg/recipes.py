"""`parity recipe new clipseg`: CLIPSeg's configuration is CLIPDensePredT's constructor arguments (plain data, read
on the host), e.g. `--arg extract_layers=[3,7,9] --arg reduce_dim=64 --arg complex_trans_conv=true`, plus where the
CLIP tower comes from (`--arg tower=openai|combined|/abs/path/clip.pt`)."""

from __future__ import annotations

from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.recipe import CheckpointSource, HFSpec, InputSpec, Recipe
from parity.contracts.steps import RecipeSource
from parity.families.clipseg.spec import ClipSegSpec, ClipTower, check_extract_layers, unported_option
from parity.families.clipseg.variants import (
    CONTAINER,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_TOWER,
    PROMPTS,
    clip_config,
    decoder_config,
    original_config,
    synthetic_images,
)

DECODER_ARGUMENTS = ("version", "extract_layers", "cond_layer", "reduce_dim", "n_heads", "prompt", "extra_blocks",
                     "reduce_cond", "fix_shift", "learn_trans_conv_only", "limit_to_clip_only", "upsample",
                     "add_calibration", "rev_activations", "trans_conv", "n_tokens", "complex_trans_conv")
"""CLIPDensePredT.__init__'s arguments."""
TOWER_ARGUMENTS = ("vision_layers", "transformer_width", "transformer_layers")
"""A smaller CLIP ViT-B/16 tower than OpenAI's (tiny test checkpoints): clip.model.CLIP's derived arguments."""
OTHER_ARGUMENTS = ("tower", "tower_sha256", "texts", "image_size")


def new_recipe(source: RecipeSource, configuration: dict[str, Any]) -> Recipe:
    known = DECODER_ARGUMENTS + TOWER_ARGUMENTS + OTHER_ARGUMENTS
    unknown = sorted(set(configuration) - set(known))
    if unknown:
        raise ParityError(f"clipseg --arg {unknown[0]}: not an argument (CLIPDensePredT's: "
                          f"{', '.join(DECODER_ARGUMENTS)}; tower: {', '.join(TOWER_ARGUMENTS + OTHER_ARGUMENTS)})")
    decoder = decoder_config(reduce_dim=64, complex_trans_conv=False, extract_layers=[3, 6, 9])
    decoder.update({k: configuration[k] for k in DECODER_ARGUMENTS if k in configuration})
    decoder["extract_layers"] = list(decoder["extract_layers"])
    if decoder["version"] != "ViT-B/16":
        raise ParityError(f"clipseg version {decoder['version']!r}: the released CLIPSeg and transformers' port use "
                          "ViT-B/16")
    option = unported_option(decoder)
    if option is not None:
        raise ParityError(f"clipseg --arg {option}={decoder[option]!r}: transformers' CLIPSeg has no equivalent")
    clip = clip_config(**{k: configuration[k] for k in TOWER_ARGUMENTS if k in configuration})
    try:
        check_extract_layers(decoder["extract_layers"], clip["vision_layers"])
    except ValueError as exc:
        raise ParityError(f"clipseg: {exc}") from None
    tower = _tower(str(configuration.get("tower", "openai")), configuration.get("tower_sha256"))
    texts = list(configuration.get("texts", PROMPTS))
    size = int(configuration.get("image_size", 352))
    return Recipe(
        id=source.id,
        family="clipseg",
        origin=source.origin,
        description=source.description or (f"CLIPSeg rd{decoder['reduce_dim']} extract_layers "
                                           f"{decoder['extract_layers']} on a {clip['vision_layers']}-layer tower"),
        checkpoint=CheckpointSource(kind="file", container=CONTAINER),
        original_config=original_config(clip, decoder, size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        hf=HFSpec(model_class="CLIPSegForImageSegmentation", processor_class="CLIPSegProcessor"),
        inputs=InputSpec(images=synthetic_images(size, 41, len(texts))),
        spec=ClipSegSpec(texts=texts, tower=tower),
    )


def _tower(where: str, sha256: str | None) -> ClipTower:
    if where == "openai":
        return OPENAI_TOWER
    if where == "combined":
        return ClipTower(kind="combined")
    if where.startswith("/"):
        return ClipTower(kind="file", path=where, sha256=sha256)
    raise ParityError(f"clipseg --arg tower={where!r}: openai (OpenAI's ViT-B-16.pt, resolved like a checkpoint), combined (inside "
                      "the checkpoint) or an absolute path to a CLIP state dict")
