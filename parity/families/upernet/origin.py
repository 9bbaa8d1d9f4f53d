"""UperNet-ConvNeXt origin side: the ORIGINAL mmsegmentation code, in either stack.

`mmseg0` (mmsegmentation 0.30.0 + mmcls 0.25.0 + mmcv 1.7.2) produced the released checkpoints; `mmseg1`
(mmsegmentation 1.2.2 + mmpretrain 1.2.0 + mmengine 0.10.7 + mmcv-lite 2.1.0) is today's stack. The stack is the
recipe's `origin` (the environment this runs in). Both go through their own public inference API
(`inference_segmentor` / `inference_model`) on the raw image, with forward hooks and wrapped bound methods for the
captures; upstream code is never modified. The only stand-in is the `mmcv.ops` import shim (mmcv_ops_shim.py).
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parity.contracts.errors import ParityError
from parity.contracts.recipe import Recipe
from parity.families.upernet import mmcv_ops_shim
from parity.origin.capture import CaptureLog
from parity.origin.redraw import Site, redraw

UPSTREAM_BY_STACK = {
    "mmseg0": "mmsegmentation==0.30.0 + mmcls==0.25.0 + mmcv==1.7.2 (source build, MMCV_WITH_OPS=0)",
    "mmseg1": "mmsegmentation==1.2.2 + mmpretrain==1.2.0 + mmengine==0.10.7 + mmcv-lite==2.1.0",
}
UPSTREAM = "mmsegmentation (stack chosen by the recipe's origin)"
PACKAGES = ("mmsegmentation", "mmcls", "mmpretrain", "mmengine", "mmcv", "mmcv-lite", "torch", "torchvision", "numpy",
            "opencv-python", "pillow")
ADE20K_PALETTE_SEED = 0


def _stack(recipe: Recipe) -> str:
    if recipe.origin not in ("mmseg0", "mmseg1"):
        raise ParityError(f"upernet origin {recipe.origin!r} is not one of mmseg0, mmseg1")
    if recipe.origin not in recipe.original_config:
        raise ParityError(f"{recipe.id}: original_config has no {recipe.origin} section (a recipe made from one "
                          "stack's config runs in that stack)")
    return recipe.origin


def _set_upstream(recipe: Recipe) -> None:
    global UPSTREAM
    UPSTREAM = f"{UPSTREAM_BY_STACK[_stack(recipe)]}; {mmcv_ops_shim.describe()}"


def _tuples(value: Any, keys: tuple[str, ...] = ("img_scale", "scale", "crop_size", "stride", "size",
                                                  "pool_scales")) -> Any:
    """JSON lists back to the tuples the configs are written with (mmseg 0.x reads a list img_scale as several)."""
    if isinstance(value, dict):
        return {k: (tuple(v) if k in keys and isinstance(v, list) and all(isinstance(i, int) for i in v)
                    else _tuples(v, keys)) for k, v in value.items()}
    if isinstance(value, list):
        return [_tuples(v, keys) for v in value]
    return value


def config_dict(recipe: Recipe) -> dict[str, Any]:
    """The stack's config as mmseg would load it from its .py file (model, test pipeline, data.test)."""
    stack = _stack(recipe)
    cfg = _tuples(copy.deepcopy(recipe.original_config[stack]))
    if stack == "mmseg0":
        return {"norm_cfg": {"type": "BN", "requires_grad": True},
                "custom_imports": {"imports": "mmcls.models", "allow_failed_imports": False},
                "model": cfg["model"], "test_pipeline": cfg["test_pipeline"],
                "data": {"test": {"type": "ADE20KDataset", "pipeline": cfg["test_pipeline"]}}}
    return {"default_scope": "mmseg",
            "custom_imports": {"imports": "mmpretrain.models", "allow_failed_imports": False},
            "model": cfg["model"], "test_pipeline": cfg["test_pipeline"]}


def _import_stack(stack: str) -> None:
    """What the configs' custom_imports do: register the backbone package's models, then mmseg's."""
    mmcv_ops_shim.install()
    backbone_package = "mmcls.models" if stack == "mmseg0" else "mmpretrain.models"
    importlib.import_module(backbone_package)
    importlib.import_module("mmseg.models")


