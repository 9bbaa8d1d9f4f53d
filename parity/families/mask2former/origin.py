"""Mask2Former origin side: runs the ORIGINAL detectron2 + facebookresearch/Mask2Former code (Docker image
images/detectron2; the pair is on no package registry, so there is no local environment for it).

Builds the model from the upstream yaml named in the recipe plus the recipe's values, loads model-zoo `.pkl` files
with detectron2's DetectionCheckpointer, runs detectron2's test-time preprocessing, and records raw predictions with
forward hooks and pre-hooks: in eval mode MaskFormer.forward returns only post-processed results, and the pixel
decoder's forward is bypassed (forward_features), so the predictor's inputs carry its features. Upstream code is
never modified. On CPU, MSDeformAttn falls back to upstream's pure-PyTorch ms_deform_attn_core_pytorch; every dump
records which of the two actually ran (EnvironmentRecord.code_paths).

Upstream imports stay inside functions: this module is imported by the torch-only fixture importer too.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parity.contracts.errors import ParityError
from parity.contracts.recipe import Recipe
from parity.origin import codepaths
from parity.origin.capture import CaptureLog
from parity.origin.redraw import Site, redraw

DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
MASK2FORMER_COMMIT = "9b0651c6c1d5b3af2e6da0589b719c514ec0d69a"
UPSTREAM = (f"facebookresearch/Mask2Former@{MASK2FORMER_COMMIT} on facebookresearch/detectron2@{DETECTRON2_COMMIT}")
PACKAGES = ("detectron2", "fvcore", "torch", "torchvision", "numpy", "pillow", "opencv-python-headless")
MASK2FORMER_ROOT = Path(os.environ.get("MASK2FORMER_ROOT", "/opt/Mask2Former"))
SECTIONS = ("MODEL", "INPUT", "DATASETS", "TEST")
"""The detectron2 config sections a recipe's original_config holds."""


# ----------------------------------------------------------------------------------------------------------------------
# configuration and model


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9
    return a == b


def default_cfg():
    """get_cfg + add_deeplab_config + add_maskformer2_config: detectron2's defaults with Mask2Former's keys."""
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config
    from mask2former import add_maskformer2_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    return cfg


