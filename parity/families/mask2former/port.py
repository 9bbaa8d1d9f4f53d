"""Mask2Former port side: transformers Mask2FormerForUniversalSegmentation (Swin backbone), the weight mapping from
the detectron2 state dict, and the port half of the capture plan.

Runs in the transformers environment; never imports detectron2 / mask2former and never unpickles anything.
"""

from __future__ import annotations

from typing import Any

import torch

from parity.contracts.errors import ParityError
from parity.contracts.recipe import Recipe
from parity.families.mask2former.config import BACKBONE_FEATURES, encoder_levels, hf_values
from parity.port.dump import Dump
from parity.port.hooks import ForwardHooks, main_output
from parity.port.rules import Rule, drop, rename, split_rows

SWIN = "model.pixel_level_module.encoder"
PIXEL = "model.pixel_level_module.decoder"
DECODER = "model.transformer_module"


# ----------------------------------------------------------------------------------------------------------------------
# configuration


def hf_config(recipe: Recipe):
    from transformers import Mask2FormerConfig, SwinConfig

    values = hf_values(recipe.original_config)
    for key, value in recipe.hf.config_overrides.items():
        if key == "backbone_config":
            values["backbone_config"].update(value)
        else:
            values[key] = value
    backbone = SwinConfig(**values.pop("backbone_config"))
    labels = recipe.spec.id2label(recipe.original_config["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"])
    return Mask2FormerConfig(backbone_config=backbone, id2label=labels, label2id={v: k for k, v in labels.items()},
                             **values)


# ----------------------------------------------------------------------------------------------------------------------
# weight mapping


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + window - 1) * (2 * window - 1) + (rel[..., 1] + window - 1)


def _check_index(window: int):
    """The original's relative_position_index buffer is not copied (transformers rebuilds it as a non-persistent
    buffer from window_size); this drop rule proves the rebuilt table is the same one before discarding it."""
    expected = _relative_position_index(window)

    def check(tensor: torch.Tensor) -> list[torch.Tensor]:
        if tuple(tensor.shape) != tuple(expected.shape) or not torch.equal(tensor.long(), expected):
            raise ParityError(f"original relative_position_index differs from the window-{window} index transformers "
                              "rebuilds; dropping it would change the model")
        return []

    return check


