"""Contracts: strict pydantic models, one-line validation errors, JSON Schema export."""

from __future__ import annotations

import json

import pytest

from parity.contracts.errors import ParityError
from parity.contracts.io import load_model
from parity.contracts.manifests import DumpManifest
from parity.contracts.recipe import CheckpointSource, Recipe, ToleranceOverride
from parity.families.sam.spec import PromptCase, SamSpec
from parity.host.registry import select
from tests.conftest import parity


def test_extra_fields_are_rejected():
    data = select("sam-tiny-random")[0].model_dump(mode="json")
    data["unexpected"] = 1
    with pytest.raises(ValueError, match="unexpected"):
        Recipe.model_validate(data)


def test_checkpoint_source_cross_field_rules():
    with pytest.raises(ValueError, match="needs sha256"):
        CheckpointSource(kind="url", url="https://example.invalid/x.pth", container="torch-state-dict")
    with pytest.raises(ValueError, match="needs generate"):
        CheckpointSource(kind="generate", container="torch-state-dict")
    with pytest.raises(ValueError, match="sha256"):
        CheckpointSource(kind="url", url="u", sha256="XYZ", container="torch-state-dict")


def test_prompt_case_shapes_are_checked():
    with pytest.raises(ValueError, match="go together"):
        PromptCase(point_coords=[[[1.0, 2.0]]])
    with pytest.raises(ValueError, match="match point_coords"):
        PromptCase(point_coords=[[[1.0, 2.0], [3.0, 4.0]]], point_labels=[[1]])
    with pytest.raises(ValueError, match="mask_index needs mask_from"):
        PromptCase(boxes=[[0.0, 0.0, 1.0, 1.0]], mask_index=1)


def test_mask_source_must_be_an_earlier_case():
    data = {"prompts": {"late": {"boxes": [[0, 0, 5, 5]], "mask_from": "later"}, "later": {"boxes": [[0, 0, 5, 5]]}}}
    with pytest.raises(ValueError, match="not an earlier case"):
        SamSpec.model_validate(data)


def test_tolerance_override_needs_a_reason():
    with pytest.raises(ValueError):
        ToleranceOverride(atol=1e-3, rtol=1e-3, reason="because")


def test_recipe_hash_changes_with_content():
    recipe = select("sam-tiny-random")[0]
    changed = recipe.model_copy(update={"description": "something else"})
    assert recipe.recipe_hash() != changed.recipe_hash()
    assert recipe.recipe_hash() == Recipe.model_validate_json(recipe.model_dump_json()).recipe_hash()


def test_invalid_manifest_is_one_line_naming_the_field(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": 2, "recipe": {}}))
    with pytest.raises(ParityError) as info:
        load_model(DumpManifest, path)
    message = str(info.value)
    assert "\n" not in message and "manifest.json" in message and "field 'recipe" in message


def test_schema_command_writes_all_four(tmp_path):
    parity("schema", "--out", str(tmp_path), check=0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["conversion-record.schema.json", "dump-manifest.schema.json", "parity-report.schema.json",
                     "recipe.schema.json"]
    schema = json.loads((tmp_path / "dump-manifest.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert "references" in schema["properties"]


def test_exported_schemas_carry_field_descriptions(tmp_path):
    """Field docstrings are the documentation of a recipe file: every field of every exported schema has one."""
    parity("schema", "--out", str(tmp_path), check=0)
    recipe = json.loads((tmp_path / "recipe.schema.json").read_text())
    assert recipe["properties"]["id"]["description"].startswith("Variant id")
    for path in tmp_path.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        for name, definition in [("(top)", schema), *schema.get("$defs", {}).items()]:
            for field, prop in definition.get("properties", {}).items():
                assert prop.get("description"), f"{path.name}: {name}.{field} has no description"
