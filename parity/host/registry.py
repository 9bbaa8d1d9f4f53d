"""Variant registry: every parity/families/<name>/family.py contributes a Family; nothing here names a family.

Discovery also checks each family's origin.py and port.py against the OriginModule / PortModule Protocols without
importing them (they need torch, which the host never imports): the names a file defines are read from its syntax
tree, so a missing function is a one-line error naming it before any environment is built."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import pkgutil
from pathlib import Path

from parity.contracts.errors import ParityError
from parity.contracts.family import (
    CONFIGURATION_READER,
    Family,
    OriginModule,
    PortModule,
    RecipesModule,
    missing_members,
)
from parity.contracts.recipe import Recipe

HALVES: dict[str, type] = {"origin": OriginModule, "port": PortModule, "recipes": RecipesModule}
"""Module name in a family package -> the Protocol it must satisfy."""


def defined_names(path: Path) -> set[str]:
    """Top-level names a Python file defines (functions, classes, assignments, imports), read without importing it."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def check_family_modules(name: str, folder: Path, reads_configuration: str = "origin") -> None:
    """Each half exists and defines what its Protocol requires; the error names the file and the missing names. A
    family that reads its configuration in the origin also needs origin.py's read_configuration."""
    for half, protocol in HALVES.items():
        path = folder / f"{half}.py"
        if not path.is_file():
            raise ParityError(f"family {name!r} has no {half}.py ({protocol.__name__})")
        missing = missing_members(protocol, defined_names(path))
        if missing:
            raise ParityError(f"family {name!r}: {half}.py lacks {', '.join(missing)} ({protocol.__name__})")
    if reads_configuration == "origin" and CONFIGURATION_READER not in defined_names(folder / "origin.py"):
        raise ParityError(f"family {name!r}: origin.py lacks {CONFIGURATION_READER} (its Family reads the "
                          "configuration in the origin)")


@functools.cache
def families() -> dict[str, Family]:
    import parity.families

    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(parity.families.__path__), key=lambda i: i.name):
        if not info.ispkg or importlib.util.find_spec(f"parity.families.{info.name}.family") is None:
            continue
        family = importlib.import_module(f"parity.families.{info.name}.family").FAMILY
        if not isinstance(family, Family) or family.name != info.name:
            raise ParityError(f"parity/families/{info.name}/family.py must define FAMILY = Family(name={info.name!r}, ...)")
        check_family_modules(info.name, Path(parity.families.__path__[0]) / info.name, family.reads_configuration)
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
    """An exact id, or every id starting with the selector (None: every variant); unknown or empty selectors are a
    one-line error."""
    recipes = all_recipes()
    if selector is None:
        return list(recipes.values())
    if not selector.strip():
        raise ParityError("empty variant selector: give an id or a prefix (see `parity list`)")
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


def family_named(name: str) -> Family:
    try:
        return families()[name]
    except KeyError:
        raise ParityError(f"unknown family {name!r} (known: {', '.join(families())})") from None


def recipe_for_fixture(fixture_name: str) -> Recipe:
    for family in families().values():
        if fixture_name in family.fixture_recipes:
            return all_recipes()[family.fixture_recipes[fixture_name]]
    raise ParityError(f"no family knows how to import fixture {fixture_name!r}: put a recipe file (recipe.json or "
                      "recipe.yaml) in the fixture folder, or pass --recipe FILE")