def rules(recipe: Recipe) -> list[Rule]:
    cfg = recipe.original_config["MODEL"]
    window = cfg["SWIN"]["WINDOW_SIZE"]
    wb = r"(weight|bias)"
    blk = r"backbone\.layers\.(\d+)\.blocks\.(\d+)\."
    hf_blk = rf"{SWIN}.swin.encoder.layers.\1.blocks.\2."
    pd = r"sem_seg_head\.pixel_decoder\."
    enc = pd + r"transformer\.encoder\.layers\.(\d+)\."
    pr = r"sem_seg_head\.predictor\."
    dec = f"{DECODER}.decoder.layers"
    return [
        # Swin backbone
        rename("patch embed conv", rf"backbone\.patch_embed\.proj\.{wb}",
               rf"{SWIN}.swin.embeddings.patch_embeddings.projection.\1"),
        rename("patch embed norm", rf"backbone\.patch_embed\.norm\.{wb}", rf"{SWIN}.swin.embeddings.norm.\1"),
        rename("block norm1", blk + rf"norm1\.{wb}", hf_blk + r"layernorm_before.\3"),
        rename("block norm2", blk + rf"norm2\.{wb}", hf_blk + r"layernorm_after.\3"),
        Rule("block attention qkv -> q/k/v (rows [q; k; v])", blk + rf"attn\.qkv\.{wb}",
             tuple(hf_blk + f"attention.{p}_proj.\\3" for p in "qkv"), op="split", transform=split_rows(3)),
        rename("block attention output", blk + rf"attn\.proj\.{wb}", hf_blk + r"attention.o_proj.\3"),
        rename("relative position bias table", blk + r"attn\.relative_position_bias_table",
               hf_blk + r"attention.relative_position_bias.relative_position_bias_table"),
        Rule("relative position index (checked equal to the index transformers rebuilds from window_size, then "
             "dropped: a non-persistent buffer in the port)", blk + r"attn\.relative_position_index", (), op="drop",
             transform=_check_index(window)),
        rename("block mlp", blk + rf"mlp\.(fc[12])\.{wb}", hf_blk + r"mlp.\3.\4"),
        rename("patch merging", r"backbone\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
               rf"{SWIN}.swin.encoder.layers.\1.downsample.\2"),
        *[rename(f"stage {i} output norm", rf"backbone\.norm{i}\.{wb}", rf"{SWIN}.hidden_states_norms.stage{i + 1}.\1")
          for i in range(3)],
        Rule("last stage output norm (also fills SwinModel.layernorm, which SwinBackbone never runs)",
             rf"backbone\.norm3\.{wb}", (rf"{SWIN}.hidden_states_norms.stage4.\1", rf"{SWIN}.swin.layernorm.\1"),
             op="copy", transform=lambda t: [t, t.clone()]),
        # pixel decoder
        rename("encoder input projections (0 = res5)", pd + rf"input_proj\.(\d)\.([01])\.{wb}",
               rf"{PIXEL}.input_projections.\1.\2.\3"),
        rename("pixel decoder level embed", pd + r"transformer\.level_embed", f"{PIXEL}.level_embed"),
        rename("deformable attention projections",
               enc + rf"self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.{wb}",
               rf"{PIXEL}.encoder.layers.\1.self_attn.\2.\3"),
        rename("encoder norm1", enc + rf"norm1\.{wb}", rf"{PIXEL}.encoder.layers.\1.self_attn_layer_norm.\2"),
        rename("encoder norm2", enc + rf"norm2\.{wb}", rf"{PIXEL}.encoder.layers.\1.final_layer_norm.\2"),
        rename("encoder ffn", enc + rf"linear([12])\.{wb}", rf"{PIXEL}.encoder.layers.\1.fc\2.\3"),
        rename("lateral conv (no bias) + GN", pd + r"adapter_(\d+)\.weight", rf"{PIXEL}.adapter_\1.0.weight"),
        rename("lateral GN", pd + rf"adapter_(\d+)\.norm\.{wb}", rf"{PIXEL}.adapter_\1.1.\2"),
        rename("output conv (no bias)", pd + r"layer_(\d+)\.weight", rf"{PIXEL}.layer_\1.0.weight"),
        rename("output GN", pd + rf"layer_(\d+)\.norm\.{wb}", rf"{PIXEL}.layer_\1.1.\2"),
        rename("mask features conv", pd + rf"mask_features\.{wb}", rf"{PIXEL}.mask_projection.\1"),
        # transformer decoder
        Rule("decoder self-attention in_proj -> q/k/v", pr + r"transformer_self_attention_layers\.(\d+)\.self_attn\."
             r"in_proj_(weight|bias)", tuple(f"{dec}.\\1.self_attn.{p}_proj.\\2" for p in "qkv"), op="split",
             transform=split_rows(3)),
        rename("decoder self-attention out", pr + rf"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.{wb}",
               rf"{dec}.\1.self_attn.out_proj.\2"),
        rename("decoder self-attention norm", pr + rf"transformer_self_attention_layers\.(\d+)\.norm\.{wb}",
               rf"{dec}.\1.self_attn_layer_norm.\2"),
        rename("decoder cross-attention (nn.MultiheadAttention on both sides)",
               pr + r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias|"
               r"out_proj\.weight|out_proj\.bias)", rf"{dec}.\1.cross_attn.\2"),
        rename("decoder cross-attention norm", pr + rf"transformer_cross_attention_layers\.(\d+)\.norm\.{wb}",
               rf"{dec}.\1.cross_attn_layer_norm.\2"),
        rename("decoder ffn", pr + rf"transformer_ffn_layers\.(\d+)\.linear([12])\.{wb}", rf"{dec}.\1.fc\2.\3"),
        rename("decoder ffn norm", pr + rf"transformer_ffn_layers\.(\d+)\.norm\.{wb}", rf"{dec}.\1.final_layer_norm.\2"),
        rename("decoder output norm", pr + rf"decoder_norm\.{wb}", rf"{DECODER}.decoder.layernorm.\1"),
        rename("query positional embeddings", pr + r"query_embed\.weight", f"{DECODER}.queries_embedder.weight"),
        rename("query features", pr + r"query_feat\.weight", f"{DECODER}.queries_features.weight"),
        rename("decoder level embed", pr + r"level_embed\.weight", f"{DECODER}.level_embed.weight"),
        rename("decoder input projections (only when CONVS_DIM != HIDDEN_DIM or ENFORCE_INPUT_PROJ)",
               pr + rf"input_proj\.(\d)\.{wb}", rf"{DECODER}.input_projections.\1.\2"),
        rename("class predictor", pr + rf"class_embed\.{wb}", r"class_predictor.\1"),
        rename("mask embedder MLP", pr + rf"mask_embed\.layers\.(\d)\.{wb}",
               rf"{DECODER}.decoder.mask_predictor.mask_embedder.\1.0.\2"),
        rename("loss class weights (training only; same buffer in both)", r"criterion\.empty_weight",
               "criterion.empty_weight"),
        drop("pixel normalisation constants (processor settings in transformers, not weights)", r"pixel_(mean|std)"),
    ]


