"""Mask2Former (Swin): detectron2 + facebookresearch/Mask2Former (origin, Docker only) vs transformers
Mask2FormerForUniversalSegmentation (port). Golden fixtures are imported by the torch-only `fixtures` env."""
