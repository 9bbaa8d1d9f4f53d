"""ViT-MSN: the port against the golden fixture made by upstream facebookresearch/msn, mutations, the fixture
loader, and the Docker-only origin's local refusal."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES, error_line, in_env, parity, read_json, stderr_without_progress

pytestmark = pytest.mark.slow
MSN_FIXTURE = FIXTURES / "msn-vit-tiny-p16"


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("msn")
    parity("diff", "--dump", str(MSN_FIXTURE), "--out", str(out), check=0)
    return out


def test_port_passes_every_fixture_reference_at_strict_fp32(fixture_run):
    report = read_json(fixture_run / "report.json")
    assert report["dump_producer"] == "fixture" and report["verdict"] == "pass"
    fixture_refs = {r["key"] for r in read_json(MSN_FIXTURE / "fixture.json")["references"]}
    assert {c["name"] for c in report["captures"]} == fixture_refs
    for capture in report["captures"]:
        assert capture["verdict"] == "pass", capture
        assert capture["atol"] <= 1e-5 and capture["tolerance_reason"] is None
    assert report["processor"]["verdict"] == "pass"
    assert report["conversion"]["missing"] == [] and report["conversion"]["unused"] == []


def test_interpolated_position_table_matches_the_original(fixture_run):
    """interp96.*: 4x4 -> 6x6 grid; the original passes scale_factor=1.5, HF passes size=(6, 6): same samples."""
    captures = {c["name"]: c for c in read_json(fixture_run / "report.json")["captures"]}
    table = captures["interp96.interpolate_pos_encoding"]
    assert table["origin_shape"] == [1, 37, 48] and table["verdict"] == "pass" and table["atol"] <= 1e-5
    assert captures["interp96.norm"]["origin_shape"] == [1, 37, 48]


def test_conversion_splits_qkv_and_hands_over_no_projection_head(fixture_run):
    conversion = read_json(fixture_run / "conversion.json")
    splits = [m for m in conversion["mappings"] if m["op"] == "split"]
    assert len(splits) == 6  # qkv weight + bias for each of the 3 blocks
    assert splits[0]["targets"][0].endswith("q_proj.bias") or splits[0]["targets"][0].endswith("q_proj.weight")
    assert not any(source.startswith(("fc.", "module.")) for m in conversion["mappings"] for source in m["sources"])


MUTATIONS = [
    ({"kind": "swap", "key": "layers.1.attention.q_proj.weight", "other": "layers.1.attention.k_proj.weight"},
     "blocks.1"),
    ({"kind": "zero", "key": "layers.0.mlp.fc2.bias"}, "blocks.0"),
    ({"kind": "transpose", "key": "layers.2.attention.o_proj.weight"}, "blocks.2"),
    ({"kind": "scale", "key": "embeddings.position_embeddings", "factor": 1.01}, "blocks.0"),
]


@pytest.mark.parametrize("mutation,first", MUTATIONS, ids=[m["kind"] + ":" + m["key"] for m, _ in MUTATIONS])
def test_corrupted_mapping_fails_at_the_first_affected_capture(tmp_path, mutation, first):
    result = parity("diff", "--dump", str(MSN_FIXTURE), "--out", str(tmp_path), "--mutate", json.dumps(mutation),
                    check=1)
    report = read_json(tmp_path / "report.json")
    assert report["verdict"] == "fail"
    assert report["first_divergence"] == first, result.stdout
    assert not (tmp_path / "hf").exists()


def test_fixture_loader_follows_msns_eval_recipe_and_rejects_other_containers(tmp_path):
    """fixture_state_dict in the torch-only fixtures env: target_encoder (not encoder), 'module.' stripped, fc.* gone."""
    bad = tmp_path / "plain.pth"
    out = in_env("fixtures", f"""
import torch
from pathlib import Path
from parity.families.vit_msn.origin import fixture_state_dict
from parity.families.vit_msn.variants import FIXTURE_RECIPE
from parity.contracts.errors import ParityError
ck = torch.load({str(MSN_FIXTURE / 'checkpoint.pth.tar')!r}, weights_only=True)
sd = fixture_state_dict(FIXTURE_RECIPE, Path({str(MSN_FIXTURE / 'checkpoint.pth.tar')!r}))
print(len(sd), any(k.startswith(('module.', 'fc.')) for k in sd))
print(torch.equal(sd['blocks.0.attn.qkv.weight'], ck['target_encoder']['module.blocks.0.attn.qkv.weight']),
      torch.equal(sd['blocks.0.attn.qkv.weight'], ck['encoder']['module.blocks.0.attn.qkv.weight']))
