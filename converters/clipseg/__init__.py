"""CLIPSeg: timojl/clipseg CLIPDensePredT on OpenAI CLIP (origin, Docker only) vs transformers
CLIPSegForImageSegmentation (port)."""

from converters.clipseg.variants import FIXTURE_RECIPES, VARIANTS
from orchestrator.registry import Family

FAMILY = Family(name="clipseg", variants=VARIANTS, origins=("clipseg",),
                fixture_recipes={name: recipe.id for name, recipe in FIXTURE_RECIPES.items()}, fixture_env="fixtures")
