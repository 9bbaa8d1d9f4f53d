"""The sam family as the host registry reads it (variants, origins, fixtures)."""

from parity.contracts.family import Family
from parity.families.sam.variants import FIXTURE, FIXTURE_RECIPE, VARIANTS

FAMILY = Family(name="sam", variants=VARIANTS, origins=("sam",), fixture_recipes={FIXTURE: FIXTURE_RECIPE.id})
