"""`parity recipe new mask2former --config my.yaml [--arg dataset=NAME] [--classes classes.yaml]`: a detectron2 /
Mask2Former yaml, merged by detectron2's own CfgNode in the detectron2 origin (origin.py's read_configuration), plus
the dataset metadata detectron2 keeps beside it (MetadataCatalog) or your class list, becomes a recipe here. The
mapping from the merged config (a dict, as `cfg.dump()` writes it) is pure data, tested on the host."""

from __future__ import annotations

import copy
from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.familyspec import DatasetClass
from parity.contracts.recipe import CheckpointSource, ImageSpec, InputSpec, Recipe
from parity.contracts.steps import RecipeSource
from parity.families.mask2former.config import hf_values
from parity.families.mask2former.spec import Mask2FormerSpec
from parity.families.mask2former.variants import HF

WHOLE_MODEL_SECTIONS = ("SWIN", "SEM_SEG_HEAD", "MASK_FORMER")
"""MODEL sections kept whole: they define the architecture and its post-processing."""


def model_defining(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a merged detectron2 config that defines the model, its test-time input pipeline and its
    post-processing (what a recipe's original_config holds; the origin merges it onto detectron2's defaults)."""
    model = cfg["MODEL"]
    missing = [s for s in WHOLE_MODEL_SECTIONS if s not in model]
    if missing:
        raise ParityError(f"the config has no MODEL.{missing[0]}: not a Mask2Former (Swin) config")
    return {
        "MODEL": {
            "META_ARCHITECTURE": model["META_ARCHITECTURE"],
            "BACKBONE": {"NAME": model["BACKBONE"]["NAME"]},
            "PIXEL_MEAN": list(model["PIXEL_MEAN"]),
            "PIXEL_STD": list(model["PIXEL_STD"]),
            **{section: copy.deepcopy(model[section]) for section in WHOLE_MODEL_SECTIONS},
        },
        "INPUT": {key: cfg["INPUT"][key] for key in ("FORMAT", "MIN_SIZE_TEST", "MAX_SIZE_TEST")},
        "DATASETS": {"TRAIN": list(cfg["DATASETS"]["TRAIN"]), "TEST": list(cfg["DATASETS"]["TEST"])},
        "TEST": {"DETECTIONS_PER_IMAGE": cfg["TEST"]["DETECTIONS_PER_IMAGE"]},
    }


def classes_from_metadata(metadata: dict[str, Any], num_classes: int) -> list[DatasetClass]:
    """A detectron2 MetadataCatalog entry (as data) -> one DatasetClass per contiguous id. Panoptic and semantic
    datasets list every class in stuff_classes (things included), instance datasets only things; the
    *_dataset_id_to_contiguous_id maps give the thing/stuff split and the dataset's own ids. A model trained on the
    first N classes (NUM_CLASSES < the dataset's) takes the first N."""
    things_map = {int(k): v for k, v in (metadata.get("thing_dataset_id_to_contiguous_id") or {}).items()}
    stuff_map = {int(k): v for k, v in (metadata.get("stuff_dataset_id_to_contiguous_id") or {}).items()}
    stuff, things = list(metadata.get("stuff_classes") or []), list(metadata.get("thing_classes") or [])
    if len(stuff) >= num_classes and (len(stuff) > len(things) or not things):
        names, ids = stuff, stuff_map
        isthing = (lambda i: i in set(things_map.values())) if things_map else (lambda i: None)
    elif len(things) >= num_classes:
        names, ids, isthing = things, things_map, (lambda i: True)
    else:
        raise ParityError(f"the dataset metadata names {max(len(stuff), len(things))} classes, the config has "
                          f"NUM_CLASSES={num_classes}: pass --classes FILE")
    dataset_ids = {contiguous: dataset_id for dataset_id, contiguous in ids.items()}
    return [DatasetClass(name=str(names[i]), isthing=isthing(i), dataset_id=dataset_ids.get(i))
            for i in range(num_classes)]


def new_recipe(source: RecipeSource, configuration: dict[str, Any]) -> Recipe:
    """configuration: {"config": the merged config as a dict, "dataset": its name, "metadata": MetadataCatalog entry
    as data or None, "notes"}, as origin.py's read_configuration reads them with detectron2."""
    original = model_defining(configuration["config"])
    hf_values(original)
    notes = configuration.setdefault("notes", [])
    num_classes = original["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"]
    test = original["MODEL"]["MASK_FORMER"]["TEST"]
    if source.classes is not None:
        if len(source.classes) != num_classes:
            raise ParityError(f"--classes lists {len(source.classes)} classes for NUM_CLASSES={num_classes}")
        classes = list(source.classes)
    elif configuration.get("metadata"):
        classes = classes_from_metadata(configuration["metadata"], num_classes)
    else:
        classes = []
        notes.append(f"no metadata registered for {configuration.get('dataset')!r}: labels are numbered (pass "
                     "--classes FILE to name them and give the thing/stuff split)")
    spec = Mask2FormerSpec(dataset=configuration.get("dataset"), classes=classes,
                           reduce_labels=bool(configuration.get("reduce_labels", False)))
    if (test["PANOPTIC_ON"] or test["INSTANCE_ON"]) and spec.thing_ids() is None:
        raise ParityError("the config turns on panoptic/instance inference, which needs the thing/stuff split: pass "
                          "--classes FILE with isthing for every class, or --arg dataset=NAME of a registered dataset")
    height = min(480, original["INPUT"]["MIN_SIZE_TEST"] * 3 // 4)
    swin = original["MODEL"]["SWIN"]
    tasks = [t for t, on in (("semantic", test["SEMANTIC_ON"]), ("instance", test["INSTANCE_ON"]),
                             ("panoptic", test["PANOPTIC_ON"])) if on]
    return Recipe(
        id=source.id,
        family="mask2former",
        origin=source.origin,
        description=source.description or (f"Mask2Former Swin (embed {swin['EMBED_DIM']}, depths {swin['DEPTHS']}) "
                                           f"{'/'.join(tasks)}, {num_classes} classes"
                                           + (f", from {source.config.name}" if source.config else "")),
        checkpoint=CheckpointSource(kind="file", container="detectron2-pkl"),
        original_config=original,
        hf=HF,
        inputs=InputSpec(images=[ImageSpec(kind="synthetic", seed=7, height=height, width=height * 4 // 3)]),
        spec=spec,
    )
