"""The mask2former family as the host registry reads it (variants, origins, fixtures)."""

from parity.contracts.family import Family
from parity.families.mask2former.variants import FIXTURES, VARIANTS

FAMILY = Family(name="mask2former", variants=VARIANTS, origins=("detectron2",), fixture_recipes=FIXTURES,
                fixture_env="fixtures")
