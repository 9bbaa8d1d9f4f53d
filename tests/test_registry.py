"""Variant registry and selectors."""

from __future__ import annotations

import pytest

from parity.contracts.errors import ParityError
from parity.host.registry import all_recipes, families, select
from tests.conftest import error_line, parity

SEED_VARIANTS = {"sam-vit-base", "sam-vit-large", "sam-vit-huge", "slimsam-50-uniform", "slimsam-77-uniform"}


def test_every_seed_variant_is_registered_with_its_real_url():
    recipes = all_recipes()
    assert SEED_VARIANTS <= set(recipes)
    for variant in SEED_VARIANTS:
        assert recipes[variant].checkpoint.kind == "url"
        assert recipes[variant].checkpoint.url.startswith("https://")


def test_tiny_variants_are_generated_by_the_original_code():
    tiny = [r for r in all_recipes().values() if r.tiny and r.checkpoint.kind == "generate"]
    assert {"sam-tiny-random", "slimsam-tiny-random"} <= {r.id for r in tiny}


def test_slimsam_tiny_keeps_slimsam77_proportions():
    tiny = all_recipes()["slimsam-tiny-random"].original_config["image_encoder"]
    real = all_recipes()["slimsam-77-uniform"].original_config["image_encoder"]
    assert tiny["mlp_ratio"] == pytest.approx(real["mlp_ratio"])
    assert tiny["embed_dim"] // tiny["num_heads"] == real["embed_dim"] // real["num_heads"]


def test_prefix_selects_several_and_exact_id_selects_one():
    assert {r.id for r in select("slimsam")} == {"slimsam-50-uniform", "slimsam-77-uniform", "slimsam-tiny-random"}
    assert [r.id for r in select("sam-vit-base")] == ["sam-vit-base"]


def test_unknown_selector_is_a_clear_error():
    with pytest.raises(ParityError, match="unknown variant or prefix 'nope'"):
        select("nope")


def test_families_are_discovered_not_listed():
    assert "sam" in families()


def test_list_command_and_unknown_id_exit_code():
    listed = parity("list", check=0)
    for variant in SEED_VARIANTS:
        assert variant in listed.stdout
    result = parity("convert", "sam-vit-gigantic", check=2)
    assert "unknown variant or prefix 'sam-vit-gigantic'" in error_line(result)
