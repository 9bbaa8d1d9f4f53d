"""SAM port side: transformers SamModel / SamProcessor, the weight mapping, and the port half of the capture plan.

Runs in the transformers environment; never imports segment_anything.
"""

from __future__ import annotations

from typing import Any

import torch

from parity.contracts.recipe import Recipe
from parity.port.dump import Dump
from parity.port.hooks import ForwardHooks, main_output
from parity.port.rules import Rule, drop, rename

ENC = r"image_encoder\."
DEC = r"mask_decoder\."
HYPERNETWORK_DEPTH = 3
"""segment_anything's MaskDecoder builds every output hypernetwork as MLP(dim, dim, dim // 8, 3): not an argument."""


def hf_config(recipe: Recipe):
    from transformers import SamConfig

    cfg = recipe.original_config
    enc, prompt, dec = cfg["image_encoder"], cfg["prompt_encoder"], cfg["mask_decoder"]
    two_way = dec["transformer"]
    values: dict[str, Any] = {
        "vision_config": {
            "hidden_size": enc["embed_dim"],
            "output_channels": enc["out_chans"],
            "num_hidden_layers": enc["depth"],
            "num_attention_heads": enc["num_heads"],
            "image_size": enc["img_size"],
            "patch_size": enc["patch_size"],
            "layer_norm_eps": enc["layer_norm_eps"],
            "qkv_bias": enc["qkv_bias"],
            "use_abs_pos": enc["use_abs_pos"],
            "use_rel_pos": enc["use_rel_pos"],
            "window_size": enc["window_size"],
            "global_attn_indexes": list(enc["global_attn_indexes"]),
            "mlp_dim": int(enc["embed_dim"] * enc["mlp_ratio"]),
            "num_pos_feats": prompt["embed_dim"] // 2,
        },
        "prompt_encoder_config": {
            "hidden_size": prompt["embed_dim"],
            "image_size": prompt["input_image_size"][0],
            "patch_size": enc["patch_size"],
            "mask_input_channels": prompt["mask_in_chans"],
            "layer_norm_eps": 1e-6,
        },
        "mask_decoder_config": {
            "hidden_size": dec["transformer_dim"],
            "num_hidden_layers": two_way["depth"],
            "num_attention_heads": two_way["num_heads"],
            "mlp_dim": two_way["mlp_dim"],
            "attention_downsample_rate": two_way["attention_downsample_rate"],
            "num_multimask_outputs": dec["num_multimask_outputs"],
            "iou_head_depth": dec["iou_head_depth"],
            "iou_head_hidden_dim": dec["iou_head_hidden_dim"],
            # The original two-way transformer uses nn.LayerNorm's default eps (1e-5), not SAM's usual 1e-6.
            "layer_norm_eps": 1e-5,
        },
    }
    for section, overrides in recipe.hf.config_overrides.items():
        values[section].update(overrides)
    return SamConfig(**values)


def _feed_forward(prefix: str, source: str, target: str, depth: int) -> list[Rule]:
    """The original MLP's layers.0..N-1 become HF's proj_in, layers.0..N-3, proj_out (the renumbering)."""
    wb = r"(?P<param>weight|bias)"
    rules = [rename(f"{prefix} first layer", rf"{source}\.layers\.0\.{wb}", rf"{target}.proj_in.\g<param>"),
             rename(f"{prefix} last layer", rf"{source}\.layers\.{depth - 1}\.{wb}", rf"{target}.proj_out.\g<param>")]
    for i in range(1, depth - 1):
        rules.append(rename(f"{prefix} hidden layer {i}", rf"{source}\.layers\.{i}\.{wb}",
                            rf"{target}.layers.{i - 1}.\g<param>"))
    return rules


