"""Files the original code would download at run time (CLIPSeg's clip.load fetching OpenAI's ViT-B/16 archive) are
checkpoint sources: sha256-pinned, URLs tried in order, or the user's file; a clear error when none works."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from parity.contracts.errors import ParityError
from parity.contracts.io import write_text
from parity.contracts.steps import DumpRequest
from parity.families.clipseg.spec import ClipTower
from parity.families.clipseg.variants import CLIP_B16_SHA256, PUBLISHED, TINY
from parity.host import checkpoints
from tests.conftest import error_line, parity, stderr_without_progress

REFUSED = "http://127.0.0.1:9/ViT-B-16.pt"
"""A URL that fails at once (nothing listens on the discard port)."""
REAL = PUBLISHED[0]


def with_tower(archive: bytes, urls: list[str]):
    """The real CLIPSeg recipe with its openai tower pinned to ARCHIVE and served from URLS."""
    tower = ClipTower(kind="openai", url=urls[0], mirrors=urls[1:], sha256=hashlib.sha256(archive).hexdigest())
    return REAL.model_copy(update={"spec": REAL.spec.model_copy(update={"tower": tower})})


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_real_recipes_pin_the_archive_and_the_tiny_ones_need_none():
    (source,) = REAL.spec.assets()
    assert (source.name, source.filename, source.sha256) == ("clip-vit-b16", "ViT-B-16.pt", CLIP_B16_SHA256)
    assert source.urls[0].endswith(f"/{CLIP_B16_SHA256}/ViT-B-16.pt") and len(source.urls) >= 2
    assert TINY.spec.assets() == []


def test_urls_are_tried_in_order_and_the_file_is_cached_by_its_hash(tmp_path, cache):
    served = tmp_path / "mirror" / "ViT-B-16.pt"
    served.parent.mkdir()
    served.write_bytes(b"the archive")
    recipe = with_tower(b"the archive", [REFUSED, served.as_uri()])
    (path,) = checkpoints.resolve_assets(recipe).values()
    assert path.read_bytes() == b"the archive" and path.name == "ViT-B-16.pt" and path.is_relative_to(cache)
    assert [p.name for p in path.parent.iterdir()] == ["ViT-B-16.pt"]
    served.unlink()
    assert checkpoints.resolve_assets(recipe) == {"clip-vit-b16": path}
    path.write_bytes(b"tampered")
    with pytest.raises(ParityError, match="cached clip-vit-b16 .* has sha256"):
        checkpoints.resolve_assets(recipe)


def test_a_download_with_the_wrong_hash_is_refused_and_leaves_nothing(tmp_path, cache):
    served = tmp_path / "ViT-B-16.pt"
    served.write_bytes(b"something else")
    recipe = with_tower(b"the archive", [served.as_uri()])
    with pytest.raises(ParityError, match="has sha256 .* expected"):
        checkpoints.resolve_assets(recipe)
    assert not any(p.is_file() for p in (cache / "assets").rglob("*"))


def test_when_no_url_works_one_line_says_what_to_download_and_where_to_put_it(tmp_path, cache):
    recipe = with_tower(b"the archive", [REFUSED, (tmp_path / "gone.pt").as_uri()])
    with pytest.raises(ParityError) as caught:
        checkpoints.resolve_assets(recipe)
    message = str(caught.value)
    sha = hashlib.sha256(b"the archive").hexdigest()
    assert "\n" not in message
    for part in ("ViT-B-16.pt", sha, "--asset clip-vit-b16=PATH", str(cache / "assets" / sha[:16] / "ViT-B-16.pt"),
                 REFUSED, (tmp_path / "gone.pt").as_uri()):
        assert part in message, part


def test_a_user_file_is_hash_checked_and_used_in_place(tmp_path, cache):
    given = tmp_path / "mine.pt"
    given.write_bytes(b"the archive")
    recipe = with_tower(b"the archive", [REFUSED])
    assert checkpoints.resolve_assets(recipe, {"clip-vit-b16": given}) == {"clip-vit-b16": given}
    assert not (cache / "assets").exists()
    given.write_bytes(b"another archive")
    with pytest.raises(ParityError, match="--asset clip-vit-b16 .* has sha256"):
        checkpoints.resolve_assets(recipe, {"clip-vit-b16": given})
    with pytest.raises(ParityError, match="file not found"):
        checkpoints.resolve_assets(recipe, {"clip-vit-b16": tmp_path / "missing.pt"})


def test_asset_options_are_parsed_against_the_chosen_variants(tmp_path):
    assert checkpoints.parse_assets(["clip-vit-b16=x.pt"], [REAL]) == {"clip-vit-b16": Path("x.pt").resolve()}
    for values, message in ((["clip-vit-b16"], "expected NAME=PATH"), (["=x"], "expected NAME=PATH"),
                            (["clip-vit-b16=a", "clip-vit-b16=b"], "given twice"),
                            (["clip=x.pt"], "no chosen variant needs such a file")):
        with pytest.raises(ParityError, match=message):
            checkpoints.parse_assets(values, [REAL])
    with pytest.raises(ParityError, match="they need: none"):
        checkpoints.parse_assets(["clip-vit-b16=x.pt"], [TINY])


def test_a_dump_request_carries_exactly_the_recipes_assets_and_mounts_them_read_only(tmp_path):
    common = dict(recipe=REAL, checkpoint=tmp_path / "rd16-uni.pth", checkpoint_source="test", out=tmp_path / "d")
    with pytest.raises(ValidationError, match="do not match the recipe"):
        DumpRequest(**common)
    with pytest.raises(ValidationError, match="do not match the recipe"):
        DumpRequest(**common, assets={"clip-vit-b16": tmp_path / "a.pt", "other": tmp_path / "b"})
    request = DumpRequest(**common, assets={"clip-vit-b16": tmp_path / "a.pt"})
    assert tmp_path / "a.pt" in request.reads() and tmp_path / "a.pt" not in request.writes()


def test_the_cli_reports_an_unreachable_archive_in_one_line_before_any_work(tmp_path):
    recipe = with_tower(b"the archive", [REFUSED])
    recipe_file = tmp_path / "clipseg-mine.json"
    write_text(recipe_file, recipe.model_dump_json())
    out = tmp_path / "out"
    result = parity("dump", "--recipe", str(recipe_file), "--out", str(out),
                    env={"PARITY_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode != 0
    line = error_line(result)
    assert "--asset clip-vit-b16=PATH" in line and REFUSED in line
    assert len(stderr_without_progress(result)) == 1
    assert [p.name for p in out.rglob("*") if p.is_file()] == [".parity.lock"]


def test_the_cli_refuses_an_asset_no_chosen_variant_needs(tmp_path):
    result = parity("dump", "clipseg-tiny-random", "--asset", "clip-vit-b16=x.pt", "--out", str(tmp_path))
    assert result.returncode != 0
    assert "--asset clip-vit-b16: no chosen variant needs such a file" in error_line(result)
