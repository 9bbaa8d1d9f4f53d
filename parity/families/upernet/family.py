"""The upernet family as the host registry reads it (variants, origins, fixtures)."""

from parity.contracts.family import Family
from parity.families.upernet.variants import FIXTURE, FIXTURE_RECIPE, ORIGINS, VARIANTS

FAMILY = Family(name="upernet", variants=VARIANTS, origins=ORIGINS, fixture_recipes={FIXTURE: FIXTURE_RECIPE.id})
