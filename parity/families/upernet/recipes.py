"""`parity recipe new upernet --config my_config.py [--origin mmseg0|mmseg1]`: an mmsegmentation config file, read by
the stack's own Config class in its origin environment (origin.py's read_configuration), becomes a recipe here."""

from __future__ import annotations

import copy
from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.familyspec import DatasetClass
from parity.contracts.recipe import CheckpointSource, Recipe, TolerancePolicy
from parity.contracts.steps import RecipeSource
from parity.families.upernet.config import ARCH_SETTINGS, structure
from parity.families.upernet.spec import UperNetSpec
from parity.families.upernet.variants import CONTAINER, FULL_SIZE_DRIFT, HF, square_image

BACKBONES = {"mmseg0": "mmcls.ConvNeXt", "mmseg1": "mmpretrain.ConvNeXt"}


def _steps(pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every step of a test pipeline, the ones nested in MultiScaleFlipAug / TestTimeAug included."""
    found = []
    for step in pipeline:
        found.append(step)
        inner = step.get("transforms")
        if isinstance(inner, list):
            found += _steps([s for s in inner if isinstance(s, dict)])
    return found


def _find(pipeline: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((s for s in _steps(pipeline) if s.get("type") == kind), None)


def normalised_model(model: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """The config's model as the origin builds it for inference on one process: SyncBN -> BN (same parameters and
    statistics at inference; SyncBN needs a process group), no pretrained initialisation (the checkpoint overwrites
    every weight)."""
    model = copy.deepcopy(model)
    for head in ("decode_head", "auxiliary_head"):
        section = model.get(head)
        if isinstance(section, dict) and section.get("norm_cfg", {}).get("type") == "SyncBN":
            section["norm_cfg"]["type"] = "BN"
            notes.append(f"{head}: SyncBN -> BN (identical at inference)")
    if model["backbone"].get("init_cfg") is not None:
        model["backbone"]["init_cfg"] = None
        notes.append("backbone.init_cfg dropped (the checkpoint sets every weight)")
    model["pretrained"] = None
    return model


def new_recipe(source: RecipeSource, configuration: dict[str, Any]) -> Recipe:
    """configuration: {"stack", "model", "test_pipeline", "dataset": {"type", "classes", "reduce_zero_label"},
    "notes"}, as origin.py's read_configuration reads it with the stack's Config."""
    stack = configuration["stack"]
    notes = configuration.setdefault("notes", [])
    model = normalised_model(configuration["model"], notes)
    pipeline = configuration["test_pipeline"]
    if model.get("type") != "EncoderDecoder" or model["backbone"].get("type") != BACKBONES[stack] \
            or model["decode_head"].get("type") != "UPerHead":
        raise ParityError(f"{source.config}: not an EncoderDecoder with a {BACKBONES[stack]} backbone and a UPerHead "
                          f"(found {model.get('type')}, {model['backbone'].get('type')}, "
                          f"{model['decode_head'].get('type')}); with an mmseg {'1' if stack == 'mmseg0' else '0'}.x "
                          f"config use --origin {'mmseg1' if stack == 'mmseg0' else 'mmseg0'}")
    if stack == "mmseg0":
        normalize, resize = _find(pipeline, "Normalize"), _find(pipeline, "MultiScaleFlipAug")
        if normalize is None or resize is None:
            raise ParityError(f"{source.config}: the test pipeline has no MultiScaleFlipAug with Normalize")
        norm = {"mean": list(normalize["mean"]), "std": list(normalize["std"]), "to_rgb": bool(normalize["to_rgb"])}
        scale = resize.get("img_scale")
    else:
        preprocessor, resize = model.get("data_preprocessor") or {}, _find(pipeline, "Resize")
        if "mean" not in preprocessor or resize is None:
            raise ParityError(f"{source.config}: no data_preprocessor mean/std or no Resize in the test pipeline")
        norm = {"mean": list(preprocessor["mean"]), "std": list(preprocessor["std"]),
                "to_rgb": bool(preprocessor.get("bgr_to_rgb", False))}
        scale = resize.get("scale")
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(v, int) for v in scale)):
        raise ParityError(f"{source.config}: one test scale (w, h) expected, found {scale!r} (multi-scale testing "
                          "has no transformers equivalent)")
    num_classes = model["decode_head"]["num_classes"]
    dataset = configuration.get("dataset") or {}
    spec = UperNetSpec(classes=_classes(source, dataset, num_classes, notes),
                       reduce_zero_label=bool(dataset.get("reduce_zero_label", False)))
    side = min(scale)
    test_cfg = model.get("test_cfg") or {}
    crop = test_cfg.get("crop_size")
    if test_cfg.get("mode") == "slide" and crop is not None and min(crop) < side:
        raise ParityError(f"{source.config}: slide inference with crop {list(crop)} on the {side}x{side} test image "
                          "runs several windows; transformers' UperNet has no sliding window")
    name = model["backbone"]["arch"]
    full_size = isinstance(name, str) and name in ARCH_SETTINGS
    recipe = Recipe(
        id=source.id,
        family="upernet",
        origin=stack,
        description=source.description or (f"UperNet + ConvNeXt-{name if isinstance(name, str) else 'custom'} "
                                           f"from {source.config.name if source.config else 'an mmseg config'}, "
                                           f"{num_classes} classes"),
        checkpoint=CheckpointSource(kind="file", container=CONTAINER),
        original_config={stack: {"model": model, "test_pipeline": pipeline}, "img_norm_cfg": norm,
                         "img_scale": list(scale)},
        hf=HF,
        inputs=square_image(side // 2 if side >= 64 else side, seed=21),
        spec=spec,
        tolerance=FULL_SIZE_DRIFT if full_size else TolerancePolicy(),
    )
    structure(recipe)
    return recipe


def _classes(source: RecipeSource, dataset: dict[str, Any], num_classes: int, notes: list[str]) -> list[DatasetClass]:
    if source.classes is not None:
        if len(source.classes) != num_classes:
            raise ParityError(f"--classes lists {len(source.classes)} classes for num_classes={num_classes}")
        return list(source.classes)
    names = list(dataset.get("classes") or [])
    if len(names) == num_classes:
        return [DatasetClass(name=str(n)) for n in names]
    notes.append(f"the config's dataset {dataset.get('type')!r} names {len(names)} classes for num_classes="
                 f"{num_classes}: labels are numbered (pass --classes FILE to name them)")
    return []
