"""CLIPSeg origin side: runs the ORIGINAL timojl/clipseg `models/clipseg.py` on OpenAI's `clip` (Docker image
images/clipseg).

CLIPDenseBase.__init__ calls clip.load('ViT-B/16'), which downloads. Here the tower always comes from a local file:
OpenAI's ViT-B-16.pt, resolved and hash-checked by the host like a checkpoint and handed to the step as the asset
`clip-vit-b16` (read by the unmodified clip.load(path)), the clip_model.* part of a combined
checkpoint, or a golden fixture's tower (clip.model.build_model on the plain torch.save dict, which is what clip.load
does after its TorchScript attempt). During construction `clip.load` is redirected to that tower; nothing upstream is
edited. The decoder file is then loaded the way the README does it: load_state_dict(torch.load(decoder), strict=False).
Upstream imports live inside functions, so `fixture_state_dict` runs in the torch-only `fixtures` environment.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parity.contracts.errors import ParityError
from parity.contracts.paths import fixtures_dir
from parity.contracts.recipe import Recipe
from parity.families.clipseg.spec import OPENAI_TOWER_ASSET, returned_activation_layers
from parity.origin.assets import asset
from parity.origin.capture import CaptureLog
from parity.origin.checkpoint import load_state_dict_file
from parity.origin.redraw import Site, redraw

CLIPSEG_COMMIT = "77c4e2dc853880df46413d4a870a725e961f2f73"
CLIP_VERSION = "openai-clip==1.0.1 (openai/CLIP d05afc436d78f1c48dc0dbf8e5980a9d471f35f6)"
UPSTREAM = f"timojl/clipseg @ {CLIPSEG_COMMIT} (models/clipseg.py) on {CLIP_VERSION}"
PACKAGES = ("openai-clip", "torch", "torchvision", "numpy", "pillow", "ftfy", "regex", "setuptools")
ARCHIVE_SCALARS = ("input_resolution", "context_length", "vocab_size")
"""Non-weight int entries of OpenAI's archives; clip.model.build_model deletes them."""
TOWER = "clip_model."
ALIAS = "model."
"""CLIPDensePredT.model is clip_model.visual: its state dict lists the visual tower twice."""


# ----------------------------------------------------------------------------------------------- reading files
def read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    return load_state_dict_file(path, what, mmap=False, hint=", or a TorchScript archive that only clip.load reads")


def tower_keys(clip_cfg: dict[str, Any]) -> set[str]:
    """clip.model.CLIP.state_dict() keys for the recipe's tower (no upstream import needed)."""
    keys = {"positional_embedding", "text_projection", "logit_scale", "token_embedding.weight", "ln_final.weight",
            "ln_final.bias", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
            "visual.conv1.weight"}
    keys |= {f"visual.{n}.{p}" for n in ("ln_pre", "ln_post") for p in ("weight", "bias")}
    block = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
             *[f"{m}.{p}" for m in ("ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2") for p in ("weight", "bias")]]
    keys |= {f"visual.transformer.resblocks.{i}.{b}" for i in range(clip_cfg["vision_layers"]) for b in block}
    keys |= {f"transformer.resblocks.{i}.{b}" for i in range(clip_cfg["transformer_layers"]) for b in block}
    return keys


