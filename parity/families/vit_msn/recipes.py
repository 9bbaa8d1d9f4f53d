"""`parity recipe new vit_msn`: MSN's configuration is the constructor arguments of a `src.deit` factory (plain data,
read on the host): `--arg factory=deit_small --arg patch_size=8 --arg img_size=64 ...`."""

from __future__ import annotations

from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.recipe import CheckpointSource, HFSpec, Recipe
from parity.contracts.steps import RecipeSource
from parity.families.vit_msn.variants import CONTAINER, interpolation_inputs, original_config

FACTORIES: dict[str, dict[str, int]] = {
    # src/deit.py factory -> the arguments it passes (all set qkv_bias=True, LayerNorm eps 1e-6, mlp_ratio 4)
    "deit_tiny": {"patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3},
    "deit_small": {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "deit_small_p8": {"patch_size": 8, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "deit_small_p7": {"patch_size": 7, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "deit_base": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "deit_base_p8": {"patch_size": 8, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "deit_base_p7": {"patch_size": 7, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "deit_base_p4": {"patch_size": 4, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "deit_large": {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "deit_large_p8": {"patch_size": 8, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "deit_large_p7": {"patch_size": 7, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "deit_huge": {"patch_size": 16, "embed_dim": 1280, "depth": 32, "num_heads": 16},
    "deit_huge_p8": {"patch_size": 8, "embed_dim": 1280, "depth": 32, "num_heads": 16},
}
"""The plain-ViT factories of facebookresearch/msn src/deit.py (vitc_4gf / deit_small_convstem use a conv stem that
transformers' ViTMSN does not have)."""
ARGUMENTS = ("factory", "patch_size", "embed_dim", "depth", "num_heads", "img_size", "hidden_dim", "output_dim",
             "num_proto", "interpolate_to")
"""What `--arg` may set: the factory, any argument it passes (overriding it), the image size, the projection head
msn_train.init_model adds (its keys are in the checkpoint), and the extra resolution the interpolation pass uses."""


def new_recipe(source: RecipeSource, configuration: dict[str, Any]) -> Recipe:
    unknown = sorted(set(configuration) - set(ARGUMENTS))
    if unknown:
        raise ParityError(f"vit_msn --arg {unknown[0]}: not an argument (known: {', '.join(ARGUMENTS)})")
    factory = configuration.get("factory", "deit_small")
    if factory not in FACTORIES:
        raise ParityError(f"vit_msn factory {factory!r} is not one of src.deit's plain-ViT factories "
                          f"({', '.join(FACTORIES)})")
    arguments = {**FACTORIES[factory], **{k: v for k, v in configuration.items()
                                          if k not in ("factory", "interpolate_to")}}
    img_size = int(arguments.get("img_size", 224))
    grid = img_size // arguments["patch_size"]
    if grid * arguments["patch_size"] != img_size:
        raise ParityError(f"img_size {img_size} is not a multiple of patch_size {arguments['patch_size']}")
    interpolate_to = int(configuration.get("interpolate_to", img_size * 3 // 2))
    return Recipe(
        id=source.id,
        family="vit_msn",
        origin=source.origin,
        description=source.description or f"MSN ViT from src.deit.{factory}({_described(configuration)})",
        checkpoint=CheckpointSource(kind="file", container=CONTAINER),
        original_config=original_config(factory=factory, **arguments),
        hf=HFSpec(model_class="ViTMSNModel", processor_class="ViTImageProcessor"),
        inputs=interpolation_inputs(img_size, interpolate_to, seed=21),
    )


def _described(configuration: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in configuration.items() if k != "factory")
