"""The UperNet-ConvNeXt mutation suite: single corruptions of the converted weights and the capture each must fail first.

Expectations are read off the architecture (which module owns the tensor, where it first runs in the original's
execution order: backbone stages, then laterals, PPM, bottleneck, FPN, fused feature, classifier, then the explicit
auxiliary-head call), not recorded from a run. 'error' means strict weight accounting must refuse the conversion.
Key names are the port's (transformers UperNetForSemanticSegmentation); capture names are the origin's.
"""

from parity.contracts.mutations import Mutation

VARIANT = "upernet-convnext-tiny-random"
STAGES = "backbone.encoder.stages"
HEAD = "decode_head"

MUTATIONS: list[tuple[Mutation, str]] = [
    (Mutation(kind="scale", key="backbone.embeddings.patch_embeddings.weight"), "backbone.downsample_layers.0"),
    (Mutation(kind="swap", key="backbone.embeddings.layernorm.weight", other="backbone.embeddings.layernorm.bias"),
     "backbone.downsample_layers.0"),
    (Mutation(kind="swap", key=f"{STAGES}.1.downsampling_layer.0.weight", other=f"{STAGES}.1.downsampling_layer.0.bias"),
     "backbone.downsample_layers.1"),
    (Mutation(kind="scale", key=f"{STAGES}.2.downsampling_layer.1.weight"), "backbone.downsample_layers.2"),
    (Mutation(kind="zero", key=f"{STAGES}.0.layers.0.layer_scale_parameter"), "backbone.stages.0"),
    (Mutation(kind="swap", key=f"{STAGES}.2.layers.0.layer_scale_parameter", other=f"{STAGES}.2.layers.1.layer_scale_parameter"), "backbone.stages.2"),
    (Mutation(kind="swap-prefix", key=f"{STAGES}.2.layers.0.", other=f"{STAGES}.2.layers.1."), "backbone.stages.2"),
    (Mutation(kind="scale", key=f"{STAGES}.3.layers.0.dwconv.weight"), "backbone.stages.3"),
    (Mutation(kind="zero", key=f"{STAGES}.1.layers.0.pwconv1.bias"), "backbone.stages.1"),
    (Mutation(kind="swap", key="backbone.hidden_states_norms.stage1.weight",
      other="backbone.hidden_states_norms.stage1.bias"), "backbone.norm0"),
    (Mutation(kind="scale", key="backbone.hidden_states_norms.stage4.weight"), "backbone.norm3"),
    (Mutation(kind="swap", key=f"{HEAD}.lateral_convs.1.batch_norm.running_mean", other=f"{HEAD}.lateral_convs.1.batch_norm.running_var"), "decode_head.lateral_convs.1"),
    (Mutation(kind="swap", key=f"{HEAD}.psp_modules.1.1.conv.weight", other=f"{HEAD}.psp_modules.2.1.conv.weight"),
     "decode_head.psp_modules.1"),
    (Mutation(kind="scale", key=f"{HEAD}.psp_modules.3.1.batch_norm.weight"), "decode_head.psp_modules.3"),
    (Mutation(kind="scale", key=f"{HEAD}.bottleneck.conv.weight"), "decode_head.bottleneck"),
    (Mutation(kind="swap", key=f"{HEAD}.fpn_convs.0.conv.weight", other=f"{HEAD}.fpn_convs.1.conv.weight"),
     "decode_head.fpn_convs.0"),
    (Mutation(kind="zero", key=f"{HEAD}.fpn_bottleneck.batch_norm.bias"), "decode_head.fpn_bottleneck"),
    (Mutation(kind="scale", key=f"{HEAD}.classifier.weight"), "decode_head.conv_seg"),
    (Mutation(kind="swap", key="auxiliary_head.convs.0.batch_norm.weight", other="auxiliary_head.convs.0.batch_norm.bias"),
     "auxiliary_head.convs"),
    (Mutation(kind="zero", key="auxiliary_head.classifier.bias"), "auxiliary_head.conv_seg"),
    (Mutation(kind="drop", key=f"{HEAD}.classifier.bias"), "error"),
]
