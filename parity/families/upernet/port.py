"""UperNet-ConvNeXt port side: transformers UperNetForSemanticSegmentation + ConvNextBackbone, SegformerImageProcessor.

Runs in the transformers environment; never imports mmseg / mmcv / mmcls / mmpretrain / mmengine, never unpickles.
The mapping is the seed script's (downsample layers, stages, gamma -> layer_scale_parameter, bn -> batch_norm, norms,
conv_seg -> classifier), written as declared rules under strict accounting.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from parity.contracts.recipe import Recipe
from parity.families.upernet.config import arch, model_cfg, structure
from parity.port.dump import Dump
from parity.port.hooks import ForwardHooks
from parity.port.rules import Rule, rename


def hf_config(recipe: Recipe):
    from transformers import ConvNextConfig, UperNetConfig

    model = model_cfg(recipe)
    settings = arch(recipe)
    wired = structure(recipe)
    head, aux = model["decode_head"], model.get("auxiliary_head")
    backbone = model["backbone"]
    num_classes = head["num_classes"]
    id2label = recipe.spec.id2label(num_classes)
    backbone_config = ConvNextConfig(
        num_channels=3,
        patch_size=4,
        depths=list(settings["depths"]),
        hidden_sizes=list(settings["channels"]),
        hidden_act="gelu",
        layer_scale_init_value=backbone.get("layer_scale_init_value", 1e-6),
        drop_path_rate=0.0,
        out_features=[f"stage{i + 1}" for i in wired["outputs"]],
    )
    values: dict[str, Any] = {
        "backbone_config": backbone_config,
        "hidden_size": head["channels"],
        "pool_scales": wired["pool_scales"],
        "use_auxiliary_head": wired["auxiliary"],
        "loss_ignore_index": 255,
        "num_labels": num_classes,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }
    if aux is not None:
        values.update({
            "auxiliary_loss_weight": aux["loss_decode"]["loss_weight"],
            "auxiliary_in_channels": aux["in_channels"],
            "auxiliary_channels": aux["channels"],
            "auxiliary_num_convs": aux.get("num_convs", 2),
            "auxiliary_concat_input": False,
        })
    values.update(recipe.hf.config_overrides)
    return UperNetConfig(**values)


B = r"backbone\."
CONV_MODULE = r"(?P<path>decode_head\.(?:psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck)" \
              r"|auxiliary_head\.convs\.\d+)"


def rules(recipe: Recipe) -> list[Rule]:
    stage = B + r"stages\.(?P<i>\d)\.(?P<j>\d+)\."
    out = [
        rename("stem conv", B + r"downsample_layers\.0\.0\.(weight|bias)", r"backbone.embeddings.patch_embeddings.\1"),
        rename("stem norm", B + r"downsample_layers\.0\.1\.(weight|bias)", r"backbone.embeddings.layernorm.\1"),
        rename("downsample norm + conv (LayerNorm2d index 0, conv index 1 in both)",
               B + r"downsample_layers\.([1-9])\.([01])\.(weight|bias)",
               r"backbone.encoder.stages.\1.downsampling_layer.\2.\3"),
        rename("layer scale gamma -> layer_scale_parameter", stage + r"gamma",
               r"backbone.encoder.stages.\g<i>.layers.\g<j>.layer_scale_parameter"),
        rename("depthwise conv", stage + r"depthwise_conv\.(?P<p>weight|bias)",
               r"backbone.encoder.stages.\g<i>.layers.\g<j>.dwconv.\g<p>"),
        rename("block norm", stage + r"norm\.(?P<p>weight|bias)",
               r"backbone.encoder.stages.\g<i>.layers.\g<j>.layernorm.\g<p>"),
        rename("pointwise convs (nn.Linear in both)", stage + r"pointwise_conv(?P<k>[12])\.(?P<p>weight|bias)",
               r"backbone.encoder.stages.\g<i>.layers.\g<j>.pwconv\g<k>.\g<p>"),
    ]
    for i in structure(recipe)["outputs"]:
        out.append(rename(f"output norm {i} -> hidden_states_norms.stage{i + 1}", B + rf"norm{i}\.(weight|bias)",
                          rf"backbone.hidden_states_norms.stage{i + 1}.\1"))
    out += [
        rename("ConvModule conv (no bias)", CONV_MODULE + r"\.conv\.weight", r"\g<path>.conv.weight"),
        rename("ConvModule bn -> batch_norm",
               CONV_MODULE + r"\.bn\.(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)",
               r"\g<path>.batch_norm.\g<p>"),
        rename("classifiers (conv_seg -> classifier)", r"(decode_head|auxiliary_head)\.conv_seg\.(weight|bias)",
               r"\1.classifier.\2"),
    ]
    return out


def build_processor(recipe: Recipe):
    """SegformerImageProcessor as close to the original test pipeline as its options allow.

    Original: keep-ratio resize (cv2 bilinear) to fit img_scale, Normalize(mean, std, to_rgb), no padding.
    Segformer: fixed-size resize (PIL / torchvision bilinear), rescale 1/255, normalise with mean/255, std/255.
    For the square inputs of the recipes the keep-ratio size is (s, s) with s = img_scale's short side."""
    from transformers import SegformerImageProcessor

    cfg = recipe.original_config
    side = min(cfg["img_scale"])
    norm = cfg["img_norm_cfg"]
    return SegformerImageProcessor(
        do_resize=True,
        size={"height": side, "width": side},
        resample=2,  # PIL.Image.BILINEAR
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[m / 255 for m in norm["mean"]],
        image_std=[s / 255 for s in norm["std"]],
        do_reduce_labels=recipe.spec.reduce_zero_label,
    )



