"""Mask2Former (Swin): detectron2 + facebookresearch/Mask2Former (origin, Docker only) vs transformers
Mask2FormerForUniversalSegmentation (port). Golden fixtures are imported by the torch-only `fixtures` env."""

from converters.mask2former.variants import FIXTURES, VARIANTS
from orchestrator.registry import Family

FAMILY = Family(name="mask2former", variants=VARIANTS, origins=("detectron2",), fixture_recipes=FIXTURES,
                fixture_env="fixtures")
