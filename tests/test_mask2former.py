"""Mask2Former (Swin): detectron2 + Mask2Former golden fixtures vs transformers Mask2FormerForUniversalSegmentation.

The original cannot be installed here (Docker only), so the end-to-end tests run the upstream-made fixtures through
`parity diff`; the variant table and the detectron2-config -> transformers-config conversion are tested without any
environment."""

from __future__ import annotations

import copy
import json
import re

import pytest

from parity.contracts.errors import ParityError
from parity.families.mask2former.config import ENCODER_FFN, hf_values
from parity.families.mask2former.variants import FIXTURE_RECIPES, VARIANTS
from parity.host.registry import select
from tests.conftest import FIXTURES, ROOT, error_line, in_env, parity, read_json, stderr_without_progress

COCO = FIXTURES / "mask2former-tiny-swin-coco-instance"
ADE = FIXTURES / "mask2former-tiny-swin-ade-semantic"
REAL = [r for r in VARIANTS if r.checkpoint.kind == "url"]
slow = pytest.mark.slow


# ----------------------------------------------------------------------------------------------------------------------
# variant table and config conversion (no environment)


def test_ids_follow_the_seed_naming_and_cover_the_model_zoo():
    pattern = re.compile(r"^mask2former-swin-(tiny|small|base|base-in21k|large)-(coco|ade|cityscapes|mapillary-vistas)-"
                         r"(instance|panoptic|semantic)$")
    ids = [r.id for r in REAL]
    assert len(ids) == len(set(ids)) == 31
    assert all(pattern.match(i) for i in ids), [i for i in ids if not pattern.match(i)]
    for size in ("tiny", "small", "base", "base-in21k", "large"):
        assert {f"mask2former-swin-{size}-coco-instance", f"mask2former-swin-{size}-coco-panoptic"} <= set(ids)
    for task in ("semantic", "instance", "panoptic"):
        assert f"mask2former-swin-large-cityscapes-{task}" in ids
        assert f"mask2former-swin-large-ade-{task}" in ids
    assert {"mask2former-swin-large-mapillary-vistas-semantic", "mask2former-swin-large-mapillary-vistas-panoptic"} <= set(ids)


def test_selector_prefix_picks_both_coco_tasks():
    assert sorted(r.id for r in select("mask2former-swin-small-coco")) == [
        "mask2former-swin-small-coco-instance", "mask2former-swin-small-coco-panoptic"]


@pytest.mark.parametrize("recipe", REAL, ids=[r.id for r in REAL])
def test_real_variant_points_at_its_model_zoo_file_and_config(recipe):
    cfg = recipe.original_config
    url = recipe.checkpoint.url
    m = re.fullmatch(r"https://dl\.fbaipublicfiles\.com/maskformer/mask2former/(\w+)/(\w+)/(\w+)/model_final_([0-9a-f]{6})\.pkl",
                     url)
    assert m, url
    _dataset, task, run, _md5 = m.groups()
    assert recipe.id.endswith(f"-{task}")
    assert recipe.spec.config_file.endswith(f"{task}-segmentation/swin/{run}.yaml")
    size = recipe.id.split("-")[2]
    if "in21k" in recipe.id or size == "large":
        assert "IN21k" in run
    assert {"tiny": "swin_tiny", "small": "swin_small", "base": "swin_base", "large": "swin_large"}[size] in run
    assert recipe.hub_id.startswith("facebook/mask2former-swin-")
    assert recipe.hub_id.lower() == "facebook/" + recipe.id
    heads = cfg["MODEL"]["SWIN"]["NUM_HEADS"]
    assert cfg["MODEL"]["SWIN"]["EMBED_DIM"] == 32 * heads[0] and heads == [heads[0] * 2**i for i in range(4)]
    assert len(recipe.spec.classes) == cfg["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"]
    assert recipe.spec.dataset == cfg["DATASETS"]["TRAIN"][0]
    flags = cfg["MODEL"]["MASK_FORMER"]["TEST"]
    if flags["PANOPTIC_ON"] or flags["INSTANCE_ON"]:
        things = recipe.spec.thing_ids()
        assert things and all(0 <= t < cfg["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"] for t in things)


