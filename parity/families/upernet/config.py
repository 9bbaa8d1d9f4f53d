"""UperNet's mmseg config as transformers must wire it: the ConvNeXt arch settings and the structure a config
describes (stages, outputs, laterals, auxiliary head), pure data shared by the port, `parity recipe new` and tests."""

from __future__ import annotations

from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.recipe import Recipe

ARCH_SETTINGS = {
    # mmcls 0.25 / mmpretrain 1.2 ConvNeXt.arch_settings
    "tiny": {"depths": [3, 3, 9, 3], "channels": [96, 192, 384, 768]},
    "small": {"depths": [3, 3, 27, 3], "channels": [96, 192, 384, 768]},
    "base": {"depths": [3, 3, 27, 3], "channels": [128, 256, 512, 1024]},
    "large": {"depths": [3, 3, 27, 3], "channels": [192, 384, 768, 1536]},
    "xlarge": {"depths": [3, 3, 27, 3], "channels": [256, 512, 1024, 2048]},
}
STACKS = ("mmseg0", "mmseg1")
AUX_IN_INDEX = 2
"""UperNetForSemanticSegmentation builds UperNetFCNHead(config, in_index=2): the auxiliary head reads output 2."""


def model_cfg(recipe: Recipe) -> dict[str, Any]:
    if recipe.origin not in recipe.original_config:
        raise ParityError(f"{recipe.id}: original_config has no {recipe.origin} section (it has "
                          f"{', '.join(k for k in recipe.original_config if k in STACKS)})")
    return recipe.original_config[recipe.origin]["model"]


def arch(recipe: Recipe) -> dict[str, list[int]]:
    name = model_cfg(recipe)["backbone"]["arch"]
    return ARCH_SETTINGS[name] if isinstance(name, str) else name


def structure(recipe: Recipe) -> dict[str, Any]:
    """What the original's config wires, as transformers' UperNet must wire it too; whatever it cannot express is a
    one-line error here rather than a silent mismatch later."""
    model = model_cfg(recipe)
    backbone, head, aux = model["backbone"], model["decode_head"], model.get("auxiliary_head")
    settings = arch(recipe)
    stages = len(settings["depths"])
    outputs = [i % stages for i in _as_list(backbone.get("out_indices", -1))]
    problems = []
    if backbone.get("gap_before_final_norm", True) or backbone.get("use_grn", False) \
            or backbone.get("linear_pw_conv", True) is not True or backbone.get("stem_patch_size", 4) != 4:
        problems.append("the ConvNeXt backbone must be the plain one (no GAP before the final norm, no GRN, linear "
                        "pointwise convs, stem patch 4)")
    if _as_list(head.get("in_index", -1)) != list(range(len(outputs))):
        problems.append(f"decode_head.in_index {head['in_index']} must take every backbone output in order "
                        f"({list(range(len(outputs)))})")
    if list(head["in_channels"]) != [settings["channels"][i] for i in outputs]:
        problems.append(f"decode_head.in_channels {head['in_channels']} are not the backbone's output channels")
    if head.get("align_corners", False) or head["norm_cfg"]["type"] not in ("BN", "SyncBN"):
        problems.append("decode_head must use align_corners=False and BN")
    if aux is not None:
        if aux.get("type") != "FCNHead" or aux.get("in_index") != AUX_IN_INDEX or aux.get("kernel_size", 3) != 3 \
                or aux.get("dilation", 1) != 1 or aux.get("concat_input", True) \
                or aux["norm_cfg"]["type"] not in ("BN", "SyncBN"):
            problems.append(f"auxiliary_head must be an FCNHead on backbone output {AUX_IN_INDEX} (3x3, no dilation, "
                            "no concat_input, BN), as transformers' UperNetFCNHead hard-codes")
        elif aux["in_channels"] != head["in_channels"][AUX_IN_INDEX]:
            problems.append("auxiliary_head.in_channels is not the channel count of its input")
    if problems:
        raise ParityError(f"{recipe.id}: {problems[0]}")
    return {"stages": stages, "outputs": outputs, "laterals": len(head["in_channels"]) - 1,
            "pool_scales": list(head["pool_scales"]), "auxiliary": aux is not None}


def _as_list(value: int | list[int]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)