def port_captures(recipe: Recipe, model, processor, dump: Dump, device: str) -> dict[str, tuple[str, torch.Tensor]]:
    """Run the port on the origin's pixel_values; name each port tensor after the origin capture it answers. Stages,
    outputs, laterals, pool scales and the auxiliary head follow the original's config (`structure`)."""
    wired = structure(recipe)
    stages, levels, n_lateral, n_psp = wired["stages"], wired["outputs"], wired["laterals"], len(wired["pool_scales"])
    auxiliary = ["auxiliary_head.convs", "auxiliary_head.classifier"] if wired["auxiliary"] else []
    paths = ["backbone.embeddings", *[f"backbone.encoder.stages.{i}" for i in range(stages)],
             *[f"backbone.encoder.stages.{i}.downsampling_layer.1" for i in range(1, stages)],
             *[f"backbone.hidden_states_norms.stage{i + 1}" for i in levels],
             *[f"decode_head.lateral_convs.{i}" for i in range(n_lateral)],
             *[f"decode_head.psp_modules.{j}" for j in range(n_psp)], "decode_head.psp_modules",
             "decode_head.bottleneck", *[f"decode_head.fpn_convs.{i}" for i in range(n_lateral)],
             "decode_head.fpn_bottleneck", "decode_head.classifier", *auxiliary]
    pre = ["backbone", *[f"decode_head.fpn_convs.{i}" for i in range(n_lateral)], "decode_head.fpn_bottleneck"]
    hooks = ForwardHooks(model, paths, pre)
    pixel_values = dump.inputs["pixel_values"].to(device)
    try:
        outputs = model(pixel_values=pixel_values)
    finally:
        hooks.remove()

    def one(path: str, kind: str = "out") -> Any:
        calls = (hooks.outputs if kind == "out" else hooks.inputs)[path]
        if len(calls) != 1:
            raise RuntimeError(f"port module {path} ran {len(calls)} times, expected once")
        return calls[0]

    out: dict[str, tuple[str, torch.Tensor]] = {}
    out["backbone.input"] = ("backbone pre-hook args[0] (= pixel_values)", one("backbone", "in"))
    out["backbone.downsample_layers.0"] = ("backbone.embeddings", one("backbone.embeddings"))
    for i in range(stages):
        if i:
            path = f"backbone.encoder.stages.{i}.downsampling_layer.1"
            out[f"backbone.downsample_layers.{i}"] = (f"{path} (LayerNorm then this conv)", one(path))
        out[f"backbone.stages.{i}"] = (f"backbone.encoder.stages.{i}", one(f"backbone.encoder.stages.{i}"))
    for i in levels:
        out[f"backbone.norm{i}"] = (f"backbone.hidden_states_norms.stage{i + 1}",
                                    one(f"backbone.hidden_states_norms.stage{i + 1}"))
    for i in range(n_lateral):
        out[f"decode_head.lateral_convs.{i}"] = (f"decode_head.lateral_convs.{i}", one(f"decode_head.lateral_convs.{i}"))
    for j in range(n_psp):
        out[f"decode_head.psp_modules.{j}"] = (f"decode_head.psp_modules.{j}", one(f"decode_head.psp_modules.{j}"))
        out[f"decode_head.psp_modules.output.{j}"] = (f"decode_head.psp_modules output[{j}]",
                                                      one("decode_head.psp_modules")[j])
    out["decode_head.bottleneck"] = ("decode_head.bottleneck", one("decode_head.bottleneck"))
    for i in range(n_lateral):
        path = f"decode_head.fpn_convs.{i}"
        out[f"{path}.input"] = (f"{path} pre-hook args[0]", one(path, "in"))
        out[path] = (path, one(path))
    out["decode_head.fpn_bottleneck.input"] = ("decode_head.fpn_bottleneck pre-hook args[0]",
                                               one("decode_head.fpn_bottleneck", "in"))
    out["decode_head.fpn_bottleneck"] = ("decode_head.fpn_bottleneck", one("decode_head.fpn_bottleneck"))
    out["decode_head.conv_seg"] = ("decode_head.classifier", one("decode_head.classifier"))
    logits = outputs.logits
    out["return.encode_decode"] = ("UperNetForSemanticSegmentation(...).logits (resized to the input)", logits)
    if wired["auxiliary"]:
        out["auxiliary_head.convs"] = ("auxiliary_head.convs (hooked: the output carries it only in the loss)",
                                       one("auxiliary_head.convs"))
        out["auxiliary_head.conv_seg"] = ("auxiliary_head.classifier (hooked)", one("auxiliary_head.classifier"))

    raw = dump.raw_image()
    ori = (raw.height, raw.width)
    at_ori = F.interpolate(logits, size=ori, mode="bilinear", align_corners=False)
    seg = processor.post_process_semantic_segmentation(outputs, target_sizes=[ori])[0]
    out["return.inference"] = ("softmax(bilinear resize of logits to the raw size) (no HF API returns probabilities)",
                               at_ori.softmax(dim=1))
    out["return.simple_test"] = ("SegformerImageProcessor.post_process_semantic_segmentation(target_sizes=[raw])",
                                 seg.float())
    out["return.predict.seg_logits"] = ("bilinear resize of logits to the raw size (as post_process does)", at_ori)
    out["return.predict.pred_sem_seg"] = ("SegformerImageProcessor.post_process_semantic_segmentation", seg.float())
    # A golden fixture carries the other stack's references under "mmseg1.": the same port tensors answer them.
    for name in list(out):
        out[f"mmseg1.{name}"] = out[name]
    return out


def processor_checks(recipe: Recipe, processor, dump: Dump):
    """SegformerImageProcessor on the RAW image vs the original pipeline's tensor; and on the original's resized
    uint8 image with do_resize=False, which isolates normalisation (+ channel order) from the resize kernel."""
    raw = dump.raw_image()
    checks = []
    encoded = processor(images=raw, return_tensors="pt")
    checks.append(("pixel_values", f"{type(processor).__name__}(images=raw).pixel_values",
                   dump.inputs["pixel_values"], encoded["pixel_values"]))
    note = ("resize: original cv2 INTER_LINEAR keep-ratio (mmcv.imrescale), port bilinear fixed size; "
            "the normalisation-only check feeds the original's resized uint8 image")
    if "resized_image" in dump.inputs:
        resized = dump.inputs["resized_image"].numpy()
        encoded = processor(images=resized, do_resize=False, return_tensors="pt", input_data_format="channels_last")
        checks.append(("pixel_values (normalisation only)", f"{type(processor).__name__}(resized, do_resize=False)",
                       dump.inputs["pixel_values"], encoded["pixel_values"]))
    return checks, {"processor": type(processor).__name__, "note": note}