def test_swin_large_panoptic_and_instance_use_200_queries():
    for recipe in REAL:
        queries = recipe.original_config["MODEL"]["MASK_FORMER"]["NUM_OBJECT_QUERIES"]
        large_things = "-large-" in recipe.id and not recipe.id.endswith("semantic")
        assert queries == (200 if large_things else 100), recipe.id


def test_config_conversion_reads_each_detectron2_key():
    base = next(r for r in REAL if r.id == "mask2former-swin-small-coco-panoptic").original_config
    values = hf_values(base)
    assert values["backbone_config"]["depths"] == [2, 2, 18, 2]
    assert values["backbone_config"]["window_size"] == 7 and values["num_queries"] == 100
    assert values["encoder_feedforward_dim"] == ENCODER_FFN == 1024
    probes = {
        ("MODEL", "MASK_FORMER", "NHEADS"): ("num_attention_heads", 3),
        ("MODEL", "MASK_FORMER", "DEC_LAYERS"): ("decoder_layers", 7),
        ("MODEL", "MASK_FORMER", "HIDDEN_DIM"): ("hidden_dim", 64),
        ("MODEL", "MASK_FORMER", "DIM_FEEDFORWARD"): ("dim_feedforward", 96),
        ("MODEL", "MASK_FORMER", "NUM_OBJECT_QUERIES"): ("num_queries", 17),
        ("MODEL", "MASK_FORMER", "ENFORCE_INPUT_PROJ"): ("enforce_input_projection", True),
        ("MODEL", "SEM_SEG_HEAD", "CONVS_DIM"): ("feature_size", 48),
        ("MODEL", "SEM_SEG_HEAD", "MASK_DIM"): ("mask_feature_size", 40),
        ("MODEL", "SEM_SEG_HEAD", "TRANSFORMER_ENC_LAYERS"): ("encoder_layers", 3),
        ("MODEL", "SEM_SEG_HEAD", "IGNORE_VALUE"): ("ignore_value", 65),
    }
    for (a, b, c), (key, new) in probes.items():
        cfg = copy.deepcopy(base)
        cfg[a][b][c] = new
        assert hf_values(cfg)[key] == new, (c, key)
    for key, new in (("EMBED_DIM", 64), ("WINDOW_SIZE", 12), ("PATCH_SIZE", 2), ("MLP_RATIO", 3.0)):
        cfg = copy.deepcopy(base)
        cfg["MODEL"]["SWIN"][key] = new
        converted = hf_values(cfg)["backbone_config"]
        assert new in converted.values(), key


@pytest.mark.parametrize("change,message", [
    (("BACKBONE", "NAME", "build_resnet_backbone"), "not Swin"),
    (("SEM_SEG_HEAD", "DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS", 8), "4 sampling points"),
    (("SEM_SEG_HEAD", "PIXEL_DECODER_NAME", "BasePixelDecoder"), "not supported"),
])
def test_config_conversion_refuses_what_transformers_cannot_express(change, message):
    cfg = copy.deepcopy(REAL[0].original_config)
    section, key, value = change
    cfg["MODEL"][section][key] = value
    with pytest.raises(ParityError, match=message):
        hf_values(cfg)