torch.save({{'encoder': ck['encoder']}}, {str(bad)!r})
try:
    fixture_state_dict(FIXTURE_RECIPE, Path({str(bad)!r}))
except ParityError as exc:
    print('error:', exc)
""").splitlines()
    assert out[0] == "42 False"
    assert out[1] == "True False"
    assert out[2].startswith("error:") and "target_encoder" in out[2]


def test_projection_head_is_dropped_by_a_declared_rule():
    """A state dict that still carries fc.* (e.g. loaded without msn's fc = None) converts with fc.* dropped, named."""
    out = in_env("transformers", """
import torch, transformers
from safetensors.torch import load_file
from parity.port.rules import convert_state_dict
from parity.families.vit_msn import port
from parity.families.vit_msn.variants import FIXTURE_RECIPE
config = port.hf_config(FIXTURE_RECIPE)
with torch.device('meta'):
    model = transformers.ViTMSNModel(config)
expected = {k: v.shape for k, v in model.state_dict().items()}
state = {'blocks.0.norm1.weight': torch.ones(48), 'fc.fc1.weight': torch.ones(64, 48),
          'fc.bn1.num_batches_tracked': torch.tensor(0)}
converted, record = convert_state_dict('x', state, port.rules(FIXTURE_RECIPE), expected)
drops = sorted(s for m in record.mappings if m.op == 'drop' for s in m.sources)
print(drops, record.unused, 'layers.0.layernorm_before.weight' in converted)
""").strip()
    assert out == "['fc.bn1.num_batches_tracked', 'fc.fc1.weight'] [] True"


def test_origin_is_docker_only_with_a_one_line_error(tmp_path):
    result = parity("convert", "vit-msn-tiny-random", "--out", str(tmp_path), check=2)
    line = error_line(result)
    assert "origin 'msn' cannot run in a local venv here" in line and "--backend docker" in line
    assert "facebookresearch/msn" in line
    assert len(stderr_without_progress(result)) == 1


def test_origin_helpers_without_the_upstream_package(tmp_path):
    """Everything in origin.py that does not need src.deit: preprocessing reproduces the fixture's input tensors bit for
    bit, the interpolation guard, the head's re-draw, and a one-line error for a truncated checkpoint."""
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes((MSN_FIXTURE / "checkpoint.pth.tar").read_bytes()[:5000])
    out = in_env("fixtures", f"""
import numpy as np, torch
from pathlib import Path
from PIL import Image
from safetensors.torch import load_file
from parity.families.vit_msn import origin
from parity.families.vit_msn.variants import FIXTURE_RECIPE as recipe, PUBLISHED
from parity.contracts.errors import ParityError
fx = Path({str(MSN_FIXTURE)!r})
refs = load_file(str(fx / 'inputs.safetensors'))
images = {{n: np.asarray(Image.open(fx / (n + '.png')).convert('RGB')) for n in ('image', 'image96')}}
print(origin.interp_sizes(images),
      torch.equal(origin.preprocess(recipe, images['image'], keep_size=False), refs['pixel_values']),
      torch.equal(origin.preprocess(recipe, images['image96'], keep_size=True), refs['pixel_values_96']))
for r in PUBLISHED:
    origin.check_square_grid(r, 336)
try:
    origin.check_square_grid(PUBLISHED[0], 464)  # 14 -> 29 patches: floor(14 * sqrt(841 / 196)) == 28
except ParityError as exc:
    print('grid error')
head = origin.projection_head(recipe)
from parity.origin.redraw import redraw
redraw(head, 0, origin.redraw_rule)
print(sorted(head.state_dict()) == sorted(k[len('module.fc.'):] for k in torch.load(fx / 'checkpoint.pth.tar',
      weights_only=True)['target_encoder'] if k.startswith('module.fc.')),
      all(not torch.all(v == 1) and not torch.all(v == 0) for k, v in head.state_dict().items() if v.is_floating_point()))
try:
    origin.fixture_state_dict(recipe, Path({str(truncated)!r}))
except ParityError as exc:
    print(str(exc))
""").splitlines()
    assert out[0] == "[96] True True"
    assert out[1] == "grid error"
    assert out[2] == "True True"
    assert "truncated" in out[3] and str(truncated) in out[3]
