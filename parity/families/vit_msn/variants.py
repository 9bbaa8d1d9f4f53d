"""ViT-MSN variants as data: deit constructor arguments, MSN's training container, inputs, tolerances."""

from __future__ import annotations

from typing import Any

from parity.contracts.recipe import (
    CheckpointSource,
    GenerateSpec,
    HFSpec,
    ImageSpec,
    InputSpec,
    Recipe,
    TolerancePolicy,
)

LICENSE = "cc-by-nc-4.0"
"""facebookresearch/msn is released under CC BY-NC 4.0."""
PIPELINE_TAG = "image-feature-extraction"
"""The Hub task of the port, for the published model card."""

MSN_RELEASES = "https://dl.fbaipublicfiles.com/msn"
FIXTURE = "msn-vit-tiny-p16"
CONTAINER = "msn-training-checkpoint"
"""torch.save of msn_train.save_checkpoint's dict; the weights are ck['target_encoder'] (DDP state dict, 'module.')."""

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def original_config(
    *,
    factory: str,
    embed_dim: int,
    depth: int,
    num_heads: int,
    patch_size: int,
    img_size: int = 224,
    hidden_dim: int = 2048,
    output_dim: int = 256,
    num_proto: int = 1024,
) -> dict[str, Any]:
    """src.deit.<factory>(...) spelled out, plus the projection head msn_train.init_model adds (fc.*, not used)."""
    return {
        "factory": factory,
        "constructor": {
            "img_size": [img_size],
            "patch_size": patch_size,
            "in_chans": 3,
            "num_classes": 0,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": 4,
            "qkv_bias": True,
            "qk_scale": None,
            "drop_rate": 0.0,
            "attn_drop_rate": 0.0,
            "drop_path_rate": 0.0,
            "layer_norm_eps": 1e-6,
        },
        "projection_head": {"hidden_dim": hidden_dim, "output_dim": output_dim, "use_bn": True},
        "num_proto": num_proto,
        "preprocessing": {
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "resize": round(img_size * 256 / 224),
            "crop": img_size,
            "note": "logistic_eval: Resize(256) + CenterCrop(224) + ToTensor + Normalize (scaled to img_size); an image "
                    "already at img_size x img_size is only normalised (resize/crop are identities then)",
        },
    }


def interpolation_inputs(img_size: int, interp_size: int, seed: int) -> InputSpec:
    """One image at the model resolution, one at another resolution (position-embedding interpolation)."""
    return InputSpec(images=[
        ImageSpec(kind="synthetic", name="image", seed=seed, height=img_size, width=img_size),
        ImageSpec(kind="synthetic", name=f"image{interp_size}", seed=seed + 1, height=interp_size, width=interp_size),
    ])


def _real(variant_id: str, description: str, filename: str, hub_id: str, *, interp_size: int, **config: Any) -> Recipe:
    return Recipe(
        id=variant_id,
        family="vit_msn",
        license=LICENSE,
        origin="msn",
        description=description,
        hub_id=hub_id,
        checkpoint=CheckpointSource(kind="url", url=f"{MSN_RELEASES}/{filename}", trust="trust-on-first-use",
                                    container=CONTAINER, filename=filename),
        original_config=original_config(**config),
        hf=HFSpec(pipeline_tag=PIPELINE_TAG, model_class="ViTMSNModel", processor_class="ViTImageProcessor"),
        inputs=interpolation_inputs(224, interp_size, seed=21),
    )


