"""The vit_msn family as the host registry reads it (variants, origins, fixtures)."""

from parity.contracts.family import Family
from parity.families.vit_msn.variants import FIXTURE, FIXTURE_RECIPE, VARIANTS

FAMILY = Family(name="vit_msn", variants=VARIANTS, origins=("msn",), fixture_recipes={FIXTURE: FIXTURE_RECIPE.id},
                fixture_env="fixtures", reads_configuration="host")