def build_cfg(recipe: Recipe, device: str = "cpu"):
    """The defaults, the upstream yaml named by spec.config_file (with its _BASE_ chain) when there is one, then the
    recipe's values. For published variants the recipe must agree with the yaml; tiny ones list their overrides; a
    recipe without config_file (`parity recipe new`) carries the whole merged config and is merged onto the defaults."""
    cfg = default_cfg()
    config_name = recipe.spec.config_file
    if config_name is not None:
        config_file = MASK2FORMER_ROOT / config_name
        if not config_file.is_file():
            raise ParityError(f"upstream config {config_file} not found (MASK2FORMER_ROOT={MASK2FORMER_ROOT})")
        cfg.merge_from_file(str(config_file))
    wanted = _leaves({k: v for k, v in recipe.original_config.items() if k in SECTIONS})
    overrides = []
    for key, value in wanted.items():
        node, leaf = cfg, key.split(".")
        try:
            for part in leaf[:-1]:
                node = node[part]
            current = node[leaf[-1]]
        except KeyError:
            raise ParityError(f"recipe {recipe.id}: original_config key {key} is not a detectron2 / Mask2Former "
                              "config key") from None
        if not _same(current, value):
            overrides.append((key, current, value))
    if overrides and config_name is not None and not recipe.tiny:
        key, theirs, ours = overrides[0]
        raise ParityError(f"recipe {recipe.id} disagrees with {config_name}: {key} is "
                          f"{theirs!r} upstream, {ours!r} in the recipe ({len(overrides)} differences)")
    flat = []
    for key, _theirs, ours in overrides:
        flat += [key, tuple(ours) if isinstance(ours, list) else ours]
    cfg.merge_from_list(flat + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    cfg.freeze()
    _check_thing_ids(recipe, cfg)
    return cfg


def dataset_metadata(name: str) -> dict[str, Any] | None:
    """detectron2's MetadataCatalog entry of a registered dataset as data (class names, thing/stuff id maps), or None
    when nothing is registered under that name. `import mask2former` registers its datasets' metadata."""
    import mask2former  # noqa: F401  (registers ADE20K / COCO panoptic / Mapillary metadata)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list() and name not in MetadataCatalog.list():
        return None
    meta = MetadataCatalog.get(name)
    keys = ("thing_classes", "stuff_classes", "thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id")
    found = {key: getattr(meta, key) for key in keys if hasattr(meta, key)}
    return {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in found.items()} or None


def read_configuration(source) -> dict[str, Any]:
    """`parity recipe new mask2former --config FILE.yaml`: detectron2's defaults + Mask2Former's keys, the yaml merged
    by detectron2's CfgNode (its _BASE_ chain included), dumped as data; and the metadata detectron2 registers for the
    dataset (`--arg dataset=NAME`, default DATASETS.TRAIN[0])."""
    import yaml

    arguments = dict(source.arguments)
    unknown = sorted(set(arguments) - {"dataset", "reduce_labels"})
    if unknown:
        raise ParityError(f"mask2former --arg {unknown[0]}: not an argument (dataset, reduce_labels)")
    if source.config is None:
        raise ParityError("a Mask2Former recipe is made from a detectron2 / Mask2Former yaml: pass --config FILE")
    cfg = default_cfg()
    try:
        cfg.merge_from_file(str(source.config))
    except Exception as exc:  # noqa: BLE001 (yacs raises KeyError / ValueError / AssertionError for bad configs)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParityError(f"{source.config} is not a detectron2 config detectron2 can merge: {reason}") from None
    data = yaml.safe_load(cfg.dump())
    dataset = arguments.get("dataset") or (data["DATASETS"]["TRAIN"] or [None])[0]
    notes = []
    metadata = dataset_metadata(dataset) if dataset else None
    if dataset and metadata is None:
        notes.append(f"dataset {dataset!r} is not registered in detectron2 / Mask2Former here")
    return {"config": data, "dataset": dataset, "metadata": metadata,
            "reduce_labels": bool(arguments.get("reduce_labels", False)), "notes": notes}


def _check_thing_ids(recipe: Recipe, cfg) -> None:
    """The recipe's thing classes (used by the port side's post-processing) must be what MaskFormer reads from the
    dataset metadata (thing_dataset_id_to_contiguous_id of DATASETS.TRAIN[0]), restricted to NUM_CLASSES."""
    ours = recipe.spec.thing_ids()
    meta = dataset_metadata(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
    if ours is None or meta is None or "thing_dataset_id_to_contiguous_id" not in meta:
        return
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    theirs = sorted(i for i in meta["thing_dataset_id_to_contiguous_id"].values() if i < num_classes)
    if sorted(ours) != theirs:
        raise ParityError(f"recipe {recipe.id}: thing classes {sorted(ours)[:8]}... differ from the metadata of "
                          f"{cfg.DATASETS.TRAIN[0]} ({theirs[:8]}...)")


def register_metadata(recipe: Recipe, cfg) -> None:
    """A dataset of one's own is registered by one's training script; detectron2 knows nothing of it here. MaskFormer
    reads its metadata (thing_dataset_id_to_contiguous_id for panoptic and instance inference), so the recipe's
    classes are registered under DATASETS.TRAIN[0] the way detectron2's panoptic registrations do: stuff_classes lists
    every class, thing_classes the things, both id maps keyed by the dataset's own ids. Registered datasets are left
    as detectron2 / Mask2Former define them (and checked against the recipe)."""
    from detectron2.data import MetadataCatalog

    name = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
    if name is None or not recipe.spec.classes or dataset_metadata(name) is not None:
        return
    classes = recipe.spec.classes
    ids = [c.dataset_id if c.dataset_id is not None else i for i, c in enumerate(classes)]
    things = [i for i, c in enumerate(classes) if c.isthing]
    MetadataCatalog.get(name).set(
        stuff_classes=[c.name for c in classes], thing_classes=[classes[i].name for i in things],
        stuff_dataset_id_to_contiguous_id={ids[i]: i for i in range(len(classes))},
        thing_dataset_id_to_contiguous_id={ids[i]: i for i in things})


def build_original(recipe: Recipe, device: str = "cpu") -> nn.Module:
    from detectron2.modeling import build_model

    cfg = build_cfg(recipe, device)
    register_metadata(recipe, cfg)
    model = build_model(cfg)
    return model.eval()


def load_original(recipe: Recipe, checkpoint: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """DetectionCheckpointer(model).load(path), as upstream's train_net/demo do; missing or unexpected keys fail."""
    from detectron2.checkpoint import DetectionCheckpointer

    model = build_original(recipe)
    checkpointer = DetectionCheckpointer(model)
    try:
        checkpoint_data = checkpointer._load_file(str(checkpoint))
    except FileNotFoundError:
        raise ParityError(f"checkpoint not found: {checkpoint}") from None
    except Exception as exc:  # noqa: BLE001 -- pickle raises many types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParityError(f"checkpoint {checkpoint} is not a readable detectron2 file (truncated or damaged?): "
                          f"{reason}") from None
    incompatible = checkpointer._load_model(checkpoint_data)
    problems = []
    if incompatible.missing_keys:
        problems.append(f"missing keys {incompatible.missing_keys[:3]} ({len(incompatible.missing_keys)})")
    unexpected = [k for k in incompatible.unexpected_keys]
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]} ({len(unexpected)})")
    if incompatible.incorrect_shapes:
        problems.append(f"incorrect shapes {incompatible.incorrect_shapes[:3]}")
    if problems:
        raise ParityError(f"checkpoint {checkpoint} does not fit the original model: {'; '.join(problems)}")
    state = model.state_dict()
    return model, state


