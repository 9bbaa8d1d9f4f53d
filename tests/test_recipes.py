"""Recipes as files and `parity recipe new`: made from the ORIGINAL project's own configuration (read by the original
tooling in its origin environment), validated with one-line errors, edited with --set, carried by fixture folders;
capture pairings derived from the configuration; docs/own-variant.md's SAM and UperNet walk-throughs, run as written."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from parity.contracts.errors import ParityError
from parity.contracts.steps import RecipeSource
from parity.families.clipseg.spec import check_extract_layers, decoder_layers, returned_activation_layers
from parity.families.mask2former.config import encoder_levels, hf_values
from parity.families.mask2former.recipes import classes_from_metadata
from parity.families.mask2former.recipes import new_recipe as mask2former_recipe
from parity.families.mask2former.variants import FIXTURE_RECIPES as MASK2FORMER_FIXTURES
from parity.host.recipefiles import apply_sets, load_classes, load_recipe, validate, write_recipe
from parity.host.registry import all_recipes
from tests.conftest import FIXTURES, ROOT, error_line, in_env, parity, read_json, stderr_without_progress

slow = pytest.mark.slow
WALKTHROUGH = ROOT / "docs" / "own-variant.md"


# ----------------------------------------------------------------------------------------------------------------------
# recipe files (host only)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_a_recipe_file_round_trips(tmp_path, suffix):
    recipe = all_recipes()["sam-tiny-random"]
    path = tmp_path / f"my{suffix}"
    write_recipe(recipe, path)
    assert load_recipe(path) == recipe
    assert parity("recipe", "check", str(path), check=0).stdout.strip() == f"{path}: ok (sam recipe sam-tiny-random)"


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(colour="red"), "field 'colour': Extra inputs are not permitted"),
    (lambda d: d["checkpoint"].update(kind="ftp"), "field 'checkpoint.kind': Input should be 'url', 'generate', "),
    (lambda d: d["inputs"]["images"][0].update(height="tall"), "field 'inputs.images.0.height': Input should be"),
    (lambda d: d["spec"].update(prompt={}), "field 'spec.sam.prompt': Extra inputs are not permitted"),
    (lambda d: d.update(family="vit"), "Value error, spec is for family 'sam' but the recipe's family is 'vit'"),
])
def test_a_bad_recipe_file_is_one_line_naming_the_field(tmp_path, edit, message):
    data = all_recipes()["sam-tiny-random"].model_dump(mode="json")
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = parity("convert", "--recipe", str(path), "--out", str(tmp_path / "out"), check=2)
    assert message in error_line(result)
    assert len(stderr_without_progress(result)) == 1
    assert not (tmp_path / "out").exists()


def test_written_recipes_validate_against_the_exported_schema(tmp_path):
    import jsonschema

    from parity.contracts.recipe import Recipe

    schema = Recipe.model_json_schema()
    for variant in ("sam-tiny-random-global", "mask2former-tiny-random-custom-classes", "clipseg-fixture-tiny-rd16",
                    "upernet-convnext-tiny-random-custom", "vit-msn-tiny-random-p8"):
        write_recipe(all_recipes()[variant], tmp_path / "r.yaml")
        jsonschema.validate(yaml.safe_load((tmp_path / "r.yaml").read_text()), schema)
    data = yaml.safe_load((tmp_path / "r.yaml").read_text())
    data["spec"]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_a_file_checkpoint_is_given_at_run_time(tmp_path):
    from parity.host.checkpoints import resolve

    recipe = apply_sets(all_recipes()["sam-tiny-random"], ["checkpoint={kind: file, container: torch-state-dict}"])
    with pytest.raises(ParityError, match="takes its checkpoint from your file: pass --checkpoint PATH"):
        resolve(recipe)
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"weights")
    assert resolve(recipe, mine).path == mine
    pinned = apply_sets(recipe, [f"checkpoint.filename={mine}", "checkpoint.sha256=" + "0" * 64])
    with pytest.raises(ParityError, match="has sha256 .*, expected 000000"):
        resolve(pinned)


def test_unreadable_recipe_files_are_one_line(tmp_path):
    (tmp_path / "r.yaml").write_text("id: [unclosed\n")
    assert "not valid YAML (line 2" in error_line(parity("recipe", "check", str(tmp_path / "r.yaml"), check=2))
    (tmp_path / "r.json").write_text("{")
    assert "not valid JSON" in error_line(parity("recipe", "check", str(tmp_path / "r.json"), check=2))
    (tmp_path / "r.toml").write_text("")
    assert "a recipe file ends in .json, .yaml, .yml" in error_line(parity("recipe", "check", str(tmp_path / "r.toml"),
                                                                           check=2))
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert "a recipe is a mapping of fields, not list" in error_line(
        parity("recipe", "check", str(tmp_path / "list.yaml"), check=2))
    assert "give a variant id or --recipe FILE, not both" in error_line(
        parity("convert", "sam-tiny-random", "--recipe", str(tmp_path / "r.yaml"), check=2))
    assert "give a variant id (see `parity list`) or --recipe FILE" in error_line(parity("dump", check=2))


def test_set_edits_nested_fields_and_validates_the_whole_recipe():
    base = all_recipes()["sam-tiny-random"]
    edited = apply_sets(base, ["id=my-sam", "original_config.image_encoder.global_attn_indexes=[0, 2]",
                               "inputs.images.0.seed=3", "spec.prompts.point_mask.mask_index=2",
                               "hf.config_overrides.vision_config={hidden_act: gelu}", "tolerance.atol=2e-5"])
    assert edited.id == "my-sam" and edited.original_config["image_encoder"]["global_attn_indexes"] == [0, 2]
    assert edited.inputs.images[0].seed == 3 and edited.spec.prompts["point_mask"].mask_index == 2
    assert edited.hf.config_overrides == {"vision_config": {"hidden_act": "gelu"}} and edited.tolerance.atol == 2e-5
    assert base.id == "sam-tiny-random"
    with pytest.raises(ParityError, match=r"no field 'dpeth' in original_config.image_encoder \(has: depth"):
        apply_sets(base, ["original_config.image_encoder.dpeth=3"])
    with pytest.raises(ParityError, match=r"'inputs.images.4' is not an index of a list of 1"):
        apply_sets(base, ["inputs.images.4.seed=3"])
    with pytest.raises(ParityError, match="mask_index 3 but the decoder has 3 multimask outputs"):
        apply_sets(base, ["spec.prompts.point_mask.mask_index=3"])
    with pytest.raises(ParityError, match="expected key=value"):
        apply_sets(base, ["id"])


def test_recipe_new_from_a_variant_writes_an_edited_copy(tmp_path):
    out = tmp_path / "sam.json"
    parity("recipe", "new", "--from", "sam-tiny-random", "--id", "my-sam", "--set",
           "original_config.image_encoder.window_size=3", "--out", str(out), check=0)
    recipe = load_recipe(out)
    assert recipe.id == "my-sam" and recipe.original_config["image_encoder"]["window_size"] == 3
    result = parity("recipe", "new", "--from", "sam-tiny-random", "--config", str(out), check=2)
    assert "--from starts from an existing recipe" in error_line(result)
    assert "is not one variant id" in error_line(parity("recipe", "new", "--from", "sam", check=2))
    assert "a new recipe needs --id ID" in error_line(parity("recipe", "new", "sam", check=2))
    assert "--origin 'mmseg2': upernet runs in mmseg0, mmseg1" in error_line(
        parity("recipe", "new", "upernet", "--id", "x", "--origin", "mmseg2", check=2))


def test_class_lists(tmp_path):
    (tmp_path / "c.txt").write_text("soil\ncrop\n\n")
    assert [c.name for c in load_classes(tmp_path / "c.txt")] == ["soil", "crop"]
    (tmp_path / "c.yaml").write_text("- sky\n- {name: car, isthing: true, dataset_id: 3}\n")
    classes = load_classes(tmp_path / "c.yaml")
    assert (classes[1].name, classes[1].isthing, classes[1].dataset_id) == ("car", True, 3)
    assert classes[0].isthing is None
    (tmp_path / "bad.yaml").write_text("- {name: car, colour: red}\n")
    with pytest.raises(ParityError, match="class 0: field 'colour': Extra inputs"):
        load_classes(tmp_path / "bad.yaml")


def test_the_recipe_step_container_reads_the_config_folder_offline_and_writes_nothing(tmp_path):
    """In a container (mask2former's origin is Docker-only) the configuration folder and the checkpoint are mounted
    read-only, with no network and nothing writable; the step's answer is the typed recipe."""
    from parity.contracts.steps import RecipeResponse
    from parity.host.backends.docker import DockerBackend, image_tag
    from parity.host.pipeline import new_recipe
    from tests.test_containers import FakeClient

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("MODEL: {}\n")
    checkpoint = tmp_path / "mine.pkl"
    checkpoint.write_bytes(b"x")
    answer = all_recipes()["mask2former-tiny-random-custom-classes"]
    client = FakeClient(present={image_tag("detectron2"), image_tag("base")},
                        response=RecipeResponse(recipe=answer, notes=["a note"]))
    source = RecipeSource(family="mask2former", id="mine", origin="detectron2",
                          config=tmp_path / "configs" / "mine.yaml", checkpoint=checkpoint)
    recipe, notes = new_recipe(source, DockerBackend(client=client), lambda _m: None)
    assert recipe == answer and notes == ["a note"]
    (container,) = client.created
    config = container.config
    assert config["network_mode"] == "none" and config["image"] == image_tag("detectron2")
    assert config["volumes"][str(tmp_path / "configs")]["mode"] == "ro"
    assert config["volumes"][str(checkpoint)]["mode"] == "ro"
    assert all(volume["mode"] == "ro" for volume in config["volumes"].values())


# ----------------------------------------------------------------------------------------------------------------------
# host-made recipes (constructor arguments): ViT-MSN and CLIPSeg


def test_msn_recipe_from_a_factory_and_overrides(tmp_path):
    out = tmp_path / "msn.yaml"
    parity("recipe", "new", "vit_msn", "--id", "my-msn", "--arg", "factory=deit_small_p8", "--arg", "img_size=64",
           "--out", str(out), check=0)
    recipe = load_recipe(out)
    constructor = recipe.original_config["constructor"]
    assert (constructor["patch_size"], constructor["embed_dim"], constructor["depth"]) == (8, 384, 12)
    assert recipe.checkpoint.kind == "file" and recipe.origin == "msn"
    assert [(i.name, i.height) for i in recipe.inputs.images] == [("image", 64), ("image96", 96)]
    assert "not one of src.deit's plain-ViT factories" in error_line(
        parity("recipe", "new", "vit_msn", "--id", "x", "--arg", "factory=vitc_4gf", check=2))
    assert "vit_msn --arg patch: not an argument" in error_line(
        parity("recipe", "new", "vit_msn", "--id", "x", "--arg", "patch=8", check=2))
    assert "recipes come from constructor arguments" in error_line(
        parity("recipe", "new", "vit_msn", "--id", "x", "--checkpoint", str(out), check=2))


def test_clipseg_recipe_from_constructor_arguments(tmp_path):
    out = tmp_path / "clipseg.yaml"
    parity("recipe", "new", "clipseg", "--id", "my-clipseg", "--arg", "extract_layers=[3, 7, 9]", "--arg",
           "reduce_dim=64", "--out", str(out), check=0)
    recipe = load_recipe(out)
    assert recipe.original_config["decoder"]["extract_layers"] == [3, 7, 9]
    assert recipe.spec.tower.kind == "openai" and recipe.spec.tower.sha256
    for args, message in ((["extract_layers=[0, 3]"], "layer 0 is not one of the tower's layers 1..11"),
                          (["extract_layers=[3, 3]"], "repeats a layer"),
                          (["extract_layers=[3, 12]"], "layer 12 is not one of the tower's layers"),
                          (["extra_blocks=1"], "extra_blocks=1: transformers' CLIPSeg has no equivalent"),
                          (["version=ViT-B/32"], "use ViT-B/16"),
                          (["tower=relative/clip.pt"], "openai (OpenAI's ViT-B-16.pt, resolved like a checkpoint), combined")):
        command = ["recipe", "new", "clipseg", "--id", "x"] + [a for arg in args for a in ("--arg", arg)]
        assert message in error_line(parity(*command, check=2)), args


def test_clipseg_pairing_follows_extract_layers():
    """CLIPDensePredT.forward returns `[activation1] + activations` from visual_forward(extract_layers=[0] + ...):
    the outputs of the listed vision layers in the order the blocks run; its decoder meets them deepest first."""
    assert returned_activation_layers([3, 6, 9], 12) == [0, 3, 6, 9]
    assert returned_activation_layers([2, 4], 6) == [0, 2, 4]
    assert returned_activation_layers([1, 2], 3) == [0, 1, 2]  # the fixtures: positions and layers coincide
    assert returned_activation_layers([9, 3], 12) == [0, 3, 9]
    assert decoder_layers([9, 3, 6]) == [3, 6, 9]
    for bad in ([0, 3], [3, 3], [3, 12], []):
        with pytest.raises(ValueError):
            check_extract_layers(bad, 12)
    recipe = all_recipes()["clipseg-tiny-random-layers"]
    decoder = recipe.original_config["decoder"]
    assert decoder["extract_layers"][0] != 1 and decoder["cond_layer"] == 1
    released = all_recipes()["clipseg-rd64-refined"].original_config
    assert returned_activation_layers(released["decoder"]["extract_layers"], released["clip"]["vision_layers"]) == [
        0, 3, 6, 9]


def test_a_clipseg_tower_file_must_be_absolute():
    data = all_recipes()["clipseg-tiny-random"].model_dump(mode="json")
    data["spec"]["tower"] = {"kind": "file", "path": "clip.pt"}
    with pytest.raises(ParityError, match="field 'spec.clipseg.tower': Value error, a file tower's path must be"):
        validate(data, "recipe")


# ----------------------------------------------------------------------------------------------------------------------
# Mask2Former: detectron2 config dict -> recipe (the origin step reads the yaml with detectron2; this is the mapping)


def _fixture_config(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name / "config.yaml").read_text())


