"""ViT-MSN origin side: runs the ORIGINAL facebookresearch/msn `src/deit.py` (Docker image images/msn).

The upstream repository is not a package: the image clones it at a pinned commit and puts it on PYTHONPATH, so
`import src.deit` is the upstream module. Checkpoints are MSN's training container (msn_train.save_checkpoint); the
weights come out the way msn's own eval code reads them (logistic_eval.load_pretrained / init_model): take
ck['target_encoder'], strip 'module.', build the encoder with fc=None and load non-strictly, which skips exactly the
projection head fc.* (a registered child set to None). Upstream imports live inside functions, so
`fixture_state_dict` runs in the torch-only `fixtures` environment.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parity.contracts.errors import ParityError
from parity.contracts.recipe import Recipe
from parity.origin.capture import CaptureLog
from parity.origin.checkpoint import read_torch_file
from parity.origin.redraw import Site, redraw

MSN_COMMIT = "4388dc1eadbe3042b85d3296d41b9b207656e043"
UPSTREAM = f"facebookresearch/msn @ {MSN_COMMIT} (src/deit.py)"
PACKAGES = ("torch", "torchvision", "numpy", "pillow")
HEAD_PREFIX = "fc."
"""msn_train.init_model's projection head; msn's eval sets encoder.fc = None, so it is never loaded."""


# ----------------------------------------------------------------------------------------------- checkpoint reading
def read_container(checkpoint: Path) -> dict[str, Any]:
    """torch.load(weights_only=True) of MSN's training dict, with one-line errors."""
    obj = read_torch_file(checkpoint)
    if not isinstance(obj, dict) or "target_encoder" not in obj:
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ParityError(f"checkpoint {checkpoint} is not an MSN training checkpoint (no 'target_encoder'; has {keys})")
    return obj


