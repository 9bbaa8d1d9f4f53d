"""UperNet + ConvNeXt: mmsegmentation 0.30 (mmseg0) and 1.2 (mmseg1) origins vs transformers UperNetForSemanticSegmentation."""

from converters.upernet.variants import FIXTURE, FIXTURE_RECIPE, ORIGINS, VARIANTS
from orchestrator.registry import Family

FAMILY = Family(name="upernet", variants=VARIANTS, origins=ORIGINS, fixture_recipes={FIXTURE: FIXTURE_RECIPE.id})
