"""`parity list` never shortens an id: a compact default that fits 80 columns, --ids, --json."""

from __future__ import annotations

import json

from parity.host.registry import all_recipes, select
from tests.conftest import error_line, parity


def test_default_fits_80_columns_and_shows_every_id_whole():
    result = parity("list", check=0, env={"COLUMNS": "80"})
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    shown = [line.split()[0] for line in lines[1:-1]]
    assert shown == list(all_recipes())
    assert len(lines) == len(all_recipes()) + 2
    assert lines[0].split() == ["id", "origin", "checkpoint"]


def test_default_says_where_each_checkpoint_comes_from():
    rows = {line.split()[0]: line.split()[1:] for line in parity("list", "sam", check=0).stdout.splitlines()[1:-1]}
    assert rows["sam-vit-base"] == ["sam", "download"]
    assert rows["sam-tiny-random"] == ["sam", "seed", str(all_recipes()["sam-tiny-random"].checkpoint.generate.seed)]
    assert rows["sam-fixture-vit-tiny"] == ["sam", "fixture"]


def test_ids_prints_one_id_per_line_for_a_selector():
    result = parity("list", "mask2former-swin-large", "--ids", check=0, env={"COLUMNS": "40"})
    assert result.stdout.splitlines() == [r.id for r in select("mask2former-swin-large")]
    assert "mask2former-swin-large-mapillary-vistas-panoptic" in result.stdout.splitlines()


def test_json_carries_what_the_compact_view_leaves_out():
    entries = json.loads(parity("list", "--json", check=0).stdout)
    assert [e["id"] for e in entries] == list(all_recipes())
    base = next(e for e in entries if e["id"] == "sam-vit-base")
    assert base["checkpoint"]["url"] == all_recipes()["sam-vit-base"].checkpoint.url
    assert base["description"] and base["family"] == "sam" and base["hub_id"] == "facebook/sam-vit-base"
    assert base["assets"] == []
    clipseg = next(e for e in entries if e["id"] == "clipseg-rd64-refined")
    assert [(a["name"], a["filename"]) for a in clipseg["assets"]] == [("clip-vit-b16", "ViT-B-16.pt")]
    assert clipseg["assets"][0]["sha256"] == all_recipes()["clipseg-rd64-refined"].spec.tower.sha256


def test_ids_and_json_together_is_a_one_line_error():
    result = parity("list", "--ids", "--json", check=2)
    assert "--ids and --json are alternatives" in error_line(result) and result.stdout == ""
