"""CLIPSeg port side: transformers CLIPSegForImageSegmentation (or CLIPSegModel for a bare CLIP tower), the weight
mapping, the offline CLIP tokenizer and the port capture plan.

Runs in the transformers environment; never imports the original `clip` / clipseg code and never unpickles anything.
The tokenizer is built from CLIP's BPE file as the open_clip wheel ships it (read as data; open_clip is not imported).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from functools import cache
from pathlib import Path

import torch

from parity.contracts.errors import ParityError
from parity.contracts.recipe import Recipe
from parity.families.clipseg.spec import decoder_layers, returned_activation_layers, unported_option
from parity.port.dump import Dump
from parity.port.hooks import ForwardHooks
from parity.port.rules import Rule, drop, rename, split_rows, transpose

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_MD5 = "933b7abbbbde62c36f02f0e6ccde464f"
VOCAB_SIZE = 49408


def _has_decoder(recipe: Recipe) -> bool:
    return recipe.original_config["decoder"] is not None


def hf_config(recipe: Recipe):
    from transformers import CLIPSegConfig

    c = recipe.original_config["clip"]
    text = {
        "vocab_size": c["vocab_size"], "hidden_size": c["transformer_width"],
        "intermediate_size": 4 * c["transformer_width"], "num_hidden_layers": c["transformer_layers"],
        "num_attention_heads": c["transformer_heads"], "max_position_embeddings": c["context_length"],
        "hidden_act": "quick_gelu", "layer_norm_eps": c["layer_norm_eps"], "attention_dropout": 0.0,
        # pooling at the first EOT (49407) = the original's argmax(input_ids) for tokenizer output
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0,
    }
    vision = {
        "hidden_size": c["vision_width"], "intermediate_size": 4 * c["vision_width"],
        "num_hidden_layers": c["vision_layers"], "num_attention_heads": c["vision_width"] // 64,
        "image_size": c["image_resolution"], "patch_size": c["vision_patch_size"], "hidden_act": "quick_gelu",
        "layer_norm_eps": c["layer_norm_eps"], "attention_dropout": 0.0,
    }
    values = {"text_config": text, "vision_config": vision, "projection_dim": c["embed_dim"]}
    dec = recipe.original_config["decoder"]
    if dec is not None:
        option = unported_option(dec)
        if option is not None:
            raise ParityError(f"{recipe.id}: CLIPDensePredT option {option}={dec[option]!r} has no transformers "
                              "equivalent")
        values.update({
            "extract_layers": decoder_layers(dec["extract_layers"]), "reduce_dim": dec["reduce_dim"],
            "decoder_num_attention_heads": dec["n_heads"], "decoder_intermediate_size": 2048,
            "decoder_attention_dropout": 0.0, "conditional_layer": dec["cond_layer"],
            "use_complex_transposed_convolution": dec["complex_trans_conv"],
        })
    values.update(recipe.hf.config_overrides)
    return CLIPSegConfig(**values)


def _tower_rules(src: str, dst: str) -> list[Rule]:
    def block_rules(kind: str, s: str, d: str) -> list[Rule]:
        blk = s + r"resblocks\.(\d+)\."
        return [
            Rule(f"{kind} fused in_proj -> q/k/v", blk + r"attn\.in_proj_(weight|bias)",
                 (rf"{d}.encoder.layers.\1.self_attn.q_proj.\2", rf"{d}.encoder.layers.\1.self_attn.k_proj.\2",
                  rf"{d}.encoder.layers.\1.self_attn.v_proj.\2"), op="split", transform=split_rows(3)),
            rename(f"{kind} attention out_proj", blk + r"attn\.out_proj\.(weight|bias)",
                   rf"{d}.encoder.layers.\1.self_attn.out_proj.\2"),
            rename(f"{kind} norms", blk + r"ln_([12])\.(weight|bias)", rf"{d}.encoder.layers.\1.layer_norm\2.\3"),
            rename(f"{kind} mlp c_fc", blk + r"mlp\.c_fc\.(weight|bias)", rf"{d}.encoder.layers.\1.mlp.fc1.\2"),
            rename(f"{kind} mlp c_proj", blk + r"mlp\.c_proj\.(weight|bias)", rf"{d}.encoder.layers.\1.mlp.fc2.\2"),
        ]

    vis, txt = f"{dst}vision_model", f"{dst}text_model"
    return [
        rename("logit scale", src + r"logit_scale", f"{dst}logit_scale"),
        rename("token embedding", src + r"token_embedding\.weight", f"{txt}.embeddings.token_embedding.weight"),
        rename("text position table", src + r"positional_embedding", f"{txt}.embeddings.position_embedding.weight"),
        *block_rules("text", src + r"transformer\.", txt),
        rename("text final norm", src + r"ln_final\.(weight|bias)", rf"{txt}.final_layer_norm.\1"),
        transpose("text projection (x @ P -> Linear, transposed)", src + r"text_projection",
                  f"{dst}text_projection.weight"),
        rename("class embedding", src + r"visual\.class_embedding", f"{vis}.embeddings.class_embedding"),
        rename("vision position table", src + r"visual\.positional_embedding",
               f"{vis}.embeddings.position_embedding.weight"),
        rename("patch embedding conv (no bias)", src + r"visual\.conv1\.weight", f"{vis}.embeddings.patch_embedding.weight"),
        rename("pre-transformer norm", src + r"visual\.ln_pre\.(weight|bias)", rf"{vis}.pre_layrnorm.\1"),
        *block_rules("vision", src + r"visual\.transformer\.", vis),
        rename("post norm", src + r"visual\.ln_post\.(weight|bias)", rf"{vis}.post_layernorm.\1"),
        transpose("visual projection (x @ P -> Linear, transposed)", src + r"visual\.proj",
                  f"{dst}visual_projection.weight"),
    ]


def rules(recipe: Recipe) -> list[Rule]:
    if not _has_decoder(recipe):
        return _tower_rules("", "")
    blk = r"blocks\.(\d+)\."
    return [
        *_tower_rules(r"clip_model\.", "clip."),
        drop("model.* = clip_model.visual.* (CLIPDensePredT.model is an alias of the same module)", r"model\..*"),
        rename("FiLM", r"film_(mul|add)\.(weight|bias)", r"decoder.film_\1.\2"),
        drop("reduce.* (trained and saved, but CLIPDensePredT.forward never uses it)", r"reduce\.(weight|bias)"),
        rename("per-layer reductions", r"reduces\.(\d+)\.(weight|bias)", r"decoder.reduces.\1.\2"),
        rename("transposed conv head", r"trans_conv\.((?:\d+\.)?)(weight|bias)", r"decoder.transposed_convolution.\1\2"),
        Rule("decoder fused in_proj -> q/k/v", blk + r"self_attn\.in_proj_(weight|bias)",
             (r"decoder.layers.\1.self_attn.q_proj.\2", r"decoder.layers.\1.self_attn.k_proj.\2",
              r"decoder.layers.\1.self_attn.v_proj.\2"), op="split", transform=split_rows(3)),
        rename("decoder attention out_proj", blk + r"self_attn\.out_proj\.(weight|bias)",
               r"decoder.layers.\1.self_attn.out_proj.\2"),
        rename("decoder feed-forward", blk + r"linear([12])\.(weight|bias)", r"decoder.layers.\1.mlp.fc\2.\3"),
        rename("decoder post-norms", blk + r"norm([12])\.(weight|bias)", r"decoder.layers.\1.layer_norm\2.\3"),
    ]


# ----------------------------------------------------------------------------------------------- processor
def bpe_path() -> Path:
    """CLIP's BPE merges as the open_clip wheel ships them (located without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ParityError("the transformers environment lacks open_clip_torch (it provides CLIP's BPE vocabulary)")
    path = Path(list(spec.submodule_search_locations)[0]) / BPE_FILE
    if hashlib.md5(path.read_bytes()).hexdigest() != BPE_MD5:
        raise ParityError(f"{path} is not OpenAI's {BPE_FILE} (md5 differs from {BPE_MD5})")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table; its ORDER (printable bytes first, then the rest shifted past 255)
    is the order of the first 256 vocabulary entries."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    order, chars = list(printable), [chr(b) for b in printable]
    for b in range(256):
        if b not in printable:
            order.append(b)
            chars.append(chr(256 + len(order) - len(printable) - 1))
    return dict(zip(order, chars))


