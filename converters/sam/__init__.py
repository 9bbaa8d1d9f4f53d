"""SAM and SlimSAM: segment-anything 1.0 (origin) vs transformers SamModel (port)."""

from converters.sam.variants import FIXTURE, FIXTURE_RECIPE, VARIANTS
from orchestrator.registry import Family

FAMILY = Family(name="sam", variants=VARIANTS, origins=("sam",), fixture_recipes={FIXTURE: FIXTURE_RECIPE.id})