def test_mask2former_recipe_from_the_fixtures_merged_config_matches_the_fixture_recipe():
    """The merged config.yaml a fixture was made with (cfg.dump() of detectron2's CfgNode) maps to the same model,
    preprocessing and post-processing values as the fixture's recipe, and to the same transformers config."""
    for fixture in MASK2FORMER_FIXTURES:
        name = fixture.checkpoint.fixture
        source = RecipeSource(family="mask2former", id="mine", origin="detectron2")
        count = fixture.original_config["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"]
        things = {"thing_classes": [f"c{i}" for i in range(count)],
                  "thing_dataset_id_to_contiguous_id": {i: i for i in range(count)}}
        recipe = mask2former_recipe(source, {"config": _fixture_config(name), "dataset": "x", "metadata": things,
                                             "notes": []})
        assert hf_values(recipe.original_config) == hf_values(fixture.original_config), name
        for section in ("INPUT", "DATASETS", "TEST"):
            assert recipe.original_config[section] == fixture.original_config[section], (name, section)
        model, theirs = recipe.original_config["MODEL"], fixture.original_config["MODEL"]
        for key in ("PIXEL_MEAN", "PIXEL_STD", "META_ARCHITECTURE", "BACKBONE"):
            assert model[key] == theirs[key], (name, key)
        for section in ("SWIN", "SEM_SEG_HEAD", "MASK_FORMER"):
            assert {k: v for k, v in model[section].items() if k in theirs[section]} == theirs[section], (name, section)
        assert recipe.spec.config_file is None and recipe.checkpoint.kind == "file"


