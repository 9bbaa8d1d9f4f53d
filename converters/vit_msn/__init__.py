"""ViT-MSN: facebookresearch/msn src/deit.py (origin, Docker only) vs transformers ViTMSNModel (port)."""

from converters.vit_msn.variants import FIXTURE, FIXTURE_RECIPE, VARIANTS
from orchestrator.registry import Family

FAMILY = Family(name="vit_msn", variants=VARIANTS, origins=("msn",), fixture_recipes={FIXTURE: FIXTURE_RECIPE.id},
                fixture_env="fixtures")
