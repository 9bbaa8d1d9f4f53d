"""The clipseg family as the host registry reads it (variants, origins, fixtures)."""

from parity.contracts.family import Family
from parity.families.clipseg.variants import FIXTURE_RECIPES, VARIANTS

FAMILY = Family(name="clipseg", variants=VARIANTS, origins=("clipseg",),
                fixture_recipes={name: recipe.id for name, recipe in FIXTURE_RECIPES.items()}, fixture_env="fixtures",
                reads_configuration="host")