def target_encoder_state(container: dict[str, Any]) -> dict[str, torch.Tensor]:
    """logistic_eval.load_pretrained: {k.replace('module.', ''): v for k, v in ck['target_encoder'].items()}."""
    state = container["target_encoder"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ParityError("ck['target_encoder'] is not a state dict of tensors")
    return {k.replace("module.", ""): v for k, v in state.items()}


def encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What load_state_dict(strict=False) into VisionTransformer(fc=None) keeps: everything but the fc.* head."""
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}


def check_encoder_keys(recipe: Recipe, state: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """The keys src.deit.VisionTransformer(fc=None) has, derived from the recipe (no upstream import needed)."""
    cfg = recipe.original_config["constructor"]
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias"}
    for i in range(cfg["depth"]):
        for leaf in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{leaf}.weight", f"blocks.{i}.{leaf}.bias"}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ParityError(f"checkpoint {checkpoint} does not fit src.deit.{recipe.original_config['factory']}: "
                          f"missing keys {missing[:3]} ({len(missing)}), unexpected keys {unexpected[:3]} "
                          f"({len(unexpected)})")
    grid = cfg["img_size"][0] // cfg["patch_size"]
    if tuple(state["pos_embed"].shape) != (1, grid * grid + 1, cfg["embed_dim"]):
        raise ParityError(f"pos_embed {tuple(state['pos_embed'].shape)} does not fit img_size {cfg['img_size'][0]} / "
                          f"patch {cfg['patch_size']}")


def fixture_state_dict(recipe: Recipe, checkpoint: Path) -> dict[str, torch.Tensor]:
    """MSN's documented load recipe without the upstream package: target_encoder, strip 'module.', drop fc.*."""
    state = encoder_keys(target_encoder_state(read_container(checkpoint)))
    check_encoder_keys(recipe, state, checkpoint)
    return state


# ----------------------------------------------------------------------------------------------- the original model
def build_original(recipe: Recipe, with_head: bool = False) -> nn.Module:
    """src.deit.VisionTransformer with the recipe's constructor arguments (what deit.<factory>() passes)."""
    import src.deit as deit  # upstream facebookresearch/msn, on PYTHONPATH in the msn image

    cfg = dict(recipe.original_config["constructor"])
    eps = cfg.pop("layer_norm_eps")
    model = deit.VisionTransformer(norm_layer=functools.partial(nn.LayerNorm, eps=eps), **cfg)
    model.fc = None
    if with_head:
        model.fc = projection_head(recipe)
    return model.eval()


def projection_head(recipe: Recipe) -> nn.Module:
    """msn_train.init_model's head (use_bn=True), built here because msn_train imports torchvision datasets code."""
    head = recipe.original_config["projection_head"]
    dim, hidden, out = recipe.original_config["constructor"]["embed_dim"], head["hidden_dim"], head["output_dim"]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["fc1"] = nn.Linear(dim, hidden)
    if head["use_bn"]:
        layers["bn1"] = nn.BatchNorm1d(hidden)
    layers["gelu1"] = nn.GELU()
    layers["fc2"] = nn.Linear(hidden, hidden)
    if head["use_bn"]:
        layers["bn2"] = nn.BatchNorm1d(hidden)
    layers["gelu2"] = nn.GELU()
    layers["fc3"] = nn.Linear(hidden, out)
    return nn.Sequential(layers)


def redraw_rule(site: Site) -> torch.Tensor:
    """Scales for re-drawing every floating parameter and buffer (no LayerNorm left at 1, no bias at 0)."""
    if isinstance(site.owner, (nn.LayerNorm, nn.BatchNorm1d)) and site.leaf == "weight":
        return 1 + 0.1 * site.normal
    if site.leaf == "running_var":
        return 0.5 + torch.rand(site.tensor.shape, generator=site.generator)
    if site.leaf == "running_mean":
        return 0.1 * site.normal
    if site.leaf == "bias":
        return 0.05 * site.normal
    if isinstance(site.owner, (nn.Linear, nn.Conv2d)):
        return min(max(site.tensor[0].numel() ** -0.5, 0.02), 0.1) * site.normal
    return 0.3 * site.normal  # cls_token, pos_embed


def generate_checkpoint(recipe: Recipe, path: Path) -> None:
    """A tiny checkpoint in MSN's training container, the way msn_train.save_checkpoint writes it (single process:
    the DDP 'module.' prefix is added explicitly, as world_size > 1 training produces)."""
    assert recipe.checkpoint.generate is not None
    seed = recipe.checkpoint.generate.seed
    torch.manual_seed(seed)
    encoder = build_original(recipe, with_head=True)
    target = build_original(recipe, with_head=True)
    redraw(encoder, seed, redraw_rule)
    redraw(target, seed + 1, redraw_rule)
    head = recipe.original_config["projection_head"]
    bound = (1.0 / head["output_dim"]) ** 0.5
    prototypes = torch.empty(recipe.original_config["num_proto"], head["output_dim"]).uniform_(-bound, bound)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters()] + [prototypes])
    container = {
        "encoder": {f"module.{k}": v for k, v in encoder.state_dict().items()},
        "opt": optimizer.state_dict(),
        "prototypes": prototypes,
        "target_encoder": {f"module.{k}": v for k, v in target.state_dict().items()},
        "epoch": 1, "loss": 0.0, "batch_size": 1, "world_size": 2, "lr": 1e-3, "temperature": 0.1,
    }
    torch.save(container, str(path))


def load_original(recipe: Recipe, checkpoint: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """logistic_eval.init_model + load_pretrained: fc = None, strip 'module.', load_state_dict(strict=False); every
    key but fc.* must match (the eval code only logs mismatches; here they are errors)."""
    state = target_encoder_state(read_container(checkpoint))
    model = build_original(recipe)
    result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not k.startswith(HEAD_PREFIX)]
    if result.missing_keys or unexpected:
        raise ParityError(f"checkpoint {checkpoint} does not fit the original model: missing keys "
                          f"{result.missing_keys[:3]}, unexpected keys {unexpected[:3]}")
    return model, model.state_dict()