@cache
def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary SimpleTokenizer derives from the BPE file: 256 bytes, 256 bytes+</w>, 48894 merges, 2 specials."""
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m) for m in merges] + \
        ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ParityError(f"CLIP vocabulary built from {BPE_FILE} has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def build_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)
    if tokenizer.vocab_size != VOCAB_SIZE or len(tokenizer) != VOCAB_SIZE:
        raise ParityError(f"CLIPTokenizer has {tokenizer.vocab_size} tokens, expected {VOCAB_SIZE}")
    return tokenizer


def build_processor(recipe: Recipe):
    from transformers import CLIPSegProcessor, ViTImageProcessor

    pre = recipe.original_config["preprocessing"]
    image_processor = ViTImageProcessor(size={"height": pre["size"], "width": pre["size"]}, image_mean=pre["mean"],
                                        image_std=pre["std"], do_resize=True, do_rescale=True, do_normalize=True)
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=build_tokenizer())


def _encode_texts(processor, texts: list[str]) -> torch.Tensor:
    """Padded to 77 with 0 after EOT, as clip.tokenize does (HF's CLIP pad id is EOT; the original pads with 0)."""
    encoded = processor.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = encoded["input_ids"].clone()
    ids[encoded["attention_mask"] == 0] = 0
    return ids


def processor_checks(recipe: Recipe, processor, dump: Dump):
    """Tokens compared id for id with the original's clip.tokenize; pixel values from the raw images."""
    checks = []
    texts = list(recipe.spec.texts)
    checks.append(("input_ids", "CLIPTokenizer(texts, padding=max_length 77), zero-padded after EOT",
                   dump.inputs["input_ids"], _encode_texts(processor, texts)))
    names = sorted((e.name.rsplit(".", 1)[0] for e in dump.manifest.raw_inputs), key=lambda n: (n != "image", n))
    images = [dump.raw_image(n) for n in names]
    encoded = processor.image_processor(images=images, return_tensors="pt")
    checks.append(("pixel_values", "ViTImageProcessor(images).pixel_values", dump.inputs["pixel_values"],
                   encoded["pixel_values"]))
    note = (f"tokenizer: CLIPTokenizer(vocab, merges) from open_clip's {BPE_FILE} (md5 {BPE_MD5}), "
            f"{processor.tokenizer.vocab_size} tokens; the original pads with 0 where HF pads with <|endoftext|> "
            "(irrelevant to the causal text tower and EOT pooling, normalised here)")
    size = recipe.original_config["preprocessing"]["size"]
    if any((im.height, im.width) != (size, size) for im in images):
        note += (f"; images not at {size}x{size}: the original normalises THEN resizes the tensor (torchvision), "
                 "ViTImageProcessor resizes the PIL image first, so pixel values differ at the edges")
    return checks, {"processor": "CLIPSegProcessor(ViTImageProcessor, CLIPTokenizer)", "note": note}


# ----------------------------------------------------------------------------------------------- captures

def _lnd(t: torch.Tensor) -> torch.Tensor:
    """HF (B, L, C) -> the original's sequence-first (L, B, C)."""
    return t.transpose(0, 1)


def port_captures(recipe: Recipe, model, processor, dump: Dump, device: str) -> dict[str, tuple[str, torch.Tensor]]:
    """The original returns `[activation1] + activations`: the outputs of vision layers [0] + extract_layers in the
    order the blocks run (`returned_activation_layers`); item k pairs with the port's encoder layer of that index,
    never with layer k. The decoder's reduces/blocks pair by module index (both meet the deepest layer first)."""
    pixels = dump.inputs["pixel_values"].to(device)
    ids = dump.inputs["input_ids"].long().to(device)
    clip = model.clip if _has_decoder(recipe) else model
    p = "clip." if _has_decoder(recipe) else ""
    c = recipe.original_config["clip"]
    dec = recipe.original_config["decoder"]
    returned = returned_activation_layers(dec["extract_layers"], c["vision_layers"]) if dec is not None else []
    text_last = f"{p}text_model.encoder.layers.{c['transformer_layers'] - 1}"
    paths = [f"{p}vision_model.pre_layrnorm", f"{p}vision_model.post_layernorm", text_last,
             f"{p}text_model.final_layer_norm", *[f"{p}vision_model.encoder.layers.{i}" for i in returned]]
    if dec is not None:
        paths += ["decoder.film_mul", "decoder.film_add", "decoder.transposed_convolution"]
        paths += [f"decoder.{kind}.{i}" for kind in ("reduces", "layers") for i in range(len(dec["extract_layers"]))]
        if dec["complex_trans_conv"]:
            paths += ["decoder.transposed_convolution.0", "decoder.transposed_convolution.2"]
    calls = ForwardHooks(model, paths)
    embeddings = clip.vision_model.embeddings
    original_interp = embeddings.interpolate_pos_encoding
    tables: list[torch.Tensor] = []

    def interp_wrapper(*args, **kwargs):
        table = original_interp(*args, **kwargs)
        tables.append(table)
        return table

    embeddings.interpolate_pos_encoding = interp_wrapper
    out: dict[str, tuple[str, torch.Tensor]] = {}
    try:
        if dec is None:
            image = clip.get_image_features(pixel_values=pixels).pooler_output
            text = clip.get_text_features(input_ids=ids).pooler_output
            out["visual.ln_pre"] = ("vision_model.pre_layrnorm", calls.first("vision_model.pre_layrnorm"))
            out["visual.ln_post"] = ("vision_model.post_layernorm", calls.first("vision_model.post_layernorm"))
            out["transformer"] = (f"{text_last} (last text layer), sequence-first", _lnd(calls.first(text_last)))
            out["ln_final"] = ("text_model.final_layer_norm", calls.first("text_model.final_layer_norm"))
            out["return.encode_image"] = ("get_image_features().pooler_output", image)
            out["return.encode_text"] = ("get_text_features().pooler_output", text)
            return out
        result = model(input_ids=ids, pixel_values=pixels, interpolate_pos_encoding=True)
        out["clip_model.transformer"] = (f"{text_last} (last text layer), sequence-first", _lnd(calls.first(text_last)))
        out["clip_model.ln_final"] = ("clip.text_model.final_layer_norm", calls.first("clip.text_model.final_layer_norm"))
        out["return.cond"] = ("conditional_embeddings", result.conditional_embeddings)
        if tables:
            out["rescaled_pos_emb"] = ("vision embeddings.interpolate_pos_encoding(...)[0]", tables[0][0])
        for k, layer in enumerate(returned):
            path = f"clip.vision_model.encoder.layers.{layer}"
            out[f"return.activations.{k}"] = (f"{path} (returned item {k} = vision layer {layer}), sequence-first",
                                              _lnd(calls.first(path)))
        out["clip_model.visual.ln_post"] = ("clip.vision_model.post_layernorm",
                                            calls.first("clip.vision_model.post_layernorm"))
        out["return.visual_q"] = ("pooled_output (= visual_projection(post_layernorm(CLS)))", result.pooled_output)
        for i in range(len(dec["extract_layers"])):
            out[f"reduces.{i}"] = (f"decoder.reduces.{i}, sequence-first", _lnd(calls.first(f"decoder.reduces.{i}")))
            out[f"blocks.{i}"] = (f"decoder.layers.{i}, sequence-first", _lnd(calls.first(f"decoder.layers.{i}")))
        out["film_mul"] = ("decoder.film_mul", calls.first("decoder.film_mul"))
        out["film_add"] = ("decoder.film_add", calls.first("decoder.film_add"))
        if dec["complex_trans_conv"]:
            out["trans_conv.0"] = ("decoder.transposed_convolution.0", calls.first("decoder.transposed_convolution.0"))
            out["trans_conv.2"] = ("decoder.transposed_convolution.2", calls.first("decoder.transposed_convolution.2"))
        out["trans_conv"] = ("decoder.transposed_convolution", calls.first("decoder.transposed_convolution"))
        out["return.pred"] = ("logits[:, None] (HF squeezes the channel)", result.logits[:, None])
    finally:
        calls.remove()
        del embeddings.interpolate_pos_encoding
    return out
