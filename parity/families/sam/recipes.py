"""`parity recipe new sam`: SAM / SlimSAM build arguments, read in the sam environment by origin.py's
read_configuration from segment_anything's own build functions (`--arg builder=vit_b`), from a checkpoint's tensor
shapes (`--checkpoint my.pth`), or given explicitly (`--arg depth=4 --arg global_attn_indexes=[1,3]`)."""

from __future__ import annotations

import re
from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.recipe import CheckpointSource, HFSpec, Recipe, TolerancePolicy
from parity.contracts.steps import RecipeSource
from parity.families.sam.variants import FULL_SIZE_DRIFT, original_config, synthetic_inputs

BUILD_ARGUMENTS = ("embed_dim", "depth", "num_heads", "global_attn_indexes", "mlp_dim", "img_size", "patch_size",
                   "window_size", "out_chans", "prompt_embed_dim", "mask_in_chans", "decoder_depth", "decoder_heads",
                   "decoder_mlp_dim", "iou_head_hidden_dim")
"""The arguments of variants.original_config: _build_sam's four encoder arguments plus the constants it fixes."""
REGISTRY_NAMES = {"encoder_embed_dim": "embed_dim", "encoder_depth": "depth", "encoder_num_heads": "num_heads",
                  "encoder_global_attn_indexes": "global_attn_indexes"}
"""segment_anything.build_sam._build_sam's argument names -> ours."""
DECODER_HEADS = 8
"""TwoWayTransformer's head count leaves no trace in tensor shapes; every released SAM uses 8."""


def arguments_from_shapes(shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, Any], list[str]]:
    """Build arguments read off a SAM state dict's tensor shapes, and notes on what shapes cannot say.

    Windowed blocks carry relative-position tables of 2*window-1 rows, global ones 2*grid-1 (grid = img/patch), so the
    tables give both the global-attention indexes and the window; their width is the head dimension."""

    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ParityError(f"the checkpoint has no {name}: not a segment_anything Sam state dict")
        return tuple(shapes[name])

    embed, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    build: dict[str, Any] = {
        "embed_dim": embed, "patch_size": patch, "img_size": grid * patch, "depth": len(blocks),
        "mlp_dim": shape("image_encoder.blocks.0.mlp.lin1.weight")[0],
        "out_chans": shape("image_encoder.neck.0.weight")[0],
        "prompt_embed_dim": shape("prompt_encoder.point_embeddings.0.weight")[1],
        "mask_in_chans": shape("prompt_encoder.mask_downscaling.3.weight")[0],
        "decoder_depth": len({k.split(".")[3] for k in shapes if k.startswith("mask_decoder.transformer.layers.")}),
        "decoder_mlp_dim": shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        "iou_head_hidden_dim": shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    }
    notes = [f"decoder_heads not in the tensor shapes: {DECODER_HEADS} (every released SAM)"]
    sizes = {i: (shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] + 1) // 2 for i in blocks
             if f"image_encoder.blocks.{i}.attn.rel_pos_h" in shapes}
    if len(sizes) == len(blocks):
        head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
        build["num_heads"] = embed // head_dim
        build["global_attn_indexes"] = [i for i in blocks if sizes[i] == grid]
        windows = sorted({s for s in sizes.values() if s != grid})
        if len(windows) > 1:
            raise ParityError(f"windowed blocks with different windows {windows}: not one SAM encoder")
        build["window_size"] = windows[0] if windows else grid
        if not windows:
            notes.append("every block's relative-position table spans the whole grid: window_size = grid, so windowed "
                         "and global attention compute the same")
    else:
        notes.append("no relative-position tables: num_heads, global_attn_indexes and window_size must be given")
    if shape("mask_decoder.mask_tokens.weight")[0] != 4:
        raise ParityError("the mask decoder has other than 3 multimask outputs (_build_sam fixes 3)")
    cross = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")
    rate = build["prompt_embed_dim"] // cross[0]
    if rate != 2:
        raise ParityError(f"cross-attention downsample rate {rate} (_build_sam fixes 2)")
    return build, notes


def registry_arguments(captured: dict[str, Any]) -> dict[str, Any]:
    """_build_sam's keyword arguments (as a sam_model_registry builder passed them) in our names."""
    return {REGISTRY_NAMES[k]: (list(v) if isinstance(v, (list, tuple)) else v)
            for k, v in captured.items() if k in REGISTRY_NAMES}


def new_recipe(source: RecipeSource, configuration: dict[str, Any]) -> Recipe:
    """configuration: {"build": {argument: value}, "read_from": [what the arguments came from]}."""
    build = dict(configuration["build"])
    unknown = sorted(set(build) - set(BUILD_ARGUMENTS))
    if unknown:
        raise ParityError(f"sam --arg {unknown[0]}: not a build argument (known: builder, "
                          f"{', '.join(BUILD_ARGUMENTS)})")
    missing = [k for k in ("embed_dim", "depth", "num_heads", "global_attn_indexes") if k not in build]
    if missing:
        raise ParityError(f"sam: {', '.join(missing)} unknown: give --arg builder=vit_b|vit_l|vit_h, --checkpoint, or "
                          f"--arg {missing[0]}=...")
    if "decoder_heads" not in build:
        build["decoder_heads"] = DECODER_HEADS
        if build.get("prompt_embed_dim", 256) // 2 % DECODER_HEADS:
            raise ParityError(f"sam: the decoder's head count is not in the tensor shapes, and the usual "
                              f"{DECODER_HEADS} does not divide its cross-attention width "
                              f"{build.get('prompt_embed_dim', 256) // 2}: pass --arg decoder_heads=N")
    img_size = build.get("img_size", 1024)
    if img_size % build.get("patch_size", 16):
        raise ParityError(f"sam: img_size {img_size} is not a multiple of patch_size {build.get('patch_size', 16)}")
    width = round(img_size * 25 / 32)
    config = original_config(**build)
    enc = config["image_encoder"]
    return Recipe(
        id=source.id,
        family="sam",
        origin=source.origin,
        description=source.description or (
            f"SAM from {' + '.join(configuration.get('read_from') or ['build arguments'])}: embed {enc['embed_dim']}, "
            f"depth {enc['depth']}, heads {enc['num_heads']}, global {enc['global_attn_indexes']}, window "
            f"{enc['window_size']}, {img_size} px"),
        checkpoint=CheckpointSource(kind="file", container="torch-state-dict"),
        original_config=config,
        hf=HFSpec(model_class="SamModel", processor_class="SamProcessor"),
        **synthetic_inputs(round(width * 3 / 4), width),
        tolerance=FULL_SIZE_DRIFT if img_size >= 1024 else TolerancePolicy(),
    )