def test_mask2former_dataset_metadata_becomes_typed_classes():
    instance = {"thing_classes": ["person", "bicycle", "car"], "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1, 3: 2}}
    classes = classes_from_metadata(instance, 3)
    assert [(c.name, c.isthing, c.dataset_id) for c in classes] == [("person", True, 1), ("bicycle", True, 2),
                                                                    ("car", True, 3)]
    panoptic = {"thing_classes": ["person", "car"], "stuff_classes": ["person", "car", "road", "sky"],
                "thing_dataset_id_to_contiguous_id": {1: 0, 3: 1},
                "stuff_dataset_id_to_contiguous_id": {1: 0, 3: 1, 128: 2, 155: 3}}
    classes = classes_from_metadata(panoptic, 4)
    assert [(c.name, c.isthing, c.dataset_id) for c in classes] == [("person", True, 1), ("car", True, 3),
                                                                    ("road", False, 128), ("sky", False, 155)]
    semantic = {"stuff_classes": ["wall", "floor", "sky"]}
    assert [(c.name, c.isthing) for c in classes_from_metadata(semantic, 2)] == [("wall", None), ("floor", None)]
    with pytest.raises(ParityError, match="names 3 classes, the config has NUM_CLASSES=5: pass --classes"):
        classes_from_metadata(semantic, 5)


def test_mask2former_recipe_takes_metadata_or_a_class_list_and_refuses_a_missing_split():
    source = RecipeSource(family="mask2former", id="mine", origin="detectron2")
    config = _fixture_config("mask2former-tiny-swin-coco-instance")
    meta = {"thing_classes": [f"thing{i}" for i in range(80)],
            "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(80)}}
    recipe = mask2former_recipe(source, {"config": config, "dataset": "coco_2017_train", "metadata": meta})
    assert [c.name for c in recipe.spec.classes] == [f"thing{i}" for i in range(5)]
    assert recipe.spec.thing_ids() == [0, 1, 2, 3, 4] and recipe.spec.dataset == "coco_2017_train"
    assert recipe.spec.classes[4].dataset_id == 5
    with pytest.raises(ParityError, match="needs the thing/stuff split"):
        mask2former_recipe(source, {"config": config, "dataset": "mine", "metadata": None})
    semantic = mask2former_recipe(source, {"config": _fixture_config("mask2former-tiny-swin-ade-semantic"),
                                           "dataset": "mine", "metadata": None, "notes": []})
    assert semantic.spec.classes == [] and semantic.spec.id2label(7)[6] == "class_6"
    own = load_classes_from([{"name": f"c{i}", "isthing": i < 2} for i in range(5)])
    recipe = mask2former_recipe(source.model_copy(update={"classes": own}),
                                {"config": config, "dataset": "mine", "metadata": None})
    assert recipe.spec.thing_ids() == [0, 1]
    with pytest.raises(ParityError, match="--classes lists 4 classes for NUM_CLASSES=5"):
        mask2former_recipe(source.model_copy(update={"classes": own[:4]}), {"config": config, "metadata": None})


def load_classes_from(items: list) -> list:
    from parity.contracts.familyspec import DatasetClass

    return [DatasetClass.model_validate(item) for item in items]


def test_mask2former_pairing_follows_the_config():
    recipe = all_recipes()["mask2former-tiny-random-custom-classes"]
    assert encoder_levels(recipe.original_config) == ["res5", "res4", "res3"]
    assert recipe.spec.id2label(6)[2] == "crop row" and recipe.spec.thing_ids() == [0, 1]
    assert recipe.original_config["MODEL"]["MASK_FORMER"]["DEC_LAYERS"] == 3
    with pytest.raises(ParityError, match="feeds all four stages"):
        cfg = json.loads(json.dumps(recipe.original_config))
        cfg["MODEL"]["SWIN"]["OUT_FEATURES"] = ["res3", "res4", "res5"]
        hf_values(cfg)


# ----------------------------------------------------------------------------------------------------------------------
# fixture folders that carry their own recipe; diff --recipe


def _copy_fixture(source: Path, target: Path, name: str) -> None:
    """A copy of a read-only fixture folder under another name (files linked, fixture.json renamed)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name != "fixture.json":
            (target / path.name).symlink_to(path)
    meta = json.loads((source / "fixture.json").read_text())
    meta["name"] = name
    (target / "fixture.json").write_text(json.dumps(meta))


@slow
def test_a_fixture_folder_carries_its_own_recipe_with_a_typed_clip_tower(tmp_path):
    """Two fixture folders copied under names no registry knows: the decoder fixture's recipe.yaml names the tower by
    its (new) fixture folder, resolved in the fixtures folder of the step, not beside the shared fixtures."""
    fixtures = tmp_path / "fixtures"
    _copy_fixture(FIXTURES / "clipseg-tiny-rd16", fixtures / "my-rd16", "my-rd16")
    _copy_fixture(FIXTURES / "clipseg-tiny-clip-vit-b16", fixtures / "my-tower", "my-tower")
    result = parity("diff", "--dump", str(fixtures / "my-rd16"), "--out", str(tmp_path / "none"), check=2)
    assert "no family knows how to import fixture 'my-rd16': put a recipe file" in error_line(result)
    recipe = apply_sets(all_recipes()["clipseg-fixture-tiny-rd16"], [
        "id=my-rd16", "checkpoint.fixture=my-rd16", "spec.tower.fixture=my-tower",
        *[f"inputs.images.{i}.fixture=my-rd16" for i in range(3)]])
    write_recipe(recipe, fixtures / "my-rd16" / "recipe.yaml")
    parity("diff", "--dump", str(fixtures / "my-rd16"), "--out", str(tmp_path / "out"), check=0)
    report = read_json(tmp_path / "out" / "report.json")
    assert report["recipe_id"] == "my-rd16" and report["verdict"] == "pass"
    assert {c["name"] for c in report["captures"]} == {r["key"] for r in read_json(fixtures / "my-rd16" /
                                                                                      "fixture.json")["references"]}
    missing_tower = apply_sets(recipe, ["spec.tower.fixture=nowhere"])
    write_recipe(missing_tower, tmp_path / "elsewhere.json")
    result = parity("diff", "--dump", str(fixtures / "my-rd16"), "--recipe", str(tmp_path / "elsewhere.json"),
                    "--out", str(tmp_path / "none"), check=2)
    assert f"{fixtures}/nowhere/clip_vit_b16_tiny.pt" in error_line(result)


@slow
def test_diff_with_another_recipe_for_the_same_computation(tmp_path):
    parity("diff", "--dump", str(FIXTURES / "msn-vit-tiny-p16"), "--out", str(tmp_path / "a"), check=0)
    dump = Path(read_json(tmp_path / "a" / "report.json")["dump"])
    strict = apply_sets(all_recipes()["vit-msn-fixture-tiny-p16"], ["id=msn-strict", "tolerance.atol=1e-9",
                                                                     "tolerance.rtol=0"])
    write_recipe(strict, tmp_path / "strict.yaml")
    parity("diff", "--dump", str(dump), "--recipe", str(tmp_path / "strict.yaml"), "--out", str(tmp_path / "b"),
           check=1)
    report = read_json(tmp_path / "b" / "report.json")
    assert report["recipe_id"] == "msn-strict" and report["verdict"] == "fail"
    other = apply_sets(strict, ["original_config.constructor.depth=2"])
    write_recipe(other, tmp_path / "other.yaml")
    result = parity("diff", "--dump", str(dump), "--recipe", str(tmp_path / "other.yaml"), check=2)
    assert "describes another original computation than the dump (original_config differs)" in error_line(result)


# ----------------------------------------------------------------------------------------------------------------------
# recipes read by the original tooling in the origin environments (SAM, UperNet)


@slow
def test_sam_builder_arguments_come_from_segment_anything(tmp_path):
    out = tmp_path / "b.yaml"
    parity("recipe", "new", "sam", "--id", "my-sam-b", "--arg", "builder=vit_b", "--out", str(out), check=0)
    assert load_recipe(out).original_config == all_recipes()["sam-vit-base"].original_config
    assert "not in segment_anything's sam_model_registry (default, vit_h, vit_l, vit_b)" in error_line(
        parity("recipe", "new", "sam", "--id", "x", "--arg", "builder=vit_q", check=2))


@slow
def test_sam_recipe_read_off_a_checkpoints_shapes(tmp_path):
    """Several global blocks, a padded window, a smaller decoder: all read back from the tensor shapes of a checkpoint
    the original code made, except the two-way transformer's head count (not in any shape), given as an argument;
    the walk-through test covers the default head count with its note."""
    variant = all_recipes()["sam-tiny-random-global"]
    checkpoint = tmp_path / "global.pth"
    parity("generate", variant.id, "--out", str(checkpoint), check=0)
    result = parity("recipe", "new", "sam", "--id", "from-shapes", "--checkpoint", str(checkpoint), check=2)
    assert "the usual 8 does not divide its cross-attention width 12: pass --arg decoder_heads=N" in error_line(result)
    parity("recipe", "new", "sam", "--id", "from-shapes", "--checkpoint", str(checkpoint), "--arg", "decoder_heads=2",
           "--out", str(tmp_path / "b.yaml"), check=0)
    assert load_recipe(tmp_path / "b.yaml").original_config == variant.original_config
    wrong = parity("recipe", "new", "sam", "--id", "x", "--checkpoint", str(checkpoint), "--arg", "decoder_heads=2",
                   "--arg", "depth=4", check=2)
    assert "does not fit the original model" in error_line(wrong)
    parity("dump", "--recipe", str(tmp_path / "b.yaml"), "--checkpoint", str(checkpoint), "--out", str(tmp_path),
           check=0)
    manifest = read_json(tmp_path / "from-shapes" / "dump" / "manifest.json")
    assert manifest["recipe"]["id"] == "from-shapes" and manifest["checkpoint"]["source"] == f"file {checkpoint}"


@slow
def test_upernet_recipe_from_an_mmseg1_config_with_base_files(tmp_path):
    """mmengine's Config reads a 1.x config and its _base_ file in the mmseg1 environment; the dataset's classes and
    reduce_zero_label come from mmseg's ADE20KDataset; the same file read by mmseg0 is refused in one line."""
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "model.py").write_text(MMSEG1_BASE)
    (tmp_path / "mine.py").write_text(MMSEG1_CONFIG)
    out = tmp_path / "mine.yaml"
    parity("recipe", "new", "upernet", "--id", "mine1", "--origin", "mmseg1", "--config", str(tmp_path / "mine.py"),
           "--out", str(out), check=0)
    recipe = load_recipe(out)
    assert recipe.origin == "mmseg1" and list(recipe.original_config) == ["mmseg1", "img_norm_cfg", "img_scale"]
    assert len(recipe.spec.classes) == 150 and recipe.spec.classes[0].name == "wall" and recipe.spec.reduce_zero_label
    assert recipe.original_config["img_scale"] == [2048, 96] and recipe.original_config["img_norm_cfg"]["to_rgb"]
    model = recipe.original_config["mmseg1"]["model"]
    assert model["decode_head"]["norm_cfg"]["type"] == "BN" and model["backbone"]["out_indices"] == [1, 2, 3]
    result = parity("recipe", "new", "upernet", "--id", "x", "--config", str(tmp_path / "mine.py"), check=2)
    assert "is not readable by the mmseg0 Config" in error_line(result) and "--origin mmseg1" in error_line(result)


MMSEG1_BASE = """
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                         bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(512, 512))
model = dict(
    type='EncoderDecoder', data_preprocessor=data_preprocessor, pretrained=None,
    backbone=dict(type='mmpretrain.ConvNeXt', arch=dict(depths=[1, 1, 2, 1], channels=[16, 32, 64, 128]),
                  out_indices=[1, 2, 3], drop_path_rate=0.3, layer_scale_init_value=1.0, gap_before_final_norm=False),
    decode_head=dict(type='UPerHead', in_channels=[32, 64, 128], in_index=[0, 1, 2], pool_scales=(1, 2, 3, 6),
                     channels=16, dropout_ratio=0.1, num_classes=19, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_channels=128, in_index=2, channels=8, num_convs=1, concat_input=False,
                        dropout_ratio=0.1, num_classes=19, norm_cfg=norm_cfg, align_corners=False,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(), test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
"""
MMSEG1_CONFIG = """
_base_ = ['./_base_/model.py']
custom_imports = dict(imports='mmpretrain.models', allow_failed_imports=False)
model = dict(decode_head=dict(num_classes=150), auxiliary_head=dict(num_classes=150))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(2048, 96), keep_ratio=True),
                 dict(type='LoadAnnotations', reduce_zero_label=True), dict(type='PackSegInputs')]
test_dataloader = dict(batch_size=1, dataset=dict(type='ADE20KDataset', data_root='data/ade',
                       data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                       pipeline=test_pipeline))
"""


# ----------------------------------------------------------------------------------------------------------------------
# new tiny variants with non-default structure, end to end where their origin runs here


@slow
def test_sam_with_several_global_blocks_and_window_padding_passes(tmp_path):
    parity("convert", "sam-tiny-random-global", "--out", str(tmp_path), check=0)
    report = read_json(tmp_path / "sam-tiny-random-global" / "report.json")
    assert report["verdict"] == "pass" and all(c["verdict"] == "pass" for c in report["captures"])
    names = {c["name"] for c in report["captures"]}
    assert {f"image_encoder.blocks.{i}" for i in range(5)} <= names
    manifest = read_json(tmp_path / "sam-tiny-random-global" / "dump" / "manifest.json")
    fed_back = next(e for e in manifest["inputs"] if e["name"] == "point_mask.mask_inputs")
    assert fed_back["meaning"] == "point1 mask 2"


@slow
def test_upernet_with_own_classes_and_three_outputs_passes_on_both_stacks(tmp_path):
    variant = "upernet-convnext-tiny-random-custom"
    parity("convert", variant, "--origin", "all", "--out", str(tmp_path), check=0)
    for stack in ("mmseg0", "mmseg1"):
        report = read_json(tmp_path / variant / stack / "report.json")
        assert report["verdict"] == "pass", stack
        names = [c["name"] for c in report["captures"]]
        assert [n for n in names if n.startswith("backbone.norm")] == ["backbone.norm1", "backbone.norm2",
                                                                         "backbone.norm3"]
        assert "decode_head.lateral_convs.1" in names and "decode_head.lateral_convs.2" not in names
        assert "auxiliary_head.conv_seg" in names
        config = read_json(tmp_path / variant / stack / "hf" / "config.json")
        assert list(config["id2label"].values()) == ["background", "road", "car", "person", "sky"]
        assert config["backbone_config"]["out_features"] == ["stage2", "stage3", "stage4"]
        assert read_json(tmp_path / variant / stack / "hf" / "preprocessor_config.json")["do_reduce_labels"] is False


@slow
def test_clipseg_port_pairs_returned_activations_with_the_layers_the_original_returns():
    """The port's answer to return.activations.k is the encoder output transformers itself reports for layer
    ([0] + extract_layers)[k] (hidden_states[layer + 1]), for a decoder reading layers 2 and 4 of 6."""
    out = in_env("transformers", """
import torch, transformers
from parity.families.clipseg import port
from parity.host.registry import all_recipes
recipe = all_recipes()["clipseg-tiny-random-layers"]
torch.manual_seed(0)
model = transformers.CLIPSegForImageSegmentation(port.hf_config(recipe)).eval()
class FakeDump:
    inputs = {"pixel_values": torch.randn(2, 3, 352, 352), "input_ids": torch.randint(1, 400, (2, 77))}
with torch.no_grad():
    captured = port.port_captures(recipe, model, None, FakeDump(), "cpu")
    states = model.clip.vision_model(pixel_values=FakeDump.inputs["pixel_values"], output_hidden_states=True,
                                     interpolate_pos_encoding=True).hidden_states
names = sorted(n for n in captured if n.startswith("return.activations."))
print(names, model.config.extract_layers, model.config.conditional_layer)
for k, layer in enumerate([0, 2, 4]):
    print(torch.equal(captured[f"return.activations.{k}"][1], states[layer + 1].transpose(0, 1)))
""").splitlines()
    assert out[0] == "['return.activations.0', 'return.activations.1', 'return.activations.2'] [2, 4] 1"
    assert out[1:] == ["True", "True", "True"]


# ----------------------------------------------------------------------------------------------------------------------
# docs/own-variant.md: the SAM and UperNet walk-throughs, run as written


def walkthrough(title: str) -> tuple[dict[str, str], list[list[str]]]:
    """The files and `parity` commands of one section of docs/own-variant.md."""
    section = WALKTHROUGH.read_text().split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]
    files = {m.group(2): m.group(3) for m in re.finditer(r"```(\w+) file=(\S+)\n(.*?)```", section, flags=re.S)}
    commands = [shlex.split(line) for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
                for line in block.splitlines() if line.startswith("parity ")]
    return files, commands


