"""detectron2 config -> transformers config values, as pure data (no torch, no transformers: unit-tested on the host)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.contracts.errors import ParityError

LABELS = Path(__file__).resolve().parent / "labels"

ENCODER_FFN = 1024
"""MSDeformAttnPixelDecoder.from_config hard-codes the deformable encoder's FFN width (transformer_dim_feedforward)."""
BACKBONE_FEATURES = ["res2", "res3", "res4", "res5"]
"""D2SwinTransformer's output names, one per stage (stride 4, 8, 16, 32)."""


def encoder_levels(cfg: dict[str, Any]) -> list[str]:
    """The backbone features the deformable encoder reads, in the order MSDeformAttnPixelDecoder projects them
    (input_proj.0 is the coarsest: it sorts its inputs by stride, largest first)."""
    features = list(cfg["MODEL"]["SEM_SEG_HEAD"]["DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"])
    return sorted(features, key=BACKBONE_FEATURES.index, reverse=True)


def hf_values(cfg: dict[str, Any]) -> dict[str, Any]:
    """The detectron2 config sections -> Mask2FormerConfig / SwinConfig keyword arguments (pure data, unit-tested)."""
    model = cfg["MODEL"]
    swin, head, m2f = model["SWIN"], model["SEM_SEG_HEAD"], model["MASK_FORMER"]
    if model["BACKBONE"]["NAME"] != "D2SwinTransformer":
        raise ParityError(f"backbone {model['BACKBONE']['NAME']} is not Swin; only Swin variants are ported")
    if head["PIXEL_DECODER_NAME"] != "MSDeformAttnPixelDecoder":
        raise ParityError(f"pixel decoder {head['PIXEL_DECODER_NAME']} is not supported")
    if head.get("DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS", 4) != 4:
        raise ParityError("transformers' pixel decoder hard-codes 4 sampling points")
    if list(head["DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"]) != ["res3", "res4", "res5"]:
        raise ParityError("transformers' pixel decoder hard-codes res3..res5 as deformable-encoder inputs")
    if list(swin["OUT_FEATURES"]) != BACKBONE_FEATURES or list(head["IN_FEATURES"]) != BACKBONE_FEATURES:
        raise ParityError(f"transformers' Swin backbone feeds all four stages {BACKBONE_FEATURES} to the pixel decoder "
                          f"(OUT_FEATURES {swin['OUT_FEATURES']}, IN_FEATURES {head['IN_FEATURES']})")
    decoder = m2f.get("TRANSFORMER_DECODER_NAME", "MultiScaleMaskedTransformerDecoder")
    if decoder != "MultiScaleMaskedTransformerDecoder":
        raise ParityError(f"transformer decoder {m2f['TRANSFORMER_DECODER_NAME']} is not supported")
    if m2f["DEC_LAYERS"] < 1:
        raise ParityError("DEC_LAYERS counts the prediction on the learnable queries: it must be at least 1")
    if swin.get("APE", False):
        raise ParityError("absolute position embedding in Swin is not used by any released Mask2Former")
    backbone = {
        "embed_dim": swin["EMBED_DIM"],
        "depths": list(swin["DEPTHS"]),
        "num_heads": list(swin["NUM_HEADS"]),
        "window_size": swin["WINDOW_SIZE"],
        "patch_size": swin["PATCH_SIZE"],
        "mlp_ratio": swin["MLP_RATIO"],
        "qkv_bias": swin["QKV_BIAS"],
        "image_size": swin["PRETRAIN_IMG_SIZE"],
        "drop_path_rate": 0.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "use_absolute_embeddings": False,
        "layer_norm_eps": 1e-5,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }
    return {
        "backbone_config": backbone,
        "feature_size": head["CONVS_DIM"],
        "mask_feature_size": head["MASK_DIM"],
        "hidden_dim": m2f["HIDDEN_DIM"],
        "encoder_feedforward_dim": ENCODER_FFN,
        "encoder_layers": head["TRANSFORMER_ENC_LAYERS"],
        "decoder_layers": m2f["DEC_LAYERS"],
        "num_attention_heads": m2f["NHEADS"],
        "dim_feedforward": m2f["DIM_FEEDFORWARD"],
        "dropout": m2f["DROPOUT"],
        "pre_norm": m2f["PRE_NORM"],
        "enforce_input_projection": m2f["ENFORCE_INPUT_PROJ"],
        "common_stride": head["COMMON_STRIDE"],
        "ignore_value": head["IGNORE_VALUE"],
        "num_queries": m2f["NUM_OBJECT_QUERIES"],
        "no_object_weight": m2f["NO_OBJECT_WEIGHT"],
        "class_weight": m2f["CLASS_WEIGHT"],
        "mask_weight": m2f["MASK_WEIGHT"],
        "dice_weight": m2f["DICE_WEIGHT"],
        "train_num_points": m2f["TRAIN_NUM_POINTS"],
        "oversample_ratio": m2f["OVERSAMPLE_RATIO"],
        "importance_sample_ratio": m2f["IMPORTANCE_SAMPLE_RATIO"],
        "feature_strides": [4, 8, 16, 32],
        "output_auxiliary_logits": None,
    }
