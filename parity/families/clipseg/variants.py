"""CLIPSeg variants as data: CLIPDensePredT arguments, the two published artifacts, inputs, tolerances.

The real release is two artifacts: OpenAI's CLIP ViT-B/16 (a TorchScript archive that clip.load reads; fp16 weights)
and a decoder file holding only the trained parameters (TrainingLogger.save_weights(only_trainable=True)), loaded
with strict=False on top of CLIP. The recipe's checkpoint is the decoder file; the CLIP file is an asset (the recipe's
spec.tower.source(): sha256-pinned, URLs in order, or `--asset clip-vit-b16=PATH`) that the host resolves and hands
to the origin (clip.load would otherwise download it, from a URL that has returned 404 since late 2025). A single "combined" file (clip_model.* + decoder keys,
optionally with the model.* aliases, the layout HF's convert_clipseg script reads) is accepted as well.
"""

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
from parity.families.clipseg.spec import ClipSegSpec, ClipTower

LICENSE = None
"""timojl/clipseg's MIT license states that it does not apply to the model weights."""
PIPELINE_TAG = "image-segmentation"
"""The Hub task of the port, for the published model card."""

DECODERS = "https://owncloud.gwdg.de/index.php/s/ioHbRzFx6th32hn/download?path=%2F&files="
CLIP_B16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
CLIP_B16_URL = f"https://openaipublic.azureedge.net/clip/models/{CLIP_B16_SHA256}/ViT-B-16.pt"
"""The URL in clip.py (openai/CLIP#516: 404 since late 2025)."""
CLIP_B16_BLOB = f"https://openaipublic.blob.core.windows.net/clip/models/{CLIP_B16_SHA256}/ViT-B-16.pt"
"""The Azure storage account behind that CDN name (unverified from here; the sha256 decides)."""
OPENAI_TOWER = ClipTower(kind="openai", url=CLIP_B16_URL, mirrors=[CLIP_B16_BLOB], sha256=CLIP_B16_SHA256)
TOWER_FIXTURE = "clipseg-tiny-clip-vit-b16"
CONTAINER = "clipseg-decoder-or-combined"

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROMPTS = ["a glass", "something to fill", "wood"]


def clip_config(*, vision_layers: int = 12, transformer_width: int = 512, transformer_layers: int = 12
                ) -> dict[str, Any]:
    """clip.model.build_model's derived arguments for a ViT-B/16 tower (vision width 768 / embed 512 are fixed by
    CLIPSeg: Linear(768, rd), view(1, 768, 14, 14), film Linear(512, rd))."""
    return {
        "embed_dim": 512,
        "image_resolution": 224,
        "vision_layers": vision_layers,
        "vision_width": 768,
        "vision_patch_size": 16,
        "context_length": 77,
        "vocab_size": 49408,
        "transformer_width": transformer_width,
        "transformer_heads": transformer_width // 64,
        "transformer_layers": transformer_layers,
        "layer_norm_eps": 1e-5,
    }


def decoder_config(*, reduce_dim: int, complex_trans_conv: bool, extract_layers: list[int]) -> dict[str, Any]:
    """CLIPDensePredT's constructor arguments (as the README / Quickstart builds it)."""
    return {
        "version": "ViT-B/16",
        "extract_layers": extract_layers,
        "cond_layer": 0,
        "reduce_dim": reduce_dim,
        "n_heads": 4,
        "prompt": "fixed",
        "extra_blocks": 0,
        "reduce_cond": None,
        "fix_shift": False,
        "learn_trans_conv_only": False,
        "limit_to_clip_only": False,
        "upsample": False,
        "add_calibration": False,
        "rev_activations": False,
        "trans_conv": None,
        "n_tokens": None,
        "complex_trans_conv": complex_trans_conv,
    }


def original_config(clip: dict[str, Any], decoder: dict[str, Any] | None, *, size: int, mean: list[float],
                    std: list[float]) -> dict[str, Any]:
    return {"clip": clip, "decoder": decoder, "preprocessing": {"size": size, "mean": mean, "std": std}}


def synthetic_images(size: int, seed: int, count: int) -> list[ImageSpec]:
    names = ["image"] + [f"image_{i}" for i in range(1, count)]
    return [ImageSpec(kind="synthetic", name=n, seed=seed + i, height=size, width=size) for i, n in enumerate(names)]