@pytest.mark.parametrize("title", ["SAM / SlimSAM", "UperNet-ConvNeXt"])
def test_walkthrough_sections_name_their_files_and_commands(title):
    files, commands = walkthrough(title)
    assert commands and commands[-1][:2] == ["parity", "convert"] and "--recipe" in commands[-1]
    assert any(c[:3] == ["parity", "recipe", "new"] for c in commands)
    assert all("--backend" not in c for c in commands)


@slow
@pytest.mark.parametrize("title", ["SAM / SlimSAM", "UperNet-ConvNeXt"])
def test_walkthrough_runs_as_written(tmp_path, title):
    files, commands = walkthrough(title)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for command in commands:
        parity(*command[1:], cwd=tmp_path, check=0)
    recipe_file = Path(next(c[c.index("--recipe") + 1] for c in commands if c[1] == "convert"))
    recipe = load_recipe(tmp_path / recipe_file)
    report = read_json(tmp_path / "out" / recipe.id / "report.json")
    assert report["verdict"] == "pass" and report["conversion"]["missing"] == [] == report["conversion"]["unused"]
    if recipe.family == "upernet":
        assert [c.name for c in recipe.spec.classes] == ["soil", "crop", "weed", "sky"]
        config = read_json(tmp_path / "out" / recipe.id / "hf" / "config.json")
        assert list(config["id2label"].values()) == ["soil", "crop", "weed", "sky"]