@pytest.mark.parametrize("recipe", FIXTURE_RECIPES, ids=[r.id for r in FIXTURE_RECIPES])
def test_fixture_recipe_config_is_the_fixtures_detectron2_config(recipe):
    """Every value the conversion reads equals the merged detectron2 config the fixture was made with."""
    meta = read_json(FIXTURES / recipe.checkpoint.fixture / "fixture.json")
    kv = meta["original_config"]["key_values"]
    cfg = recipe.original_config
    assert recipe.spec.config_file == meta["original_config"]["upstream_yaml"]
    for key in ("EMBED_DIM", "DEPTHS", "NUM_HEADS", "WINDOW_SIZE", "PATCH_SIZE", "MLP_RATIO", "QKV_BIAS", "APE",
                "PATCH_NORM", "OUT_FEATURES"):
        assert cfg["MODEL"]["SWIN"][key] == kv["swin"][key], key
    for key in ("NUM_CLASSES", "CONVS_DIM", "MASK_DIM", "NORM", "TRANSFORMER_ENC_LAYERS", "COMMON_STRIDE",
                "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"):
        assert cfg["MODEL"]["SEM_SEG_HEAD"][key] == kv["sem_seg_head"][key], key
    for key in ("HIDDEN_DIM", "NHEADS", "DIM_FEEDFORWARD", "NUM_OBJECT_QUERIES", "DEC_LAYERS", "PRE_NORM",
                "ENFORCE_INPUT_PROJ", "SIZE_DIVISIBILITY", "TEST"):
        assert cfg["MODEL"]["MASK_FORMER"][key] == kv["mask_former"][key], key
    assert cfg["MODEL"]["PIXEL_MEAN"] == kv["PIXEL_MEAN"] and cfg["MODEL"]["PIXEL_STD"] == kv["PIXEL_STD"]
    assert cfg["INPUT"]["MIN_SIZE_TEST"] == kv["MIN_SIZE_TEST"] and cfg["INPUT"]["MAX_SIZE_TEST"] == kv["MAX_SIZE_TEST"]
    assert cfg["TEST"]["DETECTIONS_PER_IMAGE"] == kv["DETECTIONS_PER_IMAGE"]
    assert cfg["DATASETS"]["TRAIN"] == kv["DATASETS_TRAIN"]
    things = meta["original_config"]["dataset_metadata"]["thing_contiguous_ids_below_num_classes"]
    if isinstance(things, list):
        assert recipe.spec.thing_ids() == things
    assert recipe.checkpoint.sha256 == meta["checkpoints"][0]["sha256"]


# ----------------------------------------------------------------------------------------------------------------------
# origin environment: Docker only


def test_local_convert_points_at_docker(tmp_path):
    """The origin cannot be built here: a one-line error naming the reason and --backend docker, exit 2."""
    reason = (ROOT / "images" / "detectron2" / "LOCAL_UNSUPPORTED").read_text().strip()
    fake = tmp_path / "model_final_86143f.pkl"
    fake.write_bytes(b"\x80\x03}q\x00.")
    for args in (["mask2former-fixture-tiny-coco-instance"], ["mask2former-swin-tiny-coco-instance", "--checkpoint", str(fake)]):
        result = parity("convert", *args, "--out", str(tmp_path / "out"), check=2)
        assert len(stderr_without_progress(result)) == 1, result.stderr
        line = error_line(result)
        assert "--backend docker" in line and "detectron2" in line
        assert reason in line
        assert not (tmp_path / "out" / args[0] / "report.json").exists()


# ----------------------------------------------------------------------------------------------------------------------
# golden fixtures through the port (transformers environment)


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("m2f")
    runs = {}
    for folder in (COCO, ADE):
        parity("diff", "--dump", str(folder), "--out", str(out / folder.name), check=0)
        runs[folder.name] = out / folder.name
    return runs