# Interpolation sizes are chosen so that sqrt(npatch / N) is exact in binary floating point (scale 1.5): the original
# passes scale_factor (not size) to F.interpolate, and an inexact product floors to one patch row too few.
PUBLISHED: tuple[Recipe, ...] = (
    _real("vit-msn-small", "MSN ViT-S/16 (vits16_800ep.pth.tar)", "vits16_800ep.pth.tar", "facebook/vit-msn-small",
          interp_size=336, factory="deit_small", embed_dim=384, depth=12, num_heads=6, patch_size=16),
    _real("vit-msn-base", "MSN ViT-B/16 (vitb16_600ep.pth.tar)", "vitb16_600ep.pth.tar", "facebook/vit-msn-base",
          interp_size=336, factory="deit_base", embed_dim=768, depth=12, num_heads=12, patch_size=16),
    _real("vit-msn-large", "MSN ViT-L/16 (vitl16_600ep.pth.tar)", "vitl16_600ep.pth.tar", "facebook/vit-msn-large",
          interp_size=336, factory="deit_large", embed_dim=1024, depth=24, num_heads=16, patch_size=16),
    _real("vit-msn-base-4", "MSN ViT-B/4 (vitb4_300ep.pth.tar)", "vitb4_300ep.pth.tar", "facebook/vit-msn-base-4",
          interp_size=336, factory="deit_base_p4", embed_dim=768, depth=12, num_heads=12, patch_size=4),
    _real("vit-msn-large-7", "MSN ViT-L/7 (vitl7_200ep.pth.tar)", "vitl7_200ep.pth.tar", "facebook/vit-msn-large-7",
          interp_size=336, factory="deit_large_p7", embed_dim=1024, depth=24, num_heads=16, patch_size=7),
)

TINY = Recipe(
    id="vit-msn-tiny-random",
    family="vit_msn",
    license=LICENSE,
    origin="msn",
    description="tiny MSN ViT (deit_small geometry at width 48, 3 blocks, 64 px, patch 16) in MSN's container",
    tiny=True,
    checkpoint=CheckpointSource(kind="generate", generate=GenerateSpec(seed=31), container=CONTAINER),
    original_config=original_config(factory="deit_small", embed_dim=48, depth=3, num_heads=3, patch_size=16,
                                    img_size=64, hidden_dim=64, output_dim=32, num_proto=16),
    hf=HFSpec(pipeline_tag=PIPELINE_TAG, model_class="ViTMSNModel", processor_class="ViTImageProcessor"),
    inputs=interpolation_inputs(64, 96, seed=33),
)


TINY_P8 = Recipe(
    id="vit-msn-tiny-random-p8",
    family="vit_msn",
    license=LICENSE,
    origin="msn",
    description="tiny MSN ViT with deit_small_p8's patch 8 (width 48, 3 blocks, 64 px: an 8x8 grid interpolated to "
                "12x12 at 96 px) in MSN's container",
    tiny=True,
    checkpoint=CheckpointSource(kind="generate", generate=GenerateSpec(seed=34), container=CONTAINER),
    original_config=original_config(factory="deit_small_p8", embed_dim=48, depth=3, num_heads=3, patch_size=8,
                                    img_size=64, hidden_dim=64, output_dim=32, num_proto=16),
    hf=HFSpec(pipeline_tag=PIPELINE_TAG, model_class="ViTMSNModel", processor_class="ViTImageProcessor"),
    inputs=interpolation_inputs(64, 96, seed=35),
)


def _fixture_recipe() -> Recipe:
    """The golden fixture made by upstream facebookresearch/msn (../shared/fixtures/msn-vit-tiny-p16)."""
    config = original_config(factory="deit_small", embed_dim=48, depth=3, num_heads=3, patch_size=16, img_size=64,
                             hidden_dim=64, output_dim=32, num_proto=16)
    return Recipe(
        id="vit-msn-fixture-tiny-p16",
        family="vit_msn",
        license=LICENSE,
        origin="msn",
        description="golden fixture msn-vit-tiny-p16 (made by upstream facebookresearch/msn src/deit.py)",
        tiny=True,
        checkpoint=CheckpointSource(
            kind="fixture", fixture=FIXTURE, filename="checkpoint.pth.tar", container=CONTAINER,
            sha256="c87add54039e7f2a40e28daf4c432c1cdf48a2a46e5d2f6de24ec3ae9f1cfe97",
        ),
        original_config=config,
        hf=HFSpec(pipeline_tag=PIPELINE_TAG, model_class="ViTMSNModel", processor_class="ViTImageProcessor"),
        inputs=InputSpec(images=[
            ImageSpec(kind="fixture-file", name="image", fixture=FIXTURE, filename="image.png"),
            ImageSpec(kind="fixture-file", name="image96", fixture=FIXTURE, filename="image96.png"),
        ]),
        tolerance=TolerancePolicy(),
    )


FIXTURE_RECIPE = _fixture_recipe()
VARIANTS: tuple[Recipe, ...] = PUBLISHED + (TINY, TINY_P8, FIXTURE_RECIPE)
