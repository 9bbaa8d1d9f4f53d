"""Variant registry: every converters/<family> package contributes a Family; nothing here names a family."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import ParityError
from orchestrator.manifests import Recipe

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Family:
    """One model family: its variants and the modules that run inside the origin and port environments."""

    name: str
    variants: tuple[Recipe, ...]
    origins: tuple[str, ...]
    fixture_recipes: dict[str, str] = field(default_factory=dict)
    """Golden fixture folder name -> id of the recipe that reproduces it."""
    fixture_env: str | None = None
    """Environment that imports this family's fixtures (default: the first origin). Families whose origin cannot be
    installed locally use `fixtures`: torch + safetensors only, no original package, no transformers."""

    @property
    def importer_env(self) -> str:
        return self.fixture_env or self.origins[0]

    @property
    def origin_module(self) -> str:
        return f"converters.{self.name}.origin"

    @property
    def port_module(self) -> str:
        return f"converters.{self.name}.port"


@functools.cache
def families() -> dict[str, Family]:
    import converters

    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(converters.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"converters.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            found[family.name] = family
    return found


@functools.cache
def all_recipes() -> dict[str, Recipe]:
    recipes: dict[str, Recipe] = {}
    for family in families().values():
        for recipe in family.variants:
            if recipe.id in recipes:
                raise ParityError(f"variant id {recipe.id!r} is defined twice")
            if recipe.family != family.name:
                raise ParityError(f"variant {recipe.id!r} says family {recipe.family!r} but lives in {family.name!r}")
            recipes[recipe.id] = recipe
    return recipes


def select(selector: str | None) -> list[Recipe]:
    """An exact id, or every id starting with the selector; unknown selectors are a one-line error."""
    recipes = all_recipes()
    if not selector:
        return list(recipes.values())
    # ids are lower case by the Recipe pattern; published names are not always (mask2former-swin-base-IN21k-...)
    selector = selector.lower()
    if selector in recipes:
        return [recipes[selector]]
    matched = [r for rid, r in recipes.items() if rid.startswith(selector)]
    if not matched:
        close = sorted(rid for rid in recipes if selector.split("-")[0] in rid)[:5]
        hint = f" (did you mean: {', '.join(close)})" if close else " (see `parity list`)"
        raise ParityError(f"unknown variant or prefix {selector!r}{hint}")
    return matched


def family_of(recipe: Recipe) -> Family:
    try:
        return families()[recipe.family]
    except KeyError:
        raise ParityError(f"variant {recipe.id!r} names unknown family {recipe.family!r}") from None


def recipe_for_fixture(fixture_name: str) -> Recipe:
    for family in families().values():
        if fixture_name in family.fixture_recipes:
            return all_recipes()[family.fixture_recipes[fixture_name]]
    raise ParityError(f"no family knows how to import fixture {fixture_name!r}")
