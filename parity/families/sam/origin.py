"""SAM origin side: runs the ORIGINAL segment-anything code (PyPI segment-anything==1.0) in the `sam` environment.

Builds the original Sam from the recipe's constructor arguments, loads checkpoints as build_sam does (strict; the file
memory-mapped and its tensors assigned, so the weights can be paged per module), runs the original preprocessing
(ResizeLongestSide + Sam.preprocess) on a raw image, encodes it once, prompts it through `Sam.forward` and
`SamPredictor.predict_torch`, and records activations in execution order through forward hooks and wrappers on
instance methods; upstream code is never modified.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parity.contracts.errors import ParityError
from parity.contracts.recipe import Recipe
from parity.families.sam.spec import PromptCase
from parity.origin.capture import CaptureLog
from parity.origin.checkpoint import check_strict_load, load_state_dict_file
from parity.origin.redraw import Site, redraw

UPSTREAM = "segment-anything==1.0 (facebookresearch/segment-anything dca509fe793f601edb92606367a655c15ac00fdf)"
PACKAGES = ("segment-anything", "torch", "torchvision", "numpy", "pillow")


def build_original(config: dict[str, Any]) -> nn.Module:
    """segment_anything's _build_sam with every constructor argument taken from the recipe."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    enc = config["image_encoder"]
    mlp_dim = int(enc["embed_dim"] * enc["mlp_ratio"])
    prompt = config["prompt_encoder"]
    dec = config["mask_decoder"]
    image_encoder = ImageEncoderViT(
        img_size=enc["img_size"],
        patch_size=enc["patch_size"],
        in_chans=enc["in_chans"],
        embed_dim=enc["embed_dim"],
        depth=enc["depth"],
        num_heads=enc["num_heads"],
        mlp_ratio=enc["mlp_ratio"],
        out_chans=enc["out_chans"],
        qkv_bias=enc["qkv_bias"],
        norm_layer=functools.partial(nn.LayerNorm, eps=enc["layer_norm_eps"]),
        act_layer=nn.GELU,
        use_abs_pos=enc["use_abs_pos"],
        use_rel_pos=enc["use_rel_pos"],
        rel_pos_zero_init=enc["rel_pos_zero_init"],
        window_size=enc["window_size"],
        global_attn_indexes=tuple(enc["global_attn_indexes"]),
    )
    if image_encoder.blocks[0].mlp.lin1.out_features != mlp_dim:
        raise ParityError(f"mlp_ratio {enc['mlp_ratio']} does not give mlp dim {mlp_dim} in the original encoder")
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt["embed_dim"],
            image_embedding_size=tuple(prompt["image_embedding_size"]),
            input_image_size=tuple(prompt["input_image_size"]),
            mask_in_chans=prompt["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=dec["num_multimask_outputs"],
            transformer=TwoWayTransformer(**dec["transformer"]),
            transformer_dim=dec["transformer_dim"],
            iou_head_depth=dec["iou_head_depth"],
            iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        ),
        pixel_mean=config["pixel_mean"],
        pixel_std=config["pixel_std"],
    )
    return sam.eval()


GAIN_WEIGHTS = ("mask_decoder.output_upscaling", "mask_decoder.output_hypernetworks_mlps", "iou_prediction_head")
"""Weights drawn with He scaling so mask logits and IoU stay O(1) after several ReLU/GELU layers."""


