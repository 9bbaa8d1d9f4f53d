"""Recipes as files (JSON or YAML): read with one-line errors naming the field, written atomically, edited with
`--set key=value`. The registry holds the published variants; a file holds anyone's own."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from parity.contracts.errors import ParityError
from parity.contracts.familyspec import DatasetClass
from parity.contracts.io import validation_message
from parity.contracts.recipe import Recipe

SUFFIXES = (".json", ".yaml", ".yml")
FIXTURE_RECIPE_FILES = ("recipe.json", "recipe.yaml", "recipe.yml")
"""A fixture folder may carry its own recipe under one of these names (beside fixture.json)."""
FREE_FORM = ("hf.config_overrides", "tolerance.overrides", "spec.prompts")
"""Mappings whose keys are the user's to choose: `--set` may add keys below these; anywhere else a key must exist."""


def _parse(text: str, path: Path) -> Any:
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParityError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ParityError(f"{path}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None


def validate(data: Any, what: str) -> Recipe:
    """A Recipe from plain data; a problem is one line naming the field, and an unknown family is named too."""
    from parity.host.registry import family_named

    if not isinstance(data, dict):
        raise ParityError(f"{what}: a recipe is a mapping of fields, not {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ParityError(f"{what}: invalid recipe: {validation_message(exc)}") from None
    family_named(recipe.family)
    return recipe


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe file (.json, .yaml or .yml)."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise ParityError(f"{path}: a recipe file ends in {', '.join(SUFFIXES)}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParityError(f"cannot read recipe {path}: {exc.strerror}") from None
    return validate(_parse(text, path), str(path))


def recipe_text(recipe: Recipe, suffix: str) -> str:
    data = recipe.model_dump(mode="json", exclude_none=True)
    if suffix == ".json":
        return json.dumps(data, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


def write_recipe(recipe: Recipe, path: Path) -> None:
    """Write a recipe file atomically (temp file + rename); the suffix picks JSON or YAML."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise ParityError(f"{path}: a recipe file ends in {', '.join(SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(recipe_text(recipe, path.suffix))
    tmp.replace(path)


def fixture_recipe(folder: Path) -> Recipe | None:
    """The recipe a fixture folder carries beside fixture.json, if any (at most one of FIXTURE_RECIPE_FILES)."""
    found = [folder / name for name in FIXTURE_RECIPE_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise ParityError(f"{folder} carries {len(found)} recipe files ({', '.join(p.name for p in found)}); keep one")
    return load_recipe(found[0]) if found else None


def load_classes(path: Path) -> list[DatasetClass]:
    """A class list: a .txt file with one name per line, or a JSON/YAML list of names or of {name, isthing,
    dataset_id} mappings; label ids are positions."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParityError(f"cannot read class list {path}: {exc.strerror}") from None
    if path.suffix == ".txt":
        items: Any = [line.strip() for line in text.splitlines() if line.strip()]
    elif path.suffix in SUFFIXES:
        items = _parse(text, path)
    else:
        raise ParityError(f"{path}: a class list is .txt (one name per line), .json, .yaml or .yml")
    if not isinstance(items, list) or not items:
        raise ParityError(f"{path}: a class list is a non-empty list of names or of {{name, isthing, dataset_id}}")
    classes = []
    for index, item in enumerate(items):
        try:
            classes.append(DatasetClass.model_validate({"name": item} if isinstance(item, str) else item))
        except ValidationError as exc:
            raise ParityError(f"{path}: class {index}: {validation_message(exc)}") from None
    return classes


def parse_value(text: str) -> Any:
    """A command-line value as data: JSON first (numbers, lists, true/false/null, quoted strings), then YAML flow
    syntax ([a, b], {k: v}), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (list, dict)) else text


def parse_assignments(items: list[str], option: str) -> list[tuple[str, Any]]:
    """`key=value` pairs, in order; a malformed one is a one-line error naming the option."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParityError(f"{option} {item!r}: expected key=value")
        pairs.append((key.strip(), parse_value(value)))
    return pairs


def apply_sets(recipe: Recipe, items: list[str]) -> Recipe:
    """`--set a.b.c=value` edits of a recipe (dotted keys; list items by index), validated as a whole afterwards."""
    data = copy.deepcopy(recipe.model_dump(mode="json"))
    for key, value in parse_assignments(items, "--set"):
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]))
        leaf, parent = parts[-1], ".".join(parts[:-1])
        if isinstance(node, list):
            _child(node, leaf, key)
            node[int(leaf)] = value
        elif isinstance(node, dict):
            if leaf not in node and not any(parent == f or parent.startswith(f + ".") for f in FREE_FORM):
                known = ", ".join(sorted(node)[:12])
                raise ParityError(f"--set {key}: no field {leaf!r} in {parent or 'the recipe'} (has: {known})")
            node[leaf] = value
        else:
            raise ParityError(f"--set {key}: {parent} is a value, not a section")
    return validate(data, "recipe after --set")


def _child(node: Any, part: str, where: str) -> Any:
    if isinstance(node, dict):
        if part not in node:
            raise ParityError(f"--set: no field {where!r} in the recipe")
        return node[part]
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ParityError(f"--set: {where!r} is not an index of a list of {len(node)}")
        return node[int(part)]
    raise ParityError(f"--set: {where!r} is inside a value, not a section")