@slow
@pytest.mark.parametrize("folder", [COCO, ADE], ids=["coco-instance", "ade-semantic"])
def test_every_fixture_reference_passes_within_1e_4(fixture_runs, folder):
    report = read_json(fixture_runs[folder.name] / "report.json")
    assert report["dump_producer"] == "fixture" and report["verdict"] == "pass" and report["first_divergence"] is None
    refs = {r["key"] for r in read_json(folder / "fixture.json")["references"]}
    captures = {c["name"]: c for c in report["captures"]}
    assert set(captures) == refs
    for name, capture in captures.items():
        assert capture["verdict"] == "pass", capture
        assert capture["atol"] <= 1e-4 and capture["max_abs"] <= 1e-4, name
        if not name.startswith("sem_seg_head.predictor."):
            assert capture["tolerance_reason"] is None and capture["atol"] <= 1e-5, name
    for group in ("backbone.res", "sem_seg_head.pixel_decoder.multi_scale_features", "sem_seg_head.predictor.aux_outputs"):
        assert any(n.startswith(group) for n in captures), group
    conversion = report["conversion"]
    assert conversion["missing"] == [] and conversion["unused"] == [] and conversion["shape_errors"] == []
    rules = {m["rule"] for m in conversion["mappings"]}
    assert any("relative position index" in r for r in rules)
    index_drops = [m for m in conversion["mappings"] if m["op"] == "drop" and "relative_position_index" in m["sources"][0]]
    assert len(index_drops) == 5
    splits = [m for m in conversion["mappings"] if m["op"] == "split"]
    assert all(len(m["targets"]) == 3 for m in splits) and len(splits) == 2 * 5 + 2 * 3


@slow
def test_post_processed_outputs_and_processor_verdicts_are_reported(fixture_runs):
    coco = read_json(fixture_runs[COCO.name] / "report.json")
    names = {c["name"]: c for c in coco["captures"]}
    for key in ("return.instances.pred_masks", "return.instances.scores", "return.instances.pred_classes",
                "return.sem_seg", "return.panoptic_seg", "return.panoptic_seg.segments_info"):
        assert names[key]["verdict"] == "pass", key
    for run in fixture_runs.values():
        processor = read_json(run / "report.json")["processor"]
        checks = {c["name"]: c for c in processor["checks"]}
        # detectron2 pads, transformers stretches to the size divisor: reported, not hidden
        assert checks["pixel_values[valid region]"]["verdict"] == "pass"
        assert checks["pixel_values"]["verdict"] == "fail" and "stretched" in processor["note"]
        assert checks["postprocess.semantic.label_map"]["port_shape"] == checks["postprocess.semantic.label_map"]["origin_shape"]
        assert processor["verdict"] == "fail" and "384x384" in processor["note"]
    coco_checks = {c["name"]: c for c in coco["processor"]["checks"]}
    for name in ("postprocess.panoptic.segmentation", "postprocess.panoptic.segments_info",
                 "postprocess.instance.top_scores", "postprocess.instance.top_classes"):
        assert coco_checks[name]["verdict"] in ("pass", "fail") and coco_checks[name]["max_abs"] is not None, name


@slow
def test_saved_port_reloads_and_reverifies(fixture_runs, tmp_path):
    hf = fixture_runs[COCO.name] / "hf"
    assert (hf / "config.json").is_file() and (hf / "preprocessor_config.json").is_file()
    config = read_json(hf / "config.json")
    assert config["num_queries"] == 10 and config["backbone_config"]["window_size"] == 4
    processor = read_json(hf / "preprocessor_config.json")
    assert processor["size"] == {"shortest_edge": 80, "longest_edge": 1333} and processor["size_divisor"] == 32
    assert processor["image_mean"] == pytest.approx([123.675 / 255, 116.28 / 255, 103.53 / 255])
    assert processor["image_std"] == pytest.approx([58.395 / 255, 57.12 / 255, 57.375 / 255])
    assert processor["ignore_index"] == 255
    parity("diff", "--dump", str(COCO), "--port", str(hf), "--out", str(tmp_path), check=0)
    report = read_json(tmp_path / "report.json")
    assert report["port"] == str(hf) and report["verdict"] == "pass"