def redraw_rule(site: Site) -> torch.Tensor:
    """Scales for re-drawing every parameter and persistent float buffer (no LayerNorm left at 1, no bias at 0)."""
    if "LayerNorm" in type(site.owner).__name__ and site.leaf == "weight":
        return 1 + 0.1 * site.normal
    if site.leaf == "bias":
        return 0.05 * site.normal
    if isinstance(site.owner, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        fan_in = site.tensor.shape[0] if isinstance(site.owner, nn.ConvTranspose2d) else site.tensor[0].numel()
        if any(part in site.name for part in GAIN_WEIGHTS):
            return (2.0 / fan_in) ** 0.5 * site.normal
        return min(max(fan_in**-0.5, 0.02), 0.1) * site.normal
    if site.leaf == "positional_encoding_gaussian_matrix":
        return site.normal
    return 0.3 * site.normal


def generate_checkpoint(recipe: Recipe, path: Path) -> None:
    """A tiny checkpoint in the original container (plain torch.save of Sam.state_dict()), made by original code."""
    assert recipe.checkpoint.generate is not None
    torch.manual_seed(recipe.checkpoint.generate.seed)
    model = build_original(recipe.original_config)
    redraw(model, recipe.checkpoint.generate.seed, redraw_rule)
    torch.save(model.state_dict(), str(path))


def load_original(recipe: Recipe, checkpoint: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """build_sam's loader: build, then load_state_dict strictly; returns the model and its state dict. The checkpoint
    is memory-mapped and its tensors assigned (not copied into the random ones), so the weights stay file-backed and
    can be paged per module (parity.runtime.paging)."""
    model = build_original(recipe.original_config)
    state_dict = load_state_dict_file(checkpoint)
    check_strict_load(model, state_dict, checkpoint, assign=True)
    return model, model.state_dict()


class _Captured(Exception):
    """Raised by the stand-in for _build_sam once it has the arguments a registry builder passes."""


def builder_arguments(builder: str) -> dict[str, Any]:
    """What `sam_model_registry[builder](checkpoint=None)` passes to `_build_sam`, read by calling the ORIGINAL
    builder with `_build_sam` replaced for the call (nothing is built)."""
    import importlib

    build_sam = importlib.import_module("segment_anything.build_sam")  # the package exports a function of that name
    if builder not in build_sam.sam_model_registry:
        raise ParityError(f"sam builder {builder!r} is not in segment_anything's sam_model_registry "
                          f"({', '.join(build_sam.sam_model_registry)})")
    captured: dict[str, Any] = {}

    def stand_in(**kwargs):
        captured.update(kwargs)
        raise _Captured

    original = build_sam._build_sam
    build_sam._build_sam = stand_in
    try:
        build_sam.sam_model_registry[builder](checkpoint=None)
    except _Captured:
        pass
    finally:
        build_sam._build_sam = original
    return captured


def read_configuration(source) -> dict[str, Any]:
    """SAM build arguments for `parity recipe new sam`: a registry builder's (`--arg builder=vit_b`), then what the
    checkpoint's tensor shapes say (`--checkpoint`), then explicit `--arg` values, each overriding the one before."""
    from parity.families.sam.recipes import arguments_from_shapes, registry_arguments

    arguments = dict(source.arguments)
    builder = arguments.pop("builder", None)
    build: dict[str, Any] = {}
    read_from, notes = [], []
    if builder is not None:
        build.update(registry_arguments(builder_arguments(str(builder))))
        read_from.append(f"sam_model_registry[{builder!r}]")
    if source.checkpoint is not None:
        state = load_state_dict_file(source.checkpoint)
        inferred, notes = arguments_from_shapes({k: tuple(v.shape) for k, v in state.items()})
        build.update(inferred)
        notes = [note for note in notes if note.split(" ", 1)[0] not in arguments]
        read_from.append(f"the shapes in {source.checkpoint.name}")
    if arguments:
        build.update(arguments)
        read_from.append("build arguments")
    return {"build": build, "read_from": read_from, "notes": notes}


def fixture_state_dict(recipe: Recipe, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Fixtures go through the same original loader as any checkpoint."""
    return load_original(recipe, checkpoint)[1]


def _prompt_arrays(case: PromptCase) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    if case.point_coords is not None:
        arrays["point_coords"] = np.asarray(case.point_coords, dtype=np.float64)
        arrays["point_labels"] = np.asarray(case.point_labels, dtype=np.int64)
    if case.boxes is not None:
        arrays["boxes"] = np.asarray(case.boxes, dtype=np.float64)
    return arrays


class _Recorder:
    """Forward hooks and instance-method wrappers that write into a CaptureLog under a per-case prefix."""

    def __init__(self, sam: nn.Module, log: CaptureLog):
        self.sam, self.log, self.prefix, self.handles = sam, log, "", []

    def _record(self, name: str, value: torch.Tensor, origin: str, layout: str | None = None) -> None:
        if name not in self.log:
            self.log.add(name, value.float() if value.is_floating_point() else value, module=origin, layout=layout)

    def hook_output(self, path: str, *, per_case: bool, layout: str | None = None) -> None:
        module = self.sam.get_submodule(path)

        def hook(_module, _args, output):
            name = f"{self.prefix}{path}" if per_case else path
            if isinstance(output, tuple):
                for i, item in enumerate(output):
                    self._record(f"{name}.{i}", item, f"forward hook: {path}, output[{i}]", layout)
            else:
                self._record(name, output, f"forward hook: {path}", layout)

        self.handles.append(module.register_forward_hook(hook))

    def wrap_method(self, owner_path: str, method: str, *, per_case: bool, capture_name: str) -> None:
        owner = self.sam.get_submodule(owner_path) if owner_path else self.sam
        original = getattr(owner, method)

        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            name = f"{self.prefix}{capture_name}" if per_case else capture_name
            where = f"return value of {owner_path + '.' if owner_path else 'Sam.'}{method}"
            if isinstance(result, tuple):
                for i, item in enumerate(result):
                    self._record(f"{name}.{i}", item, f"{where}[{i}]")
            else:
                self._record(name, result, where)
            return result

        setattr(owner, method, wrapper)


def run_captures(
    recipe: Recipe, model: nn.Module, images: dict[str, np.ndarray], device: str
) -> tuple[CaptureLog, CaptureLog]:
    """The image encoder once per image, prompts as the original's public API runs them, with captures on.

    The first prompt case goes through `Sam.forward` (the end-to-end entry point: preprocessing, the image encoder, the
    prompt encoder, the mask decoder, postprocess_masks); its image embedding then becomes the state
    `SamPredictor.set_torch_image` would compute from the same image, and every further case goes through
    `SamPredictor.predict_torch` on it, as a user of the original prompts one image repeatedly. Both paths call the
    same modules in the same order, so every case's captures mean the same thing; the encoder never runs twice."""
    from segment_anything import SamPredictor
    from segment_anything.utils.transforms import ResizeLongestSide

    sam = model.to(device)
    raw = images["image"]
    original_size = raw.shape[:2]
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = transform.apply_image(raw)
    image_tensor = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()

    inputs, refs = CaptureLog(), CaptureLog()
    inputs.add("image", image_tensor, meaning="ResizeLongestSide(img_size).apply_image(raw) as uint8 CHW")
    recorder = _Recorder(sam, refs)
    embeddings: list[torch.Tensor] = []

    def capture_pixel_values(_module, args):
        if "pixel_values" not in inputs:
            inputs.add("pixel_values", args[0], meaning="Sam.preprocess(image) batched: normalised, zero-padded")

    def keep_embedding(_module, _args, output):
        embeddings.append(output)

    recorder.handles.append(sam.image_encoder.register_forward_pre_hook(capture_pixel_values))
    recorder.handles.append(sam.image_encoder.register_forward_hook(keep_embedding))
    recorder.hook_output("image_encoder.patch_embed", per_case=False, layout="NHWC")
    for i in range(len(sam.image_encoder.blocks)):
        recorder.hook_output(f"image_encoder.blocks.{i}", per_case=False, layout="NHWC")
    recorder.hook_output("image_encoder.neck", per_case=False, layout="NCHW")
    recorder.hook_output("prompt_encoder", per_case=True)
    recorder.wrap_method("prompt_encoder", "get_dense_pe", per_case=False, capture_name="prompt_encoder.get_dense_pe")
    recorder.hook_output("mask_decoder.transformer", per_case=True)
    recorder.hook_output("mask_decoder.output_upscaling", per_case=True, layout="NCHW")
    recorder.hook_output("mask_decoder.iou_prediction_head", per_case=True)
    recorder.wrap_method("mask_decoder", "predict_masks", per_case=True, capture_name="mask_decoder.predict_masks")
    recorder.wrap_method("", "postprocess_masks", per_case=True, capture_name="postprocess_masks")

    predictor = SamPredictor(sam)
    results: dict[str, dict[str, torch.Tensor]] = {}
    try:
        for case_name, case in recipe.spec.prompts.items():
            recorder.prefix = f"{case_name}."
            prompts = _case_prompts(case_name, case, transform, original_size, results, inputs, device)
            if not predictor.is_image_set:
                output = sam([{"image": image_tensor, "original_size": original_size, **prompts}],
                             multimask_output=True)[0]
                (embedding,) = embeddings
                # What set_torch_image(image[None], original_size) leaves behind, without encoding the image again.
                predictor.original_size, predictor.input_size = original_size, tuple(image_tensor.shape[-2:])
                predictor.features, predictor.is_image_set = embedding, True
                source = "Sam.forward"
            else:
                _masks, iou, low_res = predictor.predict_torch(
                    prompts.get("point_coords"), prompts.get("point_labels"), prompts.get("boxes"),
                    prompts.get("mask_inputs"), multimask_output=True, return_logits=True)
                output = {"low_res_logits": low_res, "iou_predictions": iou}
                source = "SamPredictor.predict_torch"
            results[case_name] = output
            refs.add(f"{case_name}.return.low_res_logits", output["low_res_logits"], module=f"{source} low_res_logits")
            refs.add(f"{case_name}.return.iou_predictions", output["iou_predictions"],
                     module=f"{source} iou_predictions")
    finally:
        for handle in recorder.handles:
            handle.remove()
    if len(embeddings) > 1:
        raise ParityError(f"the image encoder ran {len(embeddings)} times for one image")
    return inputs, refs


def _case_prompts(case_name: str, case: PromptCase, transform, original_size, results: dict, inputs: CaptureLog,
                  device: str) -> dict[str, torch.Tensor]:
    """One case's prompts in the model frame (ResizeLongestSide, as SamPredictor.predict does), recorded as inputs."""
    prompts: dict[str, torch.Tensor] = {}
    arrays = _prompt_arrays(case)
    if "point_coords" in arrays:
        coords = transform.apply_coords(arrays["point_coords"], original_size)
        prompts["point_coords"] = torch.as_tensor(coords, dtype=torch.float32, device=device)
        prompts["point_labels"] = torch.as_tensor(arrays["point_labels"], dtype=torch.int32, device=device)
        inputs.add(f"{case_name}.point_coords", prompts["point_coords"], meaning="apply_coords, model frame")
        inputs.add(f"{case_name}.point_labels", prompts["point_labels"].long())
    if "boxes" in arrays:
        boxes = transform.apply_boxes(arrays["boxes"], original_size)
        prompts["boxes"] = torch.as_tensor(boxes, dtype=torch.float32, device=device)
        inputs.add(f"{case_name}.boxes", prompts["boxes"], meaning="apply_boxes, model frame")
    if case.mask_from is not None:
        source = results[case.mask_from]
        index = case.mask_index
        if index is None:
            index = int(source["iou_predictions"][0].argmax())
        prompts["mask_inputs"] = source["low_res_logits"][:, index : index + 1].clone()
        inputs.add(f"{case_name}.mask_inputs", prompts["mask_inputs"], meaning=f"{case.mask_from} mask {index}")
    return prompts