def fixture_state_dict(recipe: Recipe, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Golden fixtures ship state_dict.safetensors (the upstream loader's result); the importer reads that."""
    raise ParityError(f"{checkpoint.parent.name} has no state_dict.safetensors; its .pkl needs the detectron2 image")


# ----------------------------------------------------------------------------------------------------------------------
# tiny checkpoints made by the original code


def redraw_rule(site: Site) -> torch.Tensor:
    """Scales for re-drawing every floating parameter and persistent float buffer (no LayerNorm left at 1, no bias
    at 0, no zero sampling offsets), following the fixtures' published rules so tiny variants behave like them."""
    name, leaf, tensor, normal = site.name, site.leaf, site.tensor, site.normal
    if "norm" in name and leaf == "weight" and tensor.dim() == 1:
        return 1 + 0.1 * normal
    if "relative_position_bias_table" in name:
        return 0.1 * normal
    if name.endswith("pixel_decoder.transformer.level_embed"):
        return 0.5 * normal
    if "sampling_offsets" in name:
        return (0.05 if leaf == "weight" else 1.0) * normal
    if leaf == "in_proj_weight":
        value = normal / tensor.shape[1] ** 0.5
        value[: 2 * (tensor.shape[0] // 3)] *= 2.0
        return value
    if "out_proj.weight" in name and "multihead" in name or name.endswith("self_attn.out_proj.weight"):
        return 0.5 * normal / tensor.shape[1] ** 0.5
    if any(k in name for k in ("query_feat", "query_embed", "predictor.level_embed")):
        return 0.5 * normal
    if "class_embed.weight" in name:
        return 4.0 * normal / tensor.shape[1] ** 0.5
    if tensor.dim() >= 2:
        return normal / tensor[0].numel() ** 0.5
    return 0.05 * normal


def generate_checkpoint(recipe: Recipe, path: Path) -> None:
    """A model-zoo style `.pkl` ({"model": OrderedDict of numpy arrays with _metadata, "__author__"}) written from a
    model built by the original code. `_metadata` is kept: without it MaskFormerHead treats the file as an old
    MaskFormer checkpoint and renames the pixel-decoder keys."""
    assert recipe.checkpoint.generate is not None
    torch.manual_seed(recipe.checkpoint.generate.seed)
    model = build_original(recipe)
    redraw(model, recipe.checkpoint.generate.seed + 1, redraw_rule, skip=lambda name: name.startswith("criterion."))
    state = model.state_dict()
    arrays = collections.OrderedDict((k, v.detach().cpu().numpy()) for k, v in state.items())
    arrays._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    with open(path, "wb") as fh:
        pickle.dump({"model": arrays, "__author__": f"parity tiny random {recipe.id} (not a trained model)"}, fh,
                    protocol=3)


# ----------------------------------------------------------------------------------------------------------------------
# captures


def _preprocess(cfg, raw: np.ndarray) -> torch.Tensor:
    """DatasetMapper(cfg, is_train=False): ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) on the RGB uint8 image."""
    from detectron2.data import transforms as T

    if cfg.INPUT.FORMAT != "RGB":
        raise ParityError(f"INPUT.FORMAT {cfg.INPUT.FORMAT} not supported (raw images are RGB)")
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(raw).apply_image(raw)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


DEFORM_ATTN = "mask2former.ms_deform_attn"
"""codepaths name of the deformable-attention implementation that ran."""


@contextlib.contextmanager
def deform_attn_path():
    """Record which deformable attention upstream's MSDeformAttn.forward ran: its compiled op
    (MSDeformAttnFunction.apply) or, when that raises (CPU tensors, a CPU-only op build), its pure-PyTorch
    ms_deform_attn_core_pytorch. forward looks both names up in its module's globals at call time, so counting
    wrappers placed there see every call and change nothing that runs."""
    from mask2former.modeling.pixel_decoder.ops.modules import ms_deform_attn as module

    compiled, fallback = module.MSDeformAttnFunction, module.ms_deform_attn_core_pytorch
    counts = {"compiled": 0, "fallback": 0}
    raised: list[str] = []

    class CountedFunction:
        @staticmethod
        def apply(*args):
            try:
                output = compiled.apply(*args)
            except Exception as exc:
                raised.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                raise
            counts["compiled"] += 1
            return output

    def counted_fallback(*args, **kwargs):
        counts["fallback"] += 1
        return fallback(*args, **kwargs)

    module.MSDeformAttnFunction, module.ms_deform_attn_core_pytorch = CountedFunction, counted_fallback
    try:
        yield
    finally:
        module.MSDeformAttnFunction, module.ms_deform_attn_core_pytorch = compiled, fallback
        ran = []
        if counts["compiled"]:
            ran.append(f"compiled op MultiScaleDeformableAttention ({counts['compiled']} calls)")
        if counts["fallback"]:
            why = f"; the compiled op raised: {raised[0][:120]}" if raised else ""
            ran.append(f"upstream's PyTorch fallback ms_deform_attn_core_pytorch ({counts['fallback']} calls{why})")
        codepaths.record(DEFORM_ATTN, " and ".join(ran) or "not called")


def run_captures(recipe: Recipe, model: nn.Module, images: dict[str, np.ndarray], device: str
                 ) -> tuple[CaptureLog, CaptureLog]:
    cfg = build_cfg(recipe, device)
    model = model.to(device)
    raw = images["image"]
    image = _preprocess(cfg, raw)
    inputs, refs = CaptureLog(), CaptureLog()
    inputs.add("image", image, meaning="DatasetMapper(is_train=False): CHW RGB uint8 after ResizeShortestEdge")
    inputs.add("image_png_hwc", torch.as_tensor(raw), meaning="raw pixels (HWC RGB)")
    handles = []

    def add(name: str, tensor: torch.Tensor, origin: str, layout: str | None = None) -> None:
        refs.add(name, tensor.float(), module=origin, layout=layout)

    def backbone_pre(_m, args):
        inputs.add("pixel_values", args[0], meaning="normalised, zero-padded batch fed to model.backbone")
        add("backbone.input", args[0], "forward_pre_hook on model.backbone: args[0]", "NCHW")

    def hook(name: str, layout: str, pick=lambda out: out):
        def fn(_m, _args, output):
            add(name, pick(output), f"forward_hook on model.{name}", layout)
        return fn

    backbone = model.backbone
    handles.append(backbone.register_forward_pre_hook(backbone_pre))
    handles.append(backbone.patch_embed.register_forward_hook(hook("backbone.patch_embed", "NCHW")))
    for i, layer in enumerate(backbone.layers):
        handles.append(layer.register_forward_hook(hook(f"backbone.layers.{i}.x_out", "(B, H*W, C)", lambda o: o[0])))

    def backbone_out(_m, _args, output):
        for key in sorted(output):
            add(f"backbone.{key}", output[key], f"forward_hook on model.backbone: output[{key!r}]", "NCHW")

    handles.append(backbone.register_forward_hook(backbone_out))
    decoder = model.sem_seg_head.pixel_decoder
    for i, proj in enumerate(decoder.input_proj):
        handles.append(proj.register_forward_hook(hook(f"sem_seg_head.pixel_decoder.input_proj.{i}", "NCHW")))
    for i, layer in enumerate(decoder.transformer.encoder.layers):
        handles.append(layer.register_forward_hook(
            hook(f"sem_seg_head.pixel_decoder.transformer.encoder.layers.{i}", "(B, sum H_l*W_l, C)")))
    predictor = model.sem_seg_head.predictor

    def predictor_pre(_m, args):
        for i, feature in enumerate(args[0]):
            add(f"sem_seg_head.pixel_decoder.multi_scale_features.{i}", feature,
                f"forward_pre_hook on model.sem_seg_head.predictor: args[0][{i}]", "NCHW")
        add("sem_seg_head.pixel_decoder.mask_features", args[1],
            "forward_pre_hook on model.sem_seg_head.predictor: args[1]", "NCHW")

    def predictor_out(_m, _args, output):
        add("sem_seg_head.predictor.pred_logits", output["pred_logits"], "predictor output['pred_logits']")
        add("sem_seg_head.predictor.pred_masks", output["pred_masks"], "predictor output['pred_masks']", "NCHW")
        for i, aux in enumerate(output.get("aux_outputs") or []):
            add(f"sem_seg_head.predictor.aux_outputs.{i}.pred_logits", aux["pred_logits"],
                f"predictor output['aux_outputs'][{i}]['pred_logits']")
            add(f"sem_seg_head.predictor.aux_outputs.{i}.pred_masks", aux["pred_masks"],
                f"predictor output['aux_outputs'][{i}]['pred_masks']", "NCHW")

    handles.append(predictor.register_forward_pre_hook(predictor_pre))
    handles.append(predictor.register_forward_hook(predictor_out))
    try:
        with torch.no_grad(), deform_attn_path():
            result = model([{"image": image.to(device), "height": raw.shape[0], "width": raw.shape[1]}])[0]
    finally:
        for handle in handles:
            handle.remove()
    if "instances" in result:
        instances = result["instances"]
        add("return.instances.pred_masks", instances.pred_masks, "model(...)[0]['instances'].pred_masks")
        add("return.instances.scores", instances.scores, "model(...)[0]['instances'].scores")
        add("return.instances.pred_classes", instances.pred_classes, "model(...)[0]['instances'].pred_classes")
    if "sem_seg" in result:
        add("return.sem_seg", result["sem_seg"], "model(...)[0]['sem_seg']")
    if "panoptic_seg" in result:
        segmentation, segments = result["panoptic_seg"]
        add("return.panoptic_seg", segmentation, "model(...)[0]['panoptic_seg'][0]")
        rows = [[s["id"], float(bool(s["isthing"])), s["category_id"]] for s in segments]
        add("return.panoptic_seg.segments_info", torch.tensor(rows, dtype=torch.float32).reshape(-1, 3),
            "model(...)[0]['panoptic_seg'][1] as [id, isthing, category_id]")
    return inputs, refs