# ----------------------------------------------------------------------------------------------------------------------
# processor


def build_processor(recipe: Recipe):
    from transformers import Mask2FormerImageProcessor

    cfg = recipe.original_config
    model, inp = cfg["MODEL"], cfg["INPUT"]
    if inp["FORMAT"] != "RGB":
        raise ParityError(f"INPUT.FORMAT {inp['FORMAT']} (transformers processors feed RGB)")
    return Mask2FormerImageProcessor(
        size={"shortest_edge": inp["MIN_SIZE_TEST"], "longest_edge": inp["MAX_SIZE_TEST"]},
        size_divisor=model["MASK_FORMER"]["SIZE_DIVISIBILITY"],
        image_mean=[m / 255.0 for m in model["PIXEL_MEAN"]],
        image_std=[s / 255.0 for s in model["PIXEL_STD"]],
        ignore_index=model["SEM_SEG_HEAD"]["IGNORE_VALUE"],
        do_reduce_labels=recipe.spec.reduce_labels,
        num_labels=model["SEM_SEG_HEAD"]["NUM_CLASSES"],
    )


# ----------------------------------------------------------------------------------------------------------------------
# captures


def _nchw(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    batch, _, channels = tokens.shape
    return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


_last_outputs: dict[str, Any] = {}
"""processor_checks gets no model: the post-processing comparison reuses the outputs port_captures produced."""


def port_captures(recipe: Recipe, model, processor, dump: Dump, device: str) -> dict[str, tuple[str, torch.Tensor]]:
    """Every pairing follows the config: one stage per Swin depth, one input projection per deformable-encoder level
    (coarsest first), TRANSFORMER_ENC_LAYERS encoder layers, DEC_LAYERS - 1 auxiliary predictions."""
    cfg = recipe.original_config
    depths = list(cfg["MODEL"]["SWIN"]["DEPTHS"])
    stage_last = [f"{SWIN}.swin.encoder.layers.{i}.blocks.{d - 1}" for i, d in enumerate(depths)]
    enc_layers = cfg["MODEL"]["SEM_SEG_HEAD"]["TRANSFORMER_ENC_LAYERS"]
    levels = encoder_levels(cfg)
    paths = [f"{SWIN}.swin.embeddings", *stage_last, SWIN,
             *[f"{PIXEL}.input_projections.{i}" for i in range(len(levels))],
             *[f"{PIXEL}.encoder.layers.{i}" for i in range(enc_layers)], PIXEL]
    hooks = ForwardHooks(model, paths)
    pixel_values = dump.inputs["pixel_values"].to(device)
    try:
        outputs = model(pixel_values=pixel_values, output_auxiliary_logits=True)
    finally:
        hooks.remove()
    _last_outputs["outputs"] = outputs
    calls = hooks.outputs
    out: dict[str, tuple[str, torch.Tensor]] = {"backbone.input": ("pixel_values fed to the port", pixel_values)}
    tokens, (height, width) = calls[f"{SWIN}.swin.embeddings"][0]
    out["backbone.patch_embed"] = ("swin.embeddings output (tokens -> NCHW)", _nchw(tokens, height, width))
    for i, path in enumerate(stage_last):
        out[f"backbone.layers.{i}.x_out"] = (f"{path} output[0] (last block of stage {i}, before downsampling)",
                                             main_output(calls[path][0]))
    features = calls[SWIN][0].feature_maps
    for i, name in enumerate(cfg["MODEL"]["SWIN"]["OUT_FEATURES"]):
        stage = BACKBONE_FEATURES.index(name)
        out[f"backbone.{name}"] = (f"SwinBackbone feature_maps[{i}] (after hidden_states_norms.stage{stage + 1})",
                                   features[i])
    for i, level in enumerate(levels):
        path = f"{PIXEL}.input_projections.{i}"
        out[f"sem_seg_head.pixel_decoder.input_proj.{i}"] = (f"{path} ({level})", calls[path][0])
    for i in range(enc_layers):
        path = f"{PIXEL}.encoder.layers.{i}"
        out[f"sem_seg_head.pixel_decoder.transformer.encoder.layers.{i}"] = (f"{path} output[0]", main_output(calls[path][0]))
    decoded = calls[PIXEL][0]
    for i, fmap in enumerate(decoded.multi_scale_features):
        out[f"sem_seg_head.pixel_decoder.multi_scale_features.{i}"] = (f"pixel decoder multi_scale_features[{i}]", fmap)
    out["sem_seg_head.pixel_decoder.mask_features"] = ("pixel decoder mask_features (mask_projection)",
                                                       decoded.mask_features)
    out["sem_seg_head.predictor.pred_logits"] = ("class_queries_logits", outputs.class_queries_logits)
    out["sem_seg_head.predictor.pred_masks"] = ("masks_queries_logits", outputs.masks_queries_logits)
    auxiliary = outputs.auxiliary_logits or []
    if len(auxiliary) != cfg["MODEL"]["MASK_FORMER"]["DEC_LAYERS"] - 1:
        raise ParityError(f"the port returned {len(auxiliary)} auxiliary predictions; DEC_LAYERS="
                          f"{cfg['MODEL']['MASK_FORMER']['DEC_LAYERS']} makes the original return DEC_LAYERS - 1")
    for i, aux in enumerate(auxiliary):
        out[f"sem_seg_head.predictor.aux_outputs.{i}.pred_logits"] = (f"auxiliary_logits[{i}].class_queries_logits",
                                                                      aux["class_queries_logits"])
        out[f"sem_seg_head.predictor.aux_outputs.{i}.pred_masks"] = (f"auxiliary_logits[{i}].masks_queries_logits",
                                                                     aux["masks_queries_logits"])
    out.update(postprocessed(recipe, processor, dump, outputs))
    return out


def postprocessed(recipe: Recipe, processor, dump: Dump, outputs) -> dict[str, tuple[str, torch.Tensor]]:
    """The original's post-processing rules applied to the port's raw outputs, paired with the original's `return.*`
    references (transformers' own post_process_* are compared in processor_checks)."""
    from parity.families.mask2former import postprocess

    return postprocess.port_outputs(recipe, processor, dump, outputs)


def processor_checks(recipe: Recipe, processor, dump: Dump):
    """Mask2FormerImageProcessor on the RAW image vs detectron2's test-time preprocessing (what fed the backbone)."""
    raw = dump.raw_image()
    encoded = processor(images=raw, return_tensors="pt")
    origin = dump.inputs["pixel_values"]
    checks = [("pixel_values", f"{type(processor).__name__}(images=raw).pixel_values", origin, encoded["pixel_values"])]
    note = ("detectron2 resizes the short side (ResizeShortestEdge, PIL bilinear on uint8) and ZERO-PADS the "
            "normalised image bottom/right to a multiple of SIZE_DIVISIBILITY; Mask2FormerImageProcessor's "
            "size_divisor instead rounds the RESIZE target up to the multiple (the image is stretched, not padded)")
    image = dump.inputs.get("image")
    if image is not None:
        h, w = image.shape[-2:]
        unpadded = type(processor)(**{**processor.to_dict(), "size_divisor": 0})
        plain = unpadded(images=raw, return_tensors="pt")["pixel_values"]
        if tuple(plain.shape[-2:]) == (h, w):
            checks.append(("pixel_values[valid region]", "same processor with size_divisor=0 (resize only)",
                           origin[..., :h, :w], plain))
    if any(name.startswith("return.") for name in dump.references):
        from parity.families.mask2former import postprocess

        outputs = _last_outputs.get("outputs")
        if outputs is not None:
            checks.extend(postprocess.image_processor_checks(recipe, processor, dump, outputs))
            note += ("; post-processing (postprocess.* checks): transformers' post_process_* upsample the mask logits "
                     "of the whole PADDED canvas to a fixed 384x384 and then to the target size, while detectron2 "
                     "upsamples to the padded size, crops the padding away and resizes (sem_seg_postprocess) -- label "
                     "maps and panoptic segment areas move at object borders; instance scores are re-computed by "
                     "transformers from those resized masks, the original keeps DETECTIONS_PER_IMAGE top-k pairs")
    return checks, {"processor": type(processor).__name__, "note": note}