def build_original(recipe: Recipe) -> nn.Module:
    """init_segmentor / init_model without a checkpoint: the model exactly as the stack builds it for inference."""
    stack = _stack(recipe)
    _import_stack(stack)
    if stack == "mmseg0":
        import mmcv
        from mmseg.apis import init_segmentor

        model = init_segmentor(mmcv.Config(config_dict(recipe)), checkpoint=None, device="cpu")
    else:
        from mmengine import Config
        from mmseg.apis import init_model

        model = init_model(Config(config_dict(recipe)), checkpoint=None, device="cpu")
    _set_upstream(recipe)
    return model.eval()


def _plain(value: Any) -> Any:
    """A config value as JSON data (ConfigDicts to dicts, tuples to lists)."""
    return json.loads(json.dumps(value, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


def _dataset_facts(stack: str, dataset: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """The test dataset's class names and reduce_zero_label as the stack's own dataset class sets them: built over an
    empty folder (0.x) or lazily (1.x), so no data is read."""
    import tempfile

    with tempfile.TemporaryDirectory() as empty:
        try:
            if stack == "mmseg0":
                from mmseg.datasets import build_dataset

                built = build_dataset({**dataset, "data_root": empty, "img_dir": "", "ann_dir": None})
                classes, reduce = built.CLASSES, built.reduce_zero_label
            else:
                from mmseg.registry import DATASETS
                from mmseg.utils import register_all_modules

                register_all_modules()
                built = DATASETS.build({**dataset, "data_root": empty, "lazy_init": True})
                classes, reduce = built.metainfo.get("classes"), built.reduce_zero_label
        except Exception as exc:  # noqa: BLE001 (any dataset class may refuse; the recipe then says so)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            notes.append(f"the test dataset {dataset.get('type')!r} could not be built ({reason}): no class names, "
                         "reduce_zero_label False")
            return {"type": dataset.get("type"), "classes": [], "reduce_zero_label": False}
    return {"type": dataset.get("type"), "classes": [str(c) for c in classes or []], "reduce_zero_label": bool(reduce)}


def read_configuration(source) -> dict[str, Any]:
    """`parity recipe new upernet --config FILE`: the config read by the stack's own Config (mmcv.Config in mmseg0,
    mmengine's Config in mmseg1, `_base_` files included), its model and test pipeline as data, and its test
    dataset's classes and reduce_zero_label from the stack's dataset class."""
    stack = source.origin
    if stack not in UPSTREAM_BY_STACK:
        raise ParityError(f"upernet origin {stack!r} is not one of {', '.join(UPSTREAM_BY_STACK)}")
    if source.config is None:
        raise ParityError("an UperNet recipe is made from an mmsegmentation config: pass --config FILE")
    _import_stack(stack)
    try:
        if stack == "mmseg0":
            import mmcv

            cfg = mmcv.Config.fromfile(str(source.config))
        else:
            from mmengine import Config

            cfg = Config.fromfile(str(source.config))
    except Exception as exc:  # noqa: BLE001 (a config is Python: any error is the config's)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc).strip() else type(exc).__name__
        other = "mmseg1" if stack == "mmseg0" else "mmseg0"
        raise ParityError(f"{source.config} is not readable by the {stack} Config ({reason}); an mmseg "
                          f"{'1' if stack == 'mmseg0' else '0'}.x config needs --origin {other}") from None
    data = _plain(cfg._cfg_dict.to_dict())
    if "model" not in data:
        raise ParityError(f"{source.config} defines no model")
    notes: list[str] = []
    raw = cfg.get("data", {}).get("test") if stack == "mmseg0" else cfg.get("test_dataloader", {}).get("dataset")
    test = _plain(raw) if raw else {}
    pipeline = data.get("test_pipeline") or test.get("pipeline")
    if not pipeline:
        raise ParityError(f"{source.config} has no test pipeline")
    dataset = _dataset_facts(stack, dict(raw), notes) if test.get("type") else {"classes": [],
                                                                                  "reduce_zero_label": False}
    return {"stack": stack, "model": data["model"], "test_pipeline": pipeline, "dataset": dataset, "notes": notes}


def redraw_rule(site: Site) -> torch.Tensor:
    """Scales for re-drawing EVERY parameter and float buffer (BN running statistics too); integer counters stay 0."""
    owner, leaf, normal = site.owner, site.leaf, site.normal
    is_norm = isinstance(owner, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)) or "norm" in type(owner).__name__.lower()
    if leaf == "running_var":
        return 0.5 + torch.rand(site.tensor.shape, generator=site.generator)
    if leaf == "running_mean":
        return 0.1 * normal
    if leaf == "gamma":
        return 0.3 * normal
    if is_norm and leaf == "weight":
        return 1 + 0.1 * normal
    if leaf == "bias":
        return 0.05 * normal
    if site.tensor.dim() >= 2:
        return normal / site.tensor[0].numel() ** 0.5
    raise ParityError(f"no re-draw rule for {site.name} {tuple(site.tensor.shape)}")


def _meta(recipe: Recipe, seed: int) -> dict[str, Any]:
    num_classes = recipe.original_config[recipe.origin]["model"]["decode_head"]["num_classes"]
    labels = recipe.spec.id2label(num_classes)
    classes = tuple(labels[i] for i in range(num_classes))
    palette = np.random.RandomState(ADE20K_PALETTE_SEED).randint(0, 255, size=(num_classes, 3)).tolist()
    return {"seed": seed, "exp_name": f"parity generate {recipe.id}", "CLASSES": classes, "PALETTE": palette,
            "config": json.dumps(recipe.original_config[recipe.origin]), "iter": 0, "epoch": 0}


def generate_checkpoint(recipe: Recipe, path: Path) -> None:
    """Original model, every tensor re-drawn from the seed, saved by the stack's own checkpoint writer."""
    assert recipe.checkpoint.generate is not None
    seed = recipe.checkpoint.generate.seed
    torch.manual_seed(seed)
    model = build_original(recipe)
    redraw(model, seed + 1, redraw_rule)
    meta = _meta(recipe, seed)
    if _stack(recipe) == "mmseg0":
        import mmseg
        from mmcv.runner import save_checkpoint

        meta["mmseg_version"] = mmseg.__version__
        save_checkpoint(model, str(path), meta=meta)
    else:
        import mmseg
        from mmengine.runner.checkpoint import (
            get_state_dict,
            save_checkpoint,
            weights_to_cpu,
        )

        meta["mmseg_version"] = mmseg.__version__
        save_checkpoint({"meta": meta, "state_dict": weights_to_cpu(get_state_dict(model))}, str(path))
    mmcv_ops_shim.assert_unused("generating the checkpoint")


def load_original(recipe: Recipe, checkpoint: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The stack's loader with strict=True (init_segmentor / init_model default to strict=False and only warn)."""
    model = build_original(recipe)
    if not checkpoint.is_file():
        raise ParityError(f"checkpoint not found: {checkpoint}")
    try:
        if _stack(recipe) == "mmseg0":
            from mmcv.runner import load_checkpoint
        else:
            from mmengine.runner import load_checkpoint
        loaded = load_checkpoint(model, str(checkpoint), map_location="cpu", strict=True)
    except RuntimeError as exc:
        text = str(exc)
        lowered = text.lower()
        if "missing key" in lowered or "unexpected key" in lowered or "size mismatch" in lowered:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            raise ParityError(f"checkpoint {checkpoint} does not fit the original model: {' '.join(lines[:3])[:400]}") from None
        raise ParityError(f"checkpoint {checkpoint} is not readable by the original loader (truncated or damaged?): "
                          f"{text.splitlines()[0] if text else type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001  (torch / zipfile / pickle errors for damaged archives)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParityError(f"checkpoint {checkpoint} is not readable by the original loader (truncated or damaged?): "
                          f"{reason}") from None
    meta = loaded.get("meta", {}) if isinstance(loaded, dict) else {}
    if "CLASSES" in meta:
        if _stack(recipe) == "mmseg0":
            model.CLASSES, model.PALETTE = meta["CLASSES"], meta.get("PALETTE")
        else:
            model.dataset_meta = {"classes": meta["CLASSES"], "palette": meta.get("PALETTE")}
    model.eval()
    return model, model.state_dict()


def fixture_state_dict(recipe: Recipe, checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_original(recipe, checkpoint)[1]


class _Tap:
    """Stands in one pipeline step: records what the step received, then runs the original step."""

    def __init__(self, step, record):
        self.step, self.record = step, record

    def __call__(self, results):
        self.record(results)
        return self.step(results)

    def __repr__(self) -> str:
        return f"_Tap({self.step!r})"


def run_captures(recipe: Recipe, model: nn.Module, images: dict[str, np.ndarray], device: str
                 ) -> tuple[CaptureLog, CaptureLog]:
    """The stack's inference API on the raw image (cv2 BGR order, as imread of the PNG gives), with captures."""
    stack = _stack(recipe)
    model = model.to(device).eval()
    inputs, refs = CaptureLog(), CaptureLog()
    handles = []

    def add(name: str, tensor: torch.Tensor, origin: str, meaning: str | None = None) -> None:
        if name in refs:
            raise ParityError(f"capture {name} fired twice: slide inference ran more than one window "
                              "(use an input whose resized size fits one crop)")
        refs.add(name, tensor.float() if tensor.is_floating_point() else tensor, module=origin, layout="NCHW",
                 meaning=meaning)

    def hook_output(path: str, name: str | None = None, meaning: str | None = None) -> None:
        def hook(_module, _args, output):
            if isinstance(output, (list, tuple)):
                for i, item in enumerate(output):
                    add(f"{name or path}.output.{i}", item, f"forward hook: {path}, output[{i}]", meaning)
            else:
                add(name or path, output, f"forward hook: {path}", meaning)

        handles.append(model.get_submodule(path).register_forward_hook(hook))

    def hook_input(path: str, meaning: str) -> None:
        def hook(_module, args):
            add(f"{path}.input", args[0], f"forward pre-hook: {path}, args[0]", meaning)

        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))

    def on_backbone_input(_module, args):
        inputs.add("pixel_values", args[0], meaning=f"{stack} test pipeline + (mmseg1: data_preprocessor) output "
                                                    "fed to backbone (normalised RGB NCHW)")
        add("backbone.input", args[0], "forward pre-hook: backbone, args[0]")

    handles.append(model.backbone.register_forward_pre_hook(on_backbone_input))
    for i in range(len(model.backbone.stages)):
        hook_output(f"backbone.downsample_layers.{i}")
        hook_output(f"backbone.stages.{i}")
    for i in model.backbone.out_indices:
        hook_output(f"backbone.norm{i}", meaning=f"backbone output {i} (out_indices)")
    head = model.decode_head
    for i in range(len(head.lateral_convs)):
        hook_output(f"decode_head.lateral_convs.{i}", meaning="lateral ConvModule before the top-down addition")
    for j in range(len(head.psp_modules)):
        hook_output(f"decode_head.psp_modules.{j}", meaning="PPM branch before upsampling")
    hook_output("decode_head.psp_modules", meaning="PPM branches upsampled to the top level's size")
    hook_output("decode_head.bottleneck", meaning="PSP bottleneck = top lateral")
    for i in range(len(head.fpn_convs)):
        hook_input(f"decode_head.fpn_convs.{i}", "lateral after the top-down path")
        hook_output(f"decode_head.fpn_convs.{i}")
    hook_input("decode_head.fpn_bottleneck", "cat of FPN outputs resized to stride 4")
    hook_output("decode_head.fpn_bottleneck", meaning="fused feature")
    hook_output("decode_head.conv_seg", meaning="decode-head logits at stride 4")

    original_encode_decode = model.encode_decode

    def encode_decode(*args, **kwargs):
        result = original_encode_decode(*args, **kwargs)
        add("return.encode_decode", result, "return value of model.encode_decode",
            "decode-head logits resized to the network input")
        return result

    model.encode_decode = encode_decode
    raw = images["image"]
    bgr = np.ascontiguousarray(raw[..., ::-1])
    try:
        with torch.no_grad():
            if stack == "mmseg0":
                result = _run_mmseg0(model, bgr, inputs, refs, add)
            else:
                result = _run_mmseg1(model, bgr, inputs, add)
        for handle in handles:
            handle.remove()
        handles.clear()
        _auxiliary(model, refs, add, device)
        if stack == "mmseg0":
            add("return.simple_test", torch.as_tensor(np.asarray(result[0])).float(),
                "inference_segmentor(model, img)[0]", "class index map (int64 upstream, stored float32)")
        else:
            add("return.predict.seg_logits", result.seg_logits.data[None], "inference_model(...).seg_logits",
                "logits at the original image size (no softmax)")
            add("return.predict.pred_sem_seg", result.pred_sem_seg.data[0].float(), "inference_model(...).pred_sem_seg",
                "class index map (int64 upstream, stored float32)")
    finally:
        for handle in handles:
            handle.remove()
        model.encode_decode = original_encode_decode
    mmcv_ops_shim.assert_unused("the original forward")
    _set_upstream(recipe)
    return inputs, refs


def _run_mmseg0(model, bgr: np.ndarray, inputs: CaptureLog, refs: CaptureLog, add):
    """mmseg.apis.inference_segmentor, with a tap before Normalize for the resized uint8 image."""
    from mmseg.datasets.pipelines import Compose, MultiScaleFlipAug, Normalize

    original_compose_init = Compose.__init__

    def compose_init(self, transforms):
        original_compose_init(self, transforms)
        for step in self.transforms:
            if isinstance(step, MultiScaleFlipAug):
                inner = step.transforms.transforms
                for k, sub in enumerate(inner):
                    if isinstance(sub, Normalize):
                        inner[k] = _Tap(sub, lambda r: inputs.add(
                            "resized_image", torch.as_tensor(np.ascontiguousarray(r["img"][..., ::-1])),
                            meaning="Resize(keep_ratio) output before Normalize, uint8 HWC RGB"))

    original_inference = model.inference

    def inference(*args, **kwargs):
        result = original_inference(*args, **kwargs)
        add("return.inference", result, "return value of model.inference(img, img_meta, rescale=True)",
            "softmax probabilities at the original image size")
        return result

    from mmseg.apis import inference_segmentor

    Compose.__init__ = compose_init
    model.inference = inference
    try:
        return inference_segmentor(model, bgr)
    finally:
        Compose.__init__ = original_compose_init
        model.inference = original_inference


def _run_mmseg1(model, bgr: np.ndarray, inputs: CaptureLog, add):
    """mmseg.apis.inference_model; the data preprocessor's input is the resized uint8 image."""
    from mmseg.apis import inference_model

    def on_preprocessor(_module, args, kwargs):
        data = args[0] if args else kwargs["data"]
        if "resized_image" not in inputs:
            image = data["inputs"][0]
            inputs.add("resized_image", image.flip(0).permute(1, 2, 0).contiguous(),
                       meaning="Resize(keep_ratio) output fed to SegDataPreProcessor, uint8 HWC RGB")

    handle = model.data_preprocessor.register_forward_pre_hook(on_preprocessor, with_kwargs=True)
    try:
        return inference_model(model, bgr)
    finally:
        handle.remove()


def _auxiliary(model, refs: CaptureLog, add, device: str) -> None:
    """The auxiliary FCNHead is not used at inference: run it explicitly on the backbone outputs (it picks its own
    in_index among them). A config without one has nothing to capture."""
    if getattr(model, "auxiliary_head", None) is None:
        return
    if isinstance(model.auxiliary_head, nn.ModuleList):
        raise ParityError("several auxiliary heads: transformers' UperNet has one")
    feats = [refs.read(f"backbone.norm{i}").to(device) for i in model.backbone.out_indices]
    handles = []
    for path in ("auxiliary_head.convs", "auxiliary_head.conv_seg"):
        def hook(_module, _args, output, path=path):
            add(path, output, f"forward hook: {path}, during an explicit model.auxiliary_head(backbone outputs)")

        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.auxiliary_head(feats)
    finally:
        for handle in handles:
            handle.remove()
