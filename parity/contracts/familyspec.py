"""Base of the recipe section each family owns (its own inputs and settings), defined apart from the Recipe so that
family spec modules can import it while `parity.contracts.recipe` assembles the union of them."""

from __future__ import annotations

from parity.contracts.base import Strict


class FamilySpec(Strict):
    """Base of `Recipe.spec`. A family subclasses it in `parity/families/<name>/spec.py` as `SPEC` with
    `family: Literal["<name>"]` and whatever only that family needs (SAM prompt cases, CLIPSeg texts, ...)."""

    family: str
    """The family this section belongs to (equals Recipe.family)."""
