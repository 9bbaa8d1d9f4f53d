"""The SAM mutation suite: single corruptions of the converted weights and the capture each must fail first.

Expectations are read off the architecture (which module owns the tensor, which prompt case first uses it), not
recorded from a run. 'error' means strict weight accounting must refuse the conversion outright.
Key names are the port's (transformers SamModel); capture names are the origin's.
"""

from parity.contracts.mutations import Mutation

VARIANT = "sam-tiny-random"
ENC = "vision_encoder.layers"
TWO_WAY = "mask_decoder.transformer"

MUTATIONS: list[tuple[Mutation, str]] = [
    (Mutation(kind="scale", key="vision_encoder.patch_embed.projection.weight"), "image_encoder.patch_embed"),
    (Mutation(kind="scale", key="vision_encoder.pos_embed"), "image_encoder.blocks.0"),
    (Mutation(kind="swap-chunks", key=f"{ENC}.0.attn.qkv.weight", chunks=3, i=1, j=2), "image_encoder.blocks.0"),
    (Mutation(kind="swap-chunks", key=f"{ENC}.1.attn.qkv.weight", chunks=3, i=0, j=1), "image_encoder.blocks.1"),
    (Mutation(kind="zero", key=f"{ENC}.0.mlp.lin2.bias"), "image_encoder.blocks.0"),
    (Mutation(kind="transpose", key=f"{ENC}.2.attn.proj.weight"), "image_encoder.blocks.2"),
    (Mutation(kind="swap", key=f"{ENC}.1.attn.rel_pos_h", other=f"{ENC}.1.attn.rel_pos_w"), "image_encoder.blocks.1"),
    (Mutation(kind="zero", key=f"{ENC}.2.layer_norm1.bias"), "image_encoder.blocks.2"),
    (Mutation(kind="swap-prefix", key=f"{ENC}.0.", other=f"{ENC}.2."), "image_encoder.blocks.0"),
    (Mutation(kind="swap", key="vision_encoder.neck.layer_norm1.weight", other="vision_encoder.neck.layer_norm1.bias"),
     "image_encoder.neck"),
    (Mutation(kind="scale", key="vision_encoder.neck.layer_norm2.weight"), "image_encoder.neck"),
    (Mutation(kind="swap", key="prompt_encoder.point_embed.0.weight", other="prompt_encoder.point_embed.1.weight"),
     "point1.prompt_encoder.0"),
    (Mutation(kind="zero", key="prompt_encoder.not_a_point_embed.weight"), "point1.prompt_encoder.0"),
    (Mutation(kind="scale", key="prompt_encoder.shared_embedding.positional_embedding"), "point1.prompt_encoder.0"),
    (Mutation(kind="scale", key="prompt_encoder.no_mask_embed.weight"), "point1.prompt_encoder.1"),
    (Mutation(kind="scale", key="shared_image_embedding.positional_embedding"), "prompt_encoder.get_dense_pe"),
    (Mutation(kind="swap", key="prompt_encoder.point_embed.2.weight", other="prompt_encoder.point_embed.3.weight"),
     "box.prompt_encoder.0"),
    (Mutation(kind="zero", key="prompt_encoder.mask_embed.conv3.bias"), "point_mask.prompt_encoder.1"),
    (Mutation(kind="scale", key="mask_decoder.iou_token.weight"), "point1.mask_decoder.transformer.0"),
    (Mutation(kind="swap-chunks", key="mask_decoder.mask_tokens.weight", chunks=4, i=0, j=1),
     "point1.mask_decoder.transformer.0"),
    (Mutation(kind="transpose", key=f"{TWO_WAY}.layers.0.self_attn.q_proj.weight"), "point1.mask_decoder.transformer.0"),
    (Mutation(kind="swap", key=f"{TWO_WAY}.layers.1.cross_attn_token_to_image.k_proj.weight", other=f"{TWO_WAY}.layers.1.cross_attn_token_to_image.v_proj.weight"), "point1.mask_decoder.transformer.0"),
    (Mutation(kind="scale", key=f"{TWO_WAY}.layers.1.layer_norm3.weight"), "point1.mask_decoder.transformer.0"),
    (Mutation(kind="scale", key=f"{TWO_WAY}.layer_norm_final_attn.weight"), "point1.mask_decoder.transformer.0"),
    (Mutation(kind="zero", key="mask_decoder.upscale_conv1.bias"), "point1.mask_decoder.output_upscaling"),
    (Mutation(kind="swap", key="mask_decoder.upscale_layer_norm.weight", other="mask_decoder.upscale_layer_norm.bias"),
     "point1.mask_decoder.output_upscaling"),
    (Mutation(kind="scale", key="mask_decoder.iou_prediction_head.proj_out.bias"), "point1.mask_decoder.iou_prediction_head"),
    (Mutation(kind="swap", key="mask_decoder.output_hypernetworks_mlps.1.proj_out.weight",
      other="mask_decoder.output_hypernetworks_mlps.2.proj_out.weight"), "point1.mask_decoder.predict_masks.0"),
    (Mutation(kind="swap", key="mask_decoder.output_hypernetworks_mlps.0.proj_in.weight",
      other="mask_decoder.output_hypernetworks_mlps.0.layers.0.weight"), "point1.mask_decoder.predict_masks.0"),
    (Mutation(kind="drop", key=f"{ENC}.0.attn.qkv.bias"), "error"),
]