def _real(variant_id: str, description: str, filename: str, hub_id: str, *, reduce_dim: int, refined: bool) -> Recipe:
    return Recipe(
        id=variant_id,
        family="clipseg",
        license=LICENSE,
        origin="clipseg",
        description=description,
        hub_id=hub_id,
        checkpoint=CheckpointSource(kind="url", url=f"{DECODERS}{filename}", trust="trust-on-first-use",
                                    container=CONTAINER, filename=filename),
        original_config=original_config(
            clip_config(), decoder_config(reduce_dim=reduce_dim, complex_trans_conv=refined, extract_layers=[3, 6, 9]),
            size=352, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        hf=HFSpec(pipeline_tag=PIPELINE_TAG, model_class="CLIPSegForImageSegmentation", processor_class="CLIPSegProcessor"),
        inputs=InputSpec(images=synthetic_images(352, 41, 3)),
        spec=ClipSegSpec(texts=PROMPTS, tower=OPENAI_TOWER),
    )


PUBLISHED: tuple[Recipe, ...] = (
    _real("clipseg-rd16", "CLIPSeg rd16 (rd16-uni.pth on CLIP ViT-B/16)", "rd16-uni.pth", "CIDAS/clipseg-rd16",
          reduce_dim=16, refined=False),
    _real("clipseg-rd64", "CLIPSeg rd64 (rd64-uni.pth on CLIP ViT-B/16)", "rd64-uni.pth", "CIDAS/clipseg-rd64",
          reduce_dim=64, refined=False),
    _real("clipseg-rd64-refined", "CLIPSeg rd64 refined (rd64-uni-refined.pth, complex transposed conv)",
          "rd64-uni-refined.pth", "CIDAS/clipseg-rd64-refined", reduce_dim=64, refined=True),
)

TINY = Recipe(
    id="clipseg-tiny-random",
    family="clipseg",
    license=LICENSE,
    origin="clipseg",
    description="tiny CLIPSeg (3-layer ViT-B/16 tower, 2-layer text width 128, rd16 refined head) in the combined layout",
    tiny=True,
    checkpoint=CheckpointSource(kind="generate", generate=GenerateSpec(seed=51), container=CONTAINER),
    original_config=original_config(
        clip_config(vision_layers=3, transformer_width=128, transformer_layers=2),
        decoder_config(reduce_dim=16, complex_trans_conv=True, extract_layers=[1, 2]),
        size=352, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    hf=HFSpec(pipeline_tag=PIPELINE_TAG, model_class="CLIPSegForImageSegmentation", processor_class="CLIPSegProcessor"),
    inputs=InputSpec(images=synthetic_images(352, 53, 3)),
    spec=ClipSegSpec(texts=["a jar", "wood", "a photo of a cat"]),
)

TINY_LAYERS = Recipe(
    id="clipseg-tiny-random-layers",
    family="clipseg",
    license=LICENSE,
    origin="clipseg",
    description="tiny CLIPSeg whose decoder reads vision layers 2 and 4 of 6 (extract_layers not starting at 1, so "
                "the returned activations are layers 0, 2, 4), FiLM after the second block, rd16",
    tiny=True,
    checkpoint=CheckpointSource(kind="generate", generate=GenerateSpec(seed=52), container=CONTAINER),
    original_config=original_config(
        clip_config(vision_layers=6, transformer_width=128, transformer_layers=2),
        {**decoder_config(reduce_dim=16, complex_trans_conv=False, extract_layers=[2, 4]), "cond_layer": 1},
        size=352, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    hf=HFSpec(pipeline_tag=PIPELINE_TAG, model_class="CLIPSegForImageSegmentation", processor_class="CLIPSegProcessor"),
    inputs=InputSpec(images=synthetic_images(352, 54, 2)),
    spec=ClipSegSpec(texts=["a jar", "wood"]),
)

FIXTURE_TOWER = ClipTower(kind="fixture", fixture=TOWER_FIXTURE, filename="clip_vit_b16_tiny.pt",
                          sha256="a3227b044d6bf6ed606fe481044f278bbddd083e25d9f2895cd6a8473314cb5f")
TINY_TOWER = dict(vision_layers=3, transformer_width=128, transformer_layers=2)


def _fixture(name: str, recipe_id: str, filename: str, sha256: str, decoder: dict[str, Any] | None, texts: list[str],
             image_count: int, *, size: int, mean: list[float], std: list[float], model_class: str) -> Recipe:
    names = ["image"] + [f"image_{i}" for i in range(1, image_count)]
    return Recipe(
        id=recipe_id,
        family="clipseg",
        license=LICENSE,
        origin="clipseg",
        description=f"golden fixture {name} (made by upstream {'timojl/clipseg' if decoder else 'openai/CLIP'})",
        tiny=True,
        checkpoint=CheckpointSource(kind="fixture", fixture=name, filename=filename, container=CONTAINER,
                                    sha256=sha256),
        original_config=original_config(clip_config(**TINY_TOWER), decoder, size=size, mean=mean, std=std),
        hf=HFSpec(pipeline_tag=PIPELINE_TAG, model_class=model_class, processor_class="CLIPSegProcessor"),
        inputs=InputSpec(images=[ImageSpec(kind="fixture-file", name=n, fixture=name, filename=f"{n}.png")
                                 for n in names]),
        spec=ClipSegSpec(texts=texts, tower=FIXTURE_TOWER if decoder else ClipTower(kind="combined")),
        tolerance=TolerancePolicy(),
    )


FIXTURE_RECIPES: dict[str, Recipe] = {
    TOWER_FIXTURE: _fixture(
        TOWER_FIXTURE, "clipseg-fixture-clip-tower", "clip_vit_b16_tiny.pt", FIXTURE_TOWER.sha256, None, PROMPTS, 1,
        size=224, mean=CLIP_MEAN, std=CLIP_STD, model_class="CLIPSegModel"),
    "clipseg-tiny-rd16": _fixture(
        "clipseg-tiny-rd16", "clipseg-fixture-tiny-rd16", "clipseg_decoder.pth",
        "f9c5a0ab2d3127ce0c3e368bf18be60803b93267d3381376bb93f4f0955f41f1",
        decoder_config(reduce_dim=16, complex_trans_conv=False, extract_layers=[1, 2]), PROMPTS, 3,
        size=352, mean=IMAGENET_MEAN, std=IMAGENET_STD, model_class="CLIPSegForImageSegmentation"),
    "clipseg-tiny-rd64-refined": _fixture(
        "clipseg-tiny-rd64-refined", "clipseg-fixture-tiny-rd64-refined", "clipseg_decoder.pth",
        "30d5fd9a4c7bbd762899aed7a2dc39397da31226a6704834f4c9bd0389ec1125",
        decoder_config(reduce_dim=64, complex_trans_conv=True, extract_layers=[1, 2]),
        ["a jar", "wood", "a photo of a cat"], 3,
        size=352, mean=IMAGENET_MEAN, std=IMAGENET_STD, model_class="CLIPSegForImageSegmentation"),
}

VARIANTS: tuple[Recipe, ...] = PUBLISHED + (TINY, TINY_LAYERS) + tuple(FIXTURE_RECIPES.values())
