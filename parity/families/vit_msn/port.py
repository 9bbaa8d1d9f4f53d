"""ViT-MSN port side: transformers ViTMSNModel + ViTImageProcessor, the weight mapping and the port capture plan.

Runs in the transformers environment; never imports the original code and never unpickles anything.
"""

from __future__ import annotations

import torch

from parity.contracts.recipe import Recipe
from parity.port.dump import Dump
from parity.port.rules import Rule, drop, rename, split

BLOCK = r"blocks\.(\d+)\."


def hf_config(recipe: Recipe):
    from transformers import ViTMSNConfig

    cfg = recipe.original_config["constructor"]
    values = {
        "hidden_size": cfg["embed_dim"],
        "num_hidden_layers": cfg["depth"],
        "num_attention_heads": cfg["num_heads"],
        "intermediate_size": int(cfg["embed_dim"] * cfg["mlp_ratio"]),
        "hidden_act": "gelu",  # nn.GELU() (exact erf)
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": cfg["layer_norm_eps"],
        "image_size": cfg["img_size"][0],
        "patch_size": cfg["patch_size"],
        "num_channels": cfg["in_chans"],
        "qkv_bias": cfg["qkv_bias"],
    }
    values.update(recipe.hf.config_overrides)
    return ViTMSNConfig(**values)


def rules(recipe: Recipe) -> list[Rule]:
    return [
        rename("class token", r"cls_token", "embeddings.cls_token"),
        rename("position table", r"pos_embed", "embeddings.position_embeddings"),
        rename("patch embedding conv", r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
        split("fused qkv -> q/k/v projections (rows are q, k, v)", BLOCK + r"attn\.qkv\.(weight|bias)",
             (r"layers.\1.attention.q_proj.\2", r"layers.\1.attention.k_proj.\2", r"layers.\1.attention.v_proj.\2")),
        rename("attention output projection", BLOCK + r"attn\.proj\.(weight|bias)", r"layers.\1.attention.o_proj.\2"),
        rename("pre-attention norm", BLOCK + r"norm1\.(weight|bias)", r"layers.\1.layernorm_before.\2"),
        rename("pre-mlp norm", BLOCK + r"norm2\.(weight|bias)", r"layers.\1.layernorm_after.\2"),
        rename("mlp", BLOCK + r"mlp\.(fc[12])\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
        rename("final norm", r"norm\.(weight|bias)", r"layernorm.\1"),
        drop("MSN projection head (pre-training only; msn's eval sets encoder.fc = None)", r"fc\..*"),
    ]


def build_processor(recipe: Recipe):
    from transformers import ViTImageProcessor

    pre = recipe.original_config["preprocessing"]
    size = recipe.original_config["constructor"]["img_size"][0]
    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=pre["mean"], image_std=pre["std"],
                             do_resize=True, do_rescale=True, do_normalize=True)


def _interp_sizes(dump: Dump) -> list[int]:
    return sorted(int(k.rsplit("_", 1)[1]) for k in dump.inputs if k.startswith("pixel_values_"))


def port_captures(recipe: Recipe, model, processor, dump: Dump, device: str) -> dict[str, tuple[str, torch.Tensor]]:
    """ViTMSNModel on the origin's pixel values; the interpolation passes use interpolate_pos_encoding=True."""
    depth = recipe.original_config["constructor"]["depth"]
    out: dict[str, tuple[str, torch.Tensor]] = {}
    calls: dict[str, list] = {}
    handles = []

    def keep(path: str):
        def fn(_module, args, output):
            calls.setdefault(path, []).append(output[0] if isinstance(output, tuple) else output)
        return fn

    paths = ["embeddings.patch_embeddings", *[f"layers.{i}" for i in range(depth)], "layernorm"]
    for path in paths:
        handles.append(model.get_submodule(path).register_forward_hook(keep(path)))
    embeddings = model.embeddings
    original_interp = embeddings.interpolate_pos_encoding

    def interp_wrapper(*args, **kwargs):
        result = original_interp(*args, **kwargs)
        calls.setdefault("interpolate_pos_encoding", []).append(result)
        return result

    embeddings.interpolate_pos_encoding = interp_wrapper
    try:
        passes = [("", "pixel_values", False)] + [(f"interp{s}.", f"pixel_values_{s}", True) for s in _interp_sizes(dump)]
        for prefix, key, interpolate in passes:
            calls.clear()
            output = model(pixel_values=dump.inputs[key].to(device), interpolate_pos_encoding=interpolate)
            out[f"{prefix}patch_embed"] = ("embeddings.patch_embeddings", calls["embeddings.patch_embeddings"][0])
            for i in range(depth):
                out[f"{prefix}blocks.{i}"] = (f"layers.{i}", calls[f"layers.{i}"][0])
            out[f"{prefix}norm"] = ("layernorm (= last_hidden_state)", output.last_hidden_state)
            out[f"{prefix}return"] = ("last_hidden_state[:, 0] (CLS after the final norm)", output.last_hidden_state[:, 0])
            if interpolate:
                out[f"{prefix}interpolate_pos_encoding"] = ("embeddings.interpolate_pos_encoding(...) return value",
                                                            calls["interpolate_pos_encoding"][0])
    finally:
        for handle in handles:
            handle.remove()
        del embeddings.interpolate_pos_encoding
    return out


def processor_checks(recipe: Recipe, processor, dump: Dump):
    """ViTImageProcessor on the raw images vs the original eval transform's pixel values."""
    checks = []
    size = recipe.original_config["constructor"]["img_size"][0]
    raw = dump.raw_image("image")
    encoded = processor(images=raw, return_tensors="pt")
    checks.append(("pixel_values", "ViTImageProcessor(images=image).pixel_values", dump.inputs["pixel_values"],
                   encoded["pixel_values"]))
    for s in _interp_sizes(dump):
        raw_s = dump.raw_image(f"image{s}")
        encoded = processor(images=raw_s, size={"height": s, "width": s}, return_tensors="pt")
        checks.append((f"pixel_values_{s}", f"ViTImageProcessor(images=image{s}, size={s}).pixel_values",
                       dump.inputs[f"pixel_values_{s}"], encoded["pixel_values"]))
    note = None
    if (raw.height, raw.width) != (size, size):
        note = ("msn's eval transform is Resize(256)+CenterCrop(224); ViTImageProcessor resizes straight to "
                f"{size}x{size} (no crop), so pixel values differ for images not already at the model resolution")
    return checks, {"processor": type(processor).__name__, "note": note}