def decoder_keys(dec: dict[str, Any]) -> set[str]:
    """The requires_grad parameters of CLIPDensePredT = what TrainingLogger.save_weights(only_trainable=True) keeps."""
    keys = {f"{m}.{p}" for m in ("film_mul", "film_add", "reduce") for p in ("weight", "bias")}
    convs = ["trans_conv.0", "trans_conv.2", "trans_conv.4"] if dec["complex_trans_conv"] else ["trans_conv"]
    keys |= {f"{c}.{p}" for c in convs for p in ("weight", "bias")}
    block = ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
             *[f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2") for p in ("weight", "bias")]]
    for i in range(len(dec["extract_layers"])):
        keys |= {f"reduces.{i}.weight", f"reduces.{i}.bias", *[f"blocks.{i}.{b}" for b in block]}
    return keys


def _check(keys: set[str], expected: set[str], path: Path, what: str) -> None:
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise ParityError(f"{what} {path} does not fit the recipe: missing keys {missing[:3]} ({len(missing)}), "
                          f"unexpected keys {unexpected[:3]} ({len(unexpected)})")


def tower_file(recipe: Recipe) -> Path:
    """Where the CLIP tower of a decoder-only checkpoint lives (the recipe's spec.tower)."""
    tower = recipe.spec.tower
    if tower.kind == "fixture":
        return fixtures_dir() / tower.fixture / tower.filename
    if tower.kind == "openai":
        return asset(OPENAI_TOWER_ASSET)
    if tower.kind == "file":
        return Path(tower.path)
    raise ParityError(f"{recipe.id}: a decoder-only checkpoint needs a CLIP tower, and spec.tower says it is inside "
                      "the checkpoint (combined)")


def split_layout(recipe: Recipe, state: dict[str, torch.Tensor], path: Path) -> tuple[dict, dict]:
    """(decoder tensors, tower tensors or {}) of a decoder-only or combined checkpoint."""
    dec_cfg = recipe.original_config["decoder"]
    tower = {k[len(TOWER):]: v for k, v in state.items() if k.startswith(TOWER)}
    decoder = {k: v for k, v in state.items() if not k.startswith((TOWER, ALIAS))}
    _check(set(decoder), decoder_keys(dec_cfg), path, "decoder weights in")
    if tower:
        _check(set(tower) - set(ARCHIVE_SCALARS), tower_keys(recipe.original_config["clip"]), path, "CLIP tower in")
    return decoder, tower


def fixture_state_dict(recipe: Recipe, checkpoint: Path) -> dict[str, torch.Tensor]:
    """The fixtures' documented recipes without the upstream packages: the CLIP tower as build_model + .float() leaves
    it (fp16 values in fp32, archive scalars deleted); decoder-only files on top of it (strict=False adds nothing
    else), under CLIPDensePredT's names (the model.* aliases of clip_model.visual.* left out)."""
    clip_cfg, dec_cfg = recipe.original_config["clip"], recipe.original_config["decoder"]
    if dec_cfg is None:
        tower = read_tensors(checkpoint, "CLIP checkpoint")
        _check(set(tower) - set(ARCHIVE_SCALARS), tower_keys(clip_cfg), checkpoint, "CLIP checkpoint")
        return {k: v.float() for k, v in tower.items() if k not in ARCHIVE_SCALARS}
    decoder, tower = split_layout(recipe, read_tensors(checkpoint, "checkpoint"), checkpoint)
    if not tower:
        path = tower_file(recipe)
        expected = recipe.spec.tower.sha256
        if expected and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise ParityError(f"CLIP tower {path} does not have the sha256 the recipe pins ({expected[:16]}…)")
        tower = read_tensors(path, "CLIP tower")
        _check(set(tower) - set(ARCHIVE_SCALARS), tower_keys(clip_cfg), path, "CLIP tower")
    state = {TOWER + k: v.float() for k, v in tower.items() if k not in ARCHIVE_SCALARS}
    state.update({k: v.float() for k, v in decoder.items()})
    return state


# ----------------------------------------------------------------------------------------------- the original model
def clip_from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    """clip.model.build_model(state).float(): what clip.load(path, device='cpu', jit=False) returns for a state dict.
    build_model deletes the archive scalars from the dict it is given and copies the tensors into the model, so it
    gets its own dict, not copies of the tensors."""
    from clip.model import build_model

    return build_model(dict(state)).float().eval()


def load_tower(recipe: Recipe, checkpoint: Path, tower_state: dict[str, torch.Tensor]) -> nn.Module:
    if tower_state:
        return clip_from_state(tower_state)
    path = tower_file(recipe)
    if not path.is_file():
        raise ParityError(f"CLIP tower not found at {path}")
    if recipe.spec.tower.kind == "openai":
        import clip

        model, _ = clip.load(str(path), device="cpu", jit=False)  # the unmodified loader, on a local file
        return model.float().eval()
    return clip_from_state(read_tensors(path, "CLIP tower"))


@contextlib.contextmanager
def clip_load_returns(tower: nn.Module):
    """CLIPDenseBase.__init__ calls clip.load(version, device='cpu', jit=False): hand it the local tower instead."""
    import clip

    original = clip.load
    clip.load = lambda *_args, **_kwargs: (tower, None)
    try:
        yield
    finally:
        clip.load = original


def build_original(recipe: Recipe, tower: nn.Module) -> nn.Module:
    from models.clipseg import CLIPDensePredT  # upstream timojl/clipseg, on PYTHONPATH in the clipseg image

    kwargs = dict(recipe.original_config["decoder"])
    kwargs["extract_layers"] = tuple(kwargs["extract_layers"])
    with clip_load_returns(tower):
        model = CLIPDensePredT(**kwargs)
    return model.eval()


def load_original(recipe: Recipe, checkpoint: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Decoder-only: CLIPDensePredT(...).load_state_dict(torch.load(decoder), strict=False) on the CLIP tower.
    Combined: the same model, loaded strictly (the model.* aliases may be absent). CLIP-only recipes: the tower."""
    if recipe.original_config["decoder"] is None:
        model = load_tower(recipe, checkpoint, {})
        return model, model.state_dict()
    state = read_tensors(checkpoint, "checkpoint")
    decoder, tower_state = split_layout(recipe, state, checkpoint)
    model = build_original(recipe, load_tower(recipe, checkpoint, tower_state))
    result = model.load_state_dict(state, strict=False)
    allowed_missing = (TOWER, ALIAS) if not tower_state else (ALIAS,)
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing)]
    if missing or result.unexpected_keys:
        raise ParityError(f"checkpoint {checkpoint} does not fit CLIPDensePredT: missing keys {missing[:3]}, "
                          f"unexpected keys {result.unexpected_keys[:3]}")
    return model, model.state_dict()


def redraw_rule(site: Site) -> torch.Tensor:
    """Scales for re-drawing every floating tensor (fixture rules)."""
    owner, leaf, tensor, normal = site.owner, site.leaf, site.tensor, site.normal
    if isinstance(owner, nn.LayerNorm) and leaf == "weight":
        return 1 + 0.1 * normal
    if leaf in ("bias", "in_proj_bias"):
        return 0.05 * normal
    if leaf == "logit_scale":
        return torch.tensor(float(np.log(1 / 0.07))) + 0.1 * normal
    if leaf in ("proj", "text_projection"):
        return tensor.shape[0] ** -0.5 * normal
    if leaf == "weight" and isinstance(owner, nn.Embedding):
        return 0.5 * normal
    if tensor.dim() >= 2:
        fan_in = tensor[0].numel()
        if isinstance(owner, nn.ConvTranspose2d):
            fan_in = tensor.shape[0] * tensor[0, 0].numel() / owner.stride[0] ** 2
        return min(max(fan_in ** -0.5, 0.02), 0.1) * normal
    return 0.3 * normal


def fp16_redraw_rule(site: Site) -> torch.Tensor:
    """The same values rounded to fp16, as OpenAI ships CLIP's weights."""
    return redraw_rule(site).half().float()


def generate_checkpoint(recipe: Recipe, path: Path) -> None:
    """A tiny checkpoint in the combined layout (CLIPDensePredT.state_dict(): clip_model.*, the model.* aliases,
    decoder), made by the original classes; the tower is fp16-rounded as OpenAI ships it."""
    from clip.model import CLIP

    assert recipe.checkpoint.generate is not None
    seed = recipe.checkpoint.generate.seed
    c = recipe.original_config["clip"]
    torch.manual_seed(seed)
    tower = CLIP(c["embed_dim"], c["image_resolution"], c["vision_layers"], c["vision_width"], c["vision_patch_size"],
                 c["context_length"], c["vocab_size"], c["transformer_width"], c["transformer_heads"],
                 c["transformer_layers"]).eval()
    redraw(tower, seed, fp16_redraw_rule)
    model = build_original(recipe, tower)
    redraw(nn.ModuleDict({k: m for k, m in model.named_children() if k not in ("clip_model", "model")}), seed + 1,
           redraw_rule)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, str(path))


# ----------------------------------------------------------------------------------------------- captures
def preprocess(recipe: Recipe, images: dict[str, np.ndarray]) -> torch.Tensor:
    """The Quickstart transform: ToTensor -> Normalize(mean, std) -> Resize((size, size)), one row per image."""
    pre = recipe.original_config["preprocessing"]
    mean, std = torch.tensor(pre["mean"]).view(3, 1, 1), torch.tensor(pre["std"]).view(3, 1, 1)
    rows = []
    for name in sorted(images, key=lambda n: (n != "image", n)):
        x = (torch.from_numpy(np.array(images[name], copy=True)).permute(2, 0, 1).float() / 255.0 - mean) / std
        if tuple(x.shape[-2:]) != (pre["size"], pre["size"]):
            import torchvision.transforms as T

            x = T.Resize((pre["size"], pre["size"]))(x)
        rows.append(x)
    return torch.stack(rows)


def run_captures(recipe: Recipe, model: nn.Module, images: dict[str, np.ndarray], device: str
                 ) -> tuple[CaptureLog, CaptureLog]:
    import clip

    model = model.to(device).eval()
    texts = list(recipe.spec.texts)
    inputs, refs = CaptureLog(), CaptureLog()
    pixels = preprocess(recipe, images).to(device)
    tokens = clip.tokenize(texts).to(device)
    if recipe.original_config["decoder"] is not None and len(texts) != pixels.shape[0]:
        raise ParityError(f"{recipe.id}: {len(texts)} prompts for {pixels.shape[0]} images (one prompt per image)")
    inputs.add("pixel_values", pixels, meaning="ToTensor + Normalize (+ Resize) of image*.png, NCHW")
    inputs.add("input_ids", tokens.long(), meaning=f"clip.tokenize({texts}) (int32 upstream, stored as int64)")
    handles = []
    pending: dict[str, torch.Tensor] = {}

    def hook(path: str, layout: str, defer: bool = False):
        def fn(_module, _args, output):
            if defer:
                pending[path] = output
            elif path not in refs:
                refs.add(path, output.float(), module=f"forward hook: {path}", layout=layout)
        return fn

    def on(path: str, layout: str, defer: bool = False):
        handles.append(model.get_submodule(path).register_forward_hook(hook(path, layout, defer)))

    try:
        with torch.no_grad():
            if recipe.original_config["decoder"] is None:
                on("visual.ln_pre", "(B, 197, 768) NLD")
                on("visual.ln_post", "(B, 768)")
                on("transformer", "(77, B, width) LND")
                on("ln_final", "(B, 77, width) NLD")
                image = model.encode_image(pixels)
                text = model.encode_text(tokens)
                refs.add("return.encode_image", image.float(), module="return value of CLIP.encode_image")
                refs.add("return.encode_text", text.float(), module="return value of CLIP.encode_text")
                return inputs, refs
            _decoder_captures(model, pixels, texts, refs, on, pending)
    finally:
        for handle in handles:
            handle.remove()
        for name in ("get_cond_vec", "visual_forward", "rescaled_pos_emb"):
            model.__dict__.pop(name, None)
    return inputs, refs


def _decoder_captures(model, pixels, texts, refs: CaptureLog, on, pending) -> None:
    """CLIPDensePredT.forward(pixels, prompts, return_features=True), recorded in the order the original computes."""
    on("clip_model.transformer", "(77, B, width) LND")
    on("clip_model.ln_final", "(B, 77, width) NLD")
    on("clip_model.visual.ln_post", "(B, 768)", defer=True)
    for i in range(len(model.reduces)):
        on(f"reduces.{i}", "(L, B, rd) LND")
        on(f"blocks.{i}", "(L, B, rd) LND")
    on("film_mul", "(B, rd)")
    on("film_add", "(B, rd)")
    if isinstance(model.trans_conv, nn.Sequential):
        on("trans_conv.0", "NCHW")
        on("trans_conv.2", "NCHW")
    on("trans_conv", "NCHW")
    get_cond_vec, visual_forward, rescaled = model.get_cond_vec, model.visual_forward, model.rescaled_pos_emb

    def cond_wrapper(*args, **kwargs):
        cond = get_cond_vec(*args, **kwargs)
        refs.add("return.cond", cond.float(), module="return value #3 (CLIPDenseBase.get_cond_vec)", layout="(B, 512)")
        return cond

    def pos_wrapper(*args, **kwargs):
        table = rescaled(*args, **kwargs)
        refs.add("rescaled_pos_emb", table.float(), module="return value of CLIPDenseBase.rescaled_pos_emb",
                 layout="(1+g*g, 768)")
        return table

    layers = returned_activation_layers(model.extract_layers, len(model.model.transformer.resblocks))

    def visual_wrapper(*args, **kwargs):
        visual_q, activations, affinities = visual_forward(*args, **kwargs)
        if len(activations) != len(layers):
            raise ParityError(f"visual_forward returned {len(activations)} activations, [0] + extract_layers names "
                              f"{len(layers)} layers ({layers})")
        for i, (act, layer) in enumerate(zip(activations, layers, strict=True)):
            refs.add(f"return.activations.{i}", act.float(), module=f"return value #4, list item {i} (output of "
                     f"visual resblock {layer})", layout="(L, B, 768) LND")
        refs.add("clip_model.visual.ln_post", pending.pop("clip_model.visual.ln_post").float(),
                 module="forward hook: clip_model.visual.ln_post", layout="(B, 768)")
        refs.add("return.visual_q", visual_q.float(), module="return value #2", layout="(B, 512)")
        return visual_q, activations, affinities

    model.get_cond_vec, model.visual_forward, model.rescaled_pos_emb = cond_wrapper, visual_wrapper, pos_wrapper
    pred, _visual_q, _cond, _activations = model(pixels, texts, return_features=True)
    refs.add("return.pred", pred.float(), module="return value #1", layout="(B, 1, H, W) logits")