SW = "model.pixel_level_module.encoder"
PD = "model.pixel_level_module.decoder"
TD = "model.transformer_module"
MUTATIONS = [
    ({"kind": "swap", "key": f"{SW}.swin.encoder.layers.0.blocks.0.attention.q_proj.weight",
      "other": f"{SW}.swin.encoder.layers.0.blocks.0.attention.k_proj.weight"}, "backbone.layers.0.x_out"),
    ({"kind": "swap", "key": f"{SW}.swin.encoder.layers.2.blocks.0.attention.relative_position_bias.relative_position_bias_table",
      "other": f"{SW}.swin.encoder.layers.2.blocks.1.attention.relative_position_bias.relative_position_bias_table"},
     "backbone.layers.2.x_out"),
    ({"kind": "scale", "key": f"{SW}.swin.encoder.layers.0.downsample.norm.weight", "factor": 1.05},
     "backbone.layers.1.x_out"),
    ({"kind": "zero", "key": f"{SW}.hidden_states_norms.stage2.bias"}, "backbone.res3"),
    ({"kind": "zero", "key": f"{PD}.input_projections.0.1.bias"}, "sem_seg_head.pixel_decoder.input_proj.0"),
    ({"kind": "swap-chunks", "key": f"{PD}.level_embed", "chunks": 3, "i": 0, "j": 2},
     "sem_seg_head.pixel_decoder.transformer.encoder.layers.0"),
    ({"kind": "transpose", "key": f"{PD}.encoder.layers.1.self_attn.value_proj.weight"},
     "sem_seg_head.pixel_decoder.transformer.encoder.layers.1"),
    # (a scaled lateral conv would go unnoticed: GroupNorm follows it; swapping output channels does not)
    ({"kind": "swap-chunks", "key": f"{PD}.adapter_1.0.weight", "chunks": 2, "i": 0, "j": 1},
     "sem_seg_head.pixel_decoder.mask_features"),
    ({"kind": "swap-chunks", "key": "class_predictor.weight", "chunks": 6, "i": 0, "j": 1},
     "sem_seg_head.predictor.pred_logits"),
    ({"kind": "transpose", "key": f"{TD}.decoder.mask_predictor.mask_embedder.2.0.weight"},
     "sem_seg_head.predictor.pred_logits"),
]


@slow
@pytest.mark.parametrize("mutation,first", MUTATIONS, ids=[m["kind"] + ":" + m["key"].removeprefix("model.") for m, _ in MUTATIONS])
def test_corrupted_mapping_fails_at_the_first_affected_capture(tmp_path, mutation, first):
    parity("diff", "--dump", str(COCO), "--out", str(tmp_path), "--mutate", json.dumps(mutation), check=1)
    report = read_json(tmp_path / "report.json")
    assert report["verdict"] == "fail" and report["first_divergence"] == first
    assert not (tmp_path / "hf").exists()
    verdicts = {c["name"]: c["verdict"] for c in report["captures"]}
    if "mask_embedder" in mutation["key"]:
        # the class head of the learnable queries is untouched; their mask head is not
        assert verdicts["sem_seg_head.predictor.aux_outputs.0.pred_logits"] == "pass"
        assert verdicts["sem_seg_head.predictor.aux_outputs.0.pred_masks"] == "fail"
    if mutation["key"] == "class_predictor.weight":
        # raw mask logits untouched; the post-processed instances (top-k over class scores) are not
        assert all(v == "pass" for n, v in verdicts.items() if n.startswith("sem_seg_head.") and n.endswith("pred_masks"))
        assert verdicts["return.instances.scores"] == "fail"


@slow
def test_dropped_weight_is_caught_by_strict_accounting(tmp_path):
    key = f"{TD}.decoder.layers.1.self_attn.v_proj.bias"
    result = parity("diff", "--dump", str(COCO), "--out", str(tmp_path), "--mutate",
                    json.dumps({"kind": "drop", "key": key}), check=2)
    assert key in error_line(result)


@slow
def test_relative_position_index_is_checked_before_it_is_dropped():
    out = in_env("transformers", """
import torch
from parity.families.mask2former.port import _check_index, _relative_position_index
good = _relative_position_index(4)
print(_check_index(4)(good) == [])
bad = good.clone(); bad[0, 1] += 1
try:
    _check_index(4)(bad); print("accepted")
except Exception as exc:
    print(type(exc).__name__)
""")
    assert out.split() == ["True", "ParityError"]