def rules(recipe: Recipe) -> list[Rule]:
    dec = recipe.original_config["mask_decoder"]
    blocks = ENC + r"blocks\.(\d+)\."
    two_way = DEC + r"transformer\.layers\.(\d+)\."
    return [
        rename("abs pos embed", ENC + r"pos_embed", "vision_encoder.pos_embed"),
        rename("patch embed", ENC + r"patch_embed\.proj\.(weight|bias)", r"vision_encoder.patch_embed.projection.\1"),
        rename("block norms", blocks + r"norm([12])\.(weight|bias)", r"vision_encoder.layers.\1.layer_norm\2.\3"),
        rename("block attention", blocks + r"attn\.(qkv|proj)\.(weight|bias)", r"vision_encoder.layers.\1.attn.\2.\3"),
        rename("block rel-pos", blocks + r"attn\.rel_pos_([hw])", r"vision_encoder.layers.\1.attn.rel_pos_\2"),
        rename("block mlp", blocks + r"mlp\.(lin[12])\.(weight|bias)", r"vision_encoder.layers.\1.mlp.\2.\3"),
        rename("neck conv1", ENC + r"neck\.0\.weight", "vision_encoder.neck.conv1.weight"),
        rename("neck norm1", ENC + r"neck\.1\.(weight|bias)", r"vision_encoder.neck.layer_norm1.\1"),
        rename("neck conv2", ENC + r"neck\.2\.weight", "vision_encoder.neck.conv2.weight"),
        rename("neck norm2", ENC + r"neck\.3\.(weight|bias)", r"vision_encoder.neck.layer_norm2.\1"),
        Rule("shared random-Fourier PE (one original buffer feeds both HF copies)",
             r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
             ("prompt_encoder.shared_embedding.positional_embedding", "shared_image_embedding.positional_embedding"),
             op="copy"),
        rename("point embeddings", r"prompt_encoder\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.\1.weight"),
        rename("not-a-point / no-mask embeddings", r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight",
               r"prompt_encoder.\1.weight"),
        rename("mask downscaling conv1", r"prompt_encoder\.mask_downscaling\.0\.(weight|bias)", r"prompt_encoder.mask_embed.conv1.\1"),
        rename("mask downscaling norm1", r"prompt_encoder\.mask_downscaling\.1\.(weight|bias)", r"prompt_encoder.mask_embed.layer_norm1.\1"),
        rename("mask downscaling conv2", r"prompt_encoder\.mask_downscaling\.3\.(weight|bias)", r"prompt_encoder.mask_embed.conv2.\1"),
        rename("mask downscaling norm2", r"prompt_encoder\.mask_downscaling\.4\.(weight|bias)", r"prompt_encoder.mask_embed.layer_norm2.\1"),
        rename("mask downscaling conv3", r"prompt_encoder\.mask_downscaling\.6\.(weight|bias)", r"prompt_encoder.mask_embed.conv3.\1"),
        rename("output tokens", DEC + r"(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
        rename("two-way attention", two_way + r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\."
               r"(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)", r"mask_decoder.transformer.layers.\1.\2.\3.\4"),
        rename("two-way norms", two_way + r"norm([1-4])\.(weight|bias)", r"mask_decoder.transformer.layers.\1.layer_norm\2.\3"),
        rename("two-way mlp", two_way + r"mlp\.(lin[12])\.(weight|bias)", r"mask_decoder.transformer.layers.\1.mlp.\2.\3"),
        rename("final token-to-image attention", DEC + r"transformer\.final_attn_token_to_image\.(\w+)\.(weight|bias)",
               r"mask_decoder.transformer.final_attn_token_to_image.\1.\2"),
        rename("final attention norm", DEC + r"transformer\.norm_final_attn\.(weight|bias)",
               r"mask_decoder.transformer.layer_norm_final_attn.\1"),
        rename("upscaling convT 1", DEC + r"output_upscaling\.0\.(weight|bias)", r"mask_decoder.upscale_conv1.\1"),
        rename("upscaling norm", DEC + r"output_upscaling\.1\.(weight|bias)", r"mask_decoder.upscale_layer_norm.\1"),
        rename("upscaling convT 2", DEC + r"output_upscaling\.3\.(weight|bias)", r"mask_decoder.upscale_conv2.\1"),
        *_feed_forward("hypernetwork mlp", DEC + r"output_hypernetworks_mlps\.(\d+)",
                       r"mask_decoder.output_hypernetworks_mlps.\1", HYPERNETWORK_DEPTH),
        *_feed_forward("iou head", DEC + r"iou_prediction_head", "mask_decoder.iou_prediction_head", dec["iou_head_depth"]),
        drop("pixel normalisation constants (processor settings in HF, not weights)", r"pixel_(mean|std)"),
    ]


def build_processor(recipe: Recipe):
    from transformers import SamImageProcessor, SamProcessor

    cfg = recipe.original_config
    size = cfg["image_encoder"]["img_size"]
    image_processor = SamImageProcessor(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        image_mean=[m / 255.0 for m in cfg["pixel_mean"]],
        image_std=[s / 255.0 for s in cfg["pixel_std"]],
        rescale_factor=1 / 255.0,
        do_convert_rgb=True,
    )
    return SamProcessor(image_processor=image_processor)


def _case_inputs(dump: Dump, case: str, device: str) -> dict[str, torch.Tensor]:
    """Origin prompts (already in the model frame) reshaped to HF's (image batch, prompt batch, ...) layout."""
    kwargs = {}
    if f"{case}.point_coords" in dump.inputs:
        kwargs["input_points"] = dump.inputs[f"{case}.point_coords"][None].to(device)
        kwargs["input_labels"] = dump.inputs[f"{case}.point_labels"][None].long().to(device)
    if f"{case}.boxes" in dump.inputs:
        kwargs["input_boxes"] = dump.inputs[f"{case}.boxes"][None].to(device)
    if f"{case}.mask_inputs" in dump.inputs:
        kwargs["input_masks"] = dump.inputs[f"{case}.mask_inputs"].to(device)
    return kwargs


def port_captures(recipe: Recipe, model, processor, dump: Dump, device: str) -> dict[str, tuple[str, torch.Tensor]]:
    """The port half of the capture plan: same names as the origin's, port tensors adapted to the origin layout."""
    out: dict[str, tuple[str, torch.Tensor]] = {}
    depth = recipe.original_config["image_encoder"]["depth"]
    encoder_paths = ["vision_encoder.patch_embed", *[f"vision_encoder.layers.{i}" for i in range(depth)],
                     "vision_encoder.neck"]
    hooks = ForwardHooks(model, encoder_paths)
    try:
        embeddings = model.get_image_embeddings(dump.inputs["pixel_values"].to(device))
    finally:
        hooks.remove()
    out["image_encoder.patch_embed"] = ("vision_encoder.patch_embed", main_output(hooks.outputs["vision_encoder.patch_embed"][0]))
    for i in range(depth):
        path = f"vision_encoder.layers.{i}"
        out[f"image_encoder.blocks.{i}"] = (path, main_output(hooks.outputs[path][0]))
    out["image_encoder.neck"] = ("vision_encoder.neck", hooks.outputs["vision_encoder.neck"][0])
    dense_pe = model.get_image_wide_positional_embeddings()
    out["prompt_encoder.get_dense_pe"] = ("SamModel.get_image_wide_positional_embeddings()",
                                          dense_pe if dense_pe.dim() == 4 else dense_pe[None])

    decoder_paths = ["prompt_encoder", "mask_decoder.transformer", "mask_decoder.activation",
                     "mask_decoder.iou_prediction_head"]
    hooks = ForwardHooks(model, decoder_paths)
    raw = dump.raw_image()
    original_size = torch.tensor([[raw.height, raw.width]])
    reshaped = torch.tensor([list(dump.inputs["image"].shape[-2:])])
    try:
        for case in recipe.spec.prompts:
            kwargs = _case_inputs(dump, case, device)
            hooks.reset()
            multi = model(image_embeddings=embeddings, multimask_output=True, **kwargs)
            calls = {k: list(v) for k, v in hooks.outputs.items()}
            single = model(image_embeddings=embeddings, multimask_output=False, **kwargs)
            prompts = (kwargs.get("input_points") if "input_points" in kwargs else kwargs["input_boxes"]).shape[1]
            sparse, dense = calls["prompt_encoder"][0]
            out[f"{case}.prompt_encoder.0"] = ("prompt_encoder output[0] (image batch squeezed)", sparse[0])
            out[f"{case}.prompt_encoder.1"] = ("prompt_encoder output[1] (expanded per prompt, as the original)",
                                               dense.expand(prompts, -1, -1, -1))
            queries, keys = calls["mask_decoder.transformer"][0][:2]
            out[f"{case}.mask_decoder.transformer.0"] = ("mask_decoder.transformer output[0]",
                                                         queries.reshape(prompts, *queries.shape[-2:]))
            out[f"{case}.mask_decoder.transformer.1"] = ("mask_decoder.transformer output[1]",
                                                         keys.reshape(prompts, *keys.shape[-2:]))
            out[f"{case}.mask_decoder.output_upscaling"] = ("mask_decoder.activation, 2nd call (after upscale_conv2)",
                                                            calls["mask_decoder.activation"][1])
            iou_all = calls["mask_decoder.iou_prediction_head"][0][0]
            out[f"{case}.mask_decoder.iou_prediction_head"] = ("mask_decoder.iou_prediction_head", iou_all)
            masks_all = torch.cat([single.pred_masks[0], multi.pred_masks[0]], dim=1)
            out[f"{case}.mask_decoder.predict_masks.0"] = ("cat(pred_masks single-mask, multimask)", masks_all)
            out[f"{case}.mask_decoder.predict_masks.1"] = ("mask_decoder.iou_prediction_head (all tokens)", iou_all)
            upscaled = processor.image_processor.post_process_masks(
                multi.pred_masks.cpu(), original_size, reshaped, binarize=False)[0]
            out[f"{case}.postprocess_masks"] = ("SamImageProcessor.post_process_masks(binarize=False)", upscaled)
            out[f"{case}.return.low_res_logits"] = ("SamModel pred_masks", multi.pred_masks[0])
            out[f"{case}.return.iou_predictions"] = ("SamModel iou_scores", multi.iou_scores[0])
    finally:
        hooks.remove()
    return out


def processor_checks(recipe: Recipe, processor, dump: Dump):
    """SamProcessor on the RAW image and RAW prompts vs the original preprocessing's tensors."""
    raw = dump.raw_image()
    checks = []
    encoded = processor(images=raw, return_tensors="pt")
    checks.append(("pixel_values", "SamProcessor(images=raw).pixel_values", dump.inputs["pixel_values"],
                   encoded["pixel_values"]))
    for name, case in recipe.spec.prompts.items():
        kwargs: dict[str, Any] = {}
        if case.point_coords is not None:
            kwargs["input_points"] = [case.point_coords]
            kwargs["input_labels"] = [case.point_labels]
        if case.boxes is not None:
            kwargs["input_boxes"] = [case.boxes]
        encoded = processor(images=raw, return_tensors="pt", **kwargs)
        if case.point_coords is not None:
            checks.append((f"{name}.point_coords", "SamProcessor input_points", dump.inputs[f"{name}.point_coords"],
                           encoded["input_points"][0]))
        if case.boxes is not None:
            checks.append((f"{name}.boxes", "SamProcessor input_boxes", dump.inputs[f"{name}.boxes"],
                           encoded["input_boxes"][0]))
    return checks, {"processor": type(processor.image_processor).__name__}