# ----------------------------------------------------------------------------------------------- preprocessing
def preprocess(recipe: Recipe, raw: np.ndarray, *, keep_size: bool) -> torch.Tensor:
    """msn eval transform: Resize(256) + CenterCrop(224) + ToTensor + Normalize (scaled to img_size). An image at the
    model resolution, or the interpolation image (keep_size), is only converted and normalised."""
    pre = recipe.original_config["preprocessing"]
    size = recipe.original_config["constructor"]["img_size"][0]
    image = torch.from_numpy(np.array(raw, copy=True)).permute(2, 0, 1).float() / 255.0
    if not keep_size and tuple(raw.shape[:2]) != (size, size):
        import torchvision.transforms.functional as tvf
        from PIL import Image

        pil = tvf.center_crop(tvf.resize(Image.fromarray(raw), pre["resize"]), pre["crop"])
        image = tvf.to_tensor(pil)
    mean = torch.tensor(pre["mean"]).view(3, 1, 1)
    std = torch.tensor(pre["std"]).view(3, 1, 1)
    return ((image - mean) / std)[None]


def interp_sizes(images: dict[str, np.ndarray]) -> list[int]:
    return sorted(int(name[len("image"):]) for name in images if name != "image" and name[len("image"):].isdigit())


def check_square_grid(recipe: Recipe, size: int) -> None:
    """The original only interpolates square grids, by scale_factor=sqrt(npatch / N); F.interpolate floors
    grid * scale_factor, which for e.g. 14 -> 29 patches (464 px at patch 16) gives 28: the original would crash on a
    position table one row short. transformers passes size=(29, 29) and works. Refuse such sizes up front."""
    cfg = recipe.original_config["constructor"]
    grid, new = cfg["img_size"][0] // cfg["patch_size"], size // cfg["patch_size"]
    if math.floor(grid * math.sqrt(new * new / (grid * grid))) != new:
        raise ParityError(f"interpolation to {size}px: the original's scale_factor would floor to the wrong grid")


# ----------------------------------------------------------------------------------------------- captures
def run_captures(recipe: Recipe, model: nn.Module, images: dict[str, np.ndarray], device: str
                 ) -> tuple[CaptureLog, CaptureLog]:
    """VisionTransformer.forward as msn's eval calls it (fc = None), hooks on patch_embed, every block and the final
    norm; then once per extra image resolution, with the interpolated position table recorded."""
    model = model.to(device).eval()
    depth = len(model.blocks)
    inputs, refs = CaptureLog(), CaptureLog()
    state = {"prefix": ""}
    handles = []

    def hook(path: str, layout: str):
        def fn(_module, _args, output):
            refs.add(f"{state['prefix']}{path}", output.float(), module=f"forward hook: {path}", layout=layout)
        return fn

    handles.append(model.patch_embed.register_forward_hook(hook("patch_embed", "(B, N_patches, C)")))
    for i in range(depth):
        handles.append(model.blocks[i].register_forward_hook(hook(f"blocks.{i}", "(B, 1+N, C), token 0 = CLS")))
    handles.append(model.norm.register_forward_hook(hook("norm", "(B, 1+N, C), token 0 = CLS")))
    original_interp = model.interpolate_pos_encoding

    def interp_wrapper(x, pos_embed):
        result = original_interp(x, pos_embed)
        if state["prefix"]:
            refs.add(f"{state['prefix']}interpolate_pos_encoding", result.float(),
                     module="return value of VisionTransformer.interpolate_pos_encoding", layout="(1, 1+N, C)")
        return result

    model.interpolate_pos_encoding = interp_wrapper
    try:
        with torch.no_grad():
            pixels = preprocess(recipe, images["image"], keep_size=False).to(device)
            inputs.add("pixel_values", pixels, meaning="msn eval transform of image.png, NCHW")
            out = model(pixels)
            refs.add("return", out.float(), module="return value of VisionTransformer.forward (fc=None)",
                     layout="(B, C)")
            for size in interp_sizes(images):
                check_square_grid(recipe, size)
                state["prefix"] = f"interp{size}."
                pixels = preprocess(recipe, images[f"image{size}"], keep_size=True).to(device)
                inputs.add(f"pixel_values_{size}", pixels, meaning=f"image{size}.png normalised, NCHW")
                out = model(pixels)
                refs.add(f"interp{size}.return", out.float(), module="return value of VisionTransformer.forward",
                         layout="(B, C)")
    finally:
        for handle in handles:
            handle.remove()
        del model.interpolate_pos_encoding
    return inputs, refs