@slow
@pytest.mark.parametrize("recipe", FIXTURE_RECIPES, ids=[r.id for r in FIXTURE_RECIPES])
def test_every_recipe_config_value_equals_the_fixtures_merged_detectron2_yaml(recipe):
    """config.yaml is cfg.dump() of the fully merged upstream config: each leaf the recipe states must be there with
    the same value (this checks the shared base values of the model-zoo table too, e.g. 1024-wide encoder FFN aside,
    DROP_PATH_RATE, PRETRAIN_IMG_SIZE, thresholds and the deformable encoder's settings)."""
    folder = FIXTURES / recipe.checkpoint.fixture
    dumped = json.loads(in_env("transformers", f"""
import json, yaml
print(json.dumps(yaml.safe_load(open({str(folder / 'config.yaml')!r}))))
"""))

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    sections = {k: v for k, v in recipe.original_config.items() if k in ("MODEL", "INPUT", "DATASETS", "TEST")}
    checked = 0
    for key, value in leaves(sections):
        node = dumped
        for part in key.split("."):
            node = node[part]
        assert node == value or (isinstance(value, float) and abs(node - value) < 1e-9), (key, node, value)
        checked += 1
    assert checked > 60


def test_published_spelling_selects_the_lower_case_ids():
    assert [r.id for r in select("mask2former-swin-base-IN21k-coco-panoptic")] == ["mask2former-swin-base-in21k-coco-panoptic"]
    assert len(select("mask2former-swin-base-IN21k-cityscapes")) == 3


@slow
def test_published_variants_build_the_architecture_their_config_names():
    """hf_config on the real table, built on the meta device: the tensors that encode each config value."""
    out = in_env("transformers", """
import json, torch, transformers
from parity.host.registry import all_recipes
from parity.families.mask2former import port
rows = {}
for rid in ("mask2former-swin-large-coco-panoptic", "mask2former-swin-tiny-ade-semantic",
            "mask2former-swin-large-mapillary-vistas-semantic"):
    recipe = all_recipes()[rid]
    config = port.hf_config(recipe)
    with torch.device("meta"):
        model = transformers.Mask2FormerForUniversalSegmentation(config)
    sd = model.state_dict()
    stage3 = {k.split(".")[8] for k in sd if ".encoder.layers.2.blocks." in k and "swin" in k}
    rows[rid] = {
        "classes": list(sd["class_predictor.weight"].shape),
        "queries": list(sd["model.transformer_module.queries_features.weight"].shape),
        "stage3_blocks": len(stage3),
        "table": list(sd["model.pixel_level_module.encoder.swin.encoder.layers.3.blocks.0.attention."
                         "relative_position_bias.relative_position_bias_table"].shape),
        "decoder_layers": len({k.split(".")[4] for k in sd if k.startswith("model.transformer_module.decoder.layers.")}),
        "encoder_layers": len({k.split(".")[5] for k in sd if k.startswith("model.pixel_level_module.decoder.encoder.layers.")}),
        "id2label0": config.id2label[0],
        "ignore": port.build_processor(recipe).ignore_index,
    }
print(json.dumps(rows))
""")
    rows = json.loads(out.strip().splitlines()[-1])
    large = rows["mask2former-swin-large-coco-panoptic"]
    assert large["classes"] == [134, 256] and large["queries"] == [200, 256] and large["stage3_blocks"] == 18
    assert large["table"] == [23 * 23, 48] and large["decoder_layers"] == 9 and large["encoder_layers"] == 6
    assert large["id2label0"] == "person" and large["ignore"] == 255
    tiny = rows["mask2former-swin-tiny-ade-semantic"]
    assert tiny["classes"] == [151, 256] and tiny["queries"] == [100, 256] and tiny["stage3_blocks"] == 6
    assert tiny["table"] == [13 * 13, 24] and tiny["id2label0"] == "wall"
    vistas = rows["mask2former-swin-large-mapillary-vistas-semantic"]
    assert vistas["classes"] == [66, 256] and vistas["ignore"] == 65 and vistas["id2label0"] == "Bird"
