"""CLIPSeg: the port against the golden fixtures made by upstream timojl/clipseg + openai/CLIP, the offline tokenizer,
mutations, both published checkpoint layouts, and the Docker-only origin's local refusal."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES, error_line, in_env, parity, read_json, stderr_without_progress

pytestmark = pytest.mark.slow
NAMES = ("clipseg-tiny-clip-vit-b16", "clipseg-tiny-rd16", "clipseg-tiny-rd64-refined")
REFINED = FIXTURES / "clipseg-tiny-rd64-refined"


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory):
    runs = {}
    for name in NAMES:
        out = tmp_path_factory.mktemp(name)
        parity("diff", "--dump", str(FIXTURES / name), "--out", str(out), check=0)
        runs[name] = out
    return runs


@pytest.mark.parametrize("name", NAMES)
def test_port_passes_every_fixture_reference_at_strict_fp32(fixture_runs, name):
    report = read_json(fixture_runs[name] / "report.json")
    assert report["dump_producer"] == "fixture" and report["verdict"] == "pass"
    fixture_refs = {r["key"] for r in read_json(FIXTURES / name / "fixture.json")["references"]}
    assert {c["name"] for c in report["captures"]} == fixture_refs
    for capture in report["captures"]:
        assert capture["verdict"] == "pass", capture
        assert capture["atol"] <= 1e-5 and capture["tolerance_reason"] is None
    assert report["conversion"]["missing"] == [] and report["conversion"]["unused"] == []


@pytest.mark.parametrize("name", NAMES)
def test_offline_tokenizer_reproduces_clip_tokenize_token_for_token(fixture_runs, name):
    processor = read_json(fixture_runs[name] / "report.json")["processor"]
    checks = {c["name"]: c for c in processor["checks"]}
    assert checks["input_ids"]["verdict"] == "pass" and checks["input_ids"]["max_abs"] == 0.0
    assert checks["pixel_values"]["verdict"] == "pass"
    assert processor["verdict"] == "pass" and "49408 tokens" in processor["note"]


def test_decoder_conversion_drops_only_the_unused_reduce_layer(fixture_runs):
    conversion = read_json(fixture_runs["clipseg-tiny-rd64-refined"] / "conversion.json")
    drops = sorted(s for m in conversion["mappings"] if m["op"] == "drop" for s in m["sources"])
    assert drops == ["reduce.bias", "reduce.weight"]
    transposed = sorted(m["sources"][0] for m in conversion["mappings"] if m["op"] == "transpose")
    assert transposed == ["clip_model.text_projection", "clip_model.visual.proj"]
    assert sum(m["op"] == "split" for m in conversion["mappings"]) == 2 * (3 + 2 + 2)


def test_the_tower_fixture_is_fp16_rounded_as_openai_ships_it():
    """Every CLIP weight handed to the port is exactly representable in fp16 (the references were computed so)."""
    out = in_env("fixtures", f"""
import torch
from pathlib import Path
from parity.families.clipseg.origin import fixture_state_dict
from parity.families.clipseg.variants import FIXTURE_RECIPES
recipe = FIXTURE_RECIPES['clipseg-tiny-rd16']
sd = fixture_state_dict(recipe, Path({str(FIXTURES / 'clipseg-tiny-rd16' / 'clipseg_decoder.pth')!r}))
tower = [v for k, v in sd.items() if k.startswith('clip_model.')]
decoder = [v for k, v in sd.items() if not k.startswith('clip_model.')]
print(len(tower), len(decoder), all(v.dtype == torch.float32 for v in sd.values()),
      all(torch.equal(v, v.half().float()) for v in tower), all(torch.equal(v, v.half().float()) for v in decoder))
""").split()
    assert out == ["74", "36", "True", "True", "False"]


def test_combined_layout_reads_the_same_as_decoder_plus_tower(tmp_path):
    """The single-file layout HF's convert script reads (clip_model.*, model.* aliases, decoder), built from the two
    published-format files exactly as the fixture documents, gives the same original state dict; the port drops the
    model.* aliases by a declared rule."""
    combined = tmp_path / "clipseg_combined.pth"
    out = in_env("fixtures", f"""
import torch
from pathlib import Path
from parity.families.clipseg.origin import fixture_state_dict, split_layout
from parity.families.clipseg.variants import FIXTURE_RECIPES
from parity.contracts.errors import ParityError
recipe = FIXTURE_RECIPES['clipseg-tiny-rd64-refined']
decoder_file = Path({str(REFINED / 'clipseg_decoder.pth')!r})
tower = torch.load({str(FIXTURES / 'clipseg-tiny-clip-vit-b16' / 'clip_vit_b16_tiny.pt')!r}, weights_only=True)
dec = torch.load(decoder_file, weights_only=True)
skip = ('input_resolution', 'context_length', 'vocab_size')
c = {{'clip_model.' + k: v.float() for k, v in tower.items() if k not in skip}}
c.update({{'model.' + k[len('visual.'):]: v.float() for k, v in tower.items() if k.startswith('visual.')}})
c.update(dec)
torch.save(c, {str(combined)!r})
a = fixture_state_dict(recipe, decoder_file)
b = fixture_state_dict(recipe, Path({str(combined)!r}))
print(sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a))
del dec['trans_conv.2.bias']
try:
    split_layout(recipe, dec, decoder_file)
except ParityError as exc:
    print('error:', exc)
""").splitlines()
    assert out[0] == "True"
    assert out[1].startswith("error:") and "trans_conv.2.bias" in out[1]


def test_aliases_and_unused_reduce_are_accounted_for_by_declared_rules():
    out = in_env("transformers", """
import torch, transformers
from parity.port.rules import convert_state_dict
from parity.families.clipseg import port
from parity.families.clipseg.variants import FIXTURE_RECIPES
recipe = FIXTURE_RECIPES['clipseg-tiny-rd16']
with torch.device('meta'):
    model = transformers.CLIPSegForImageSegmentation(port.hf_config(recipe))
expected = {k: v.shape for k, v in model.state_dict().items()}
state = {'model.conv1.weight': torch.zeros(768, 3, 16, 16), 'reduce.weight': torch.zeros(16, 768),
         'clip_model.visual.conv1.weight': torch.zeros(768, 3, 16, 16), 'something.else': torch.zeros(1)}
converted, record = convert_state_dict('x', state, port.rules(recipe), expected)
print(sorted(s for m in record.mappings if m.op == 'drop' for s in m.sources), record.unused,
      sorted(converted))
""").strip()
    assert out == ("['model.conv1.weight', 'reduce.weight'] ['something.else'] "
                   "['clip.vision_model.embeddings.patch_embedding.weight']")


MUTATIONS = [
    ({"kind": "swap", "key": "clip.text_model.encoder.layers.1.self_attn.q_proj.weight",
      "other": "clip.text_model.encoder.layers.1.self_attn.k_proj.weight"}, "clip_model.transformer"),
    ({"kind": "zero", "key": "clip.vision_model.encoder.layers.0.mlp.fc2.bias"}, "return.activations.0"),
    ({"kind": "swap", "key": "decoder.reduces.0.weight", "other": "decoder.reduces.1.weight"}, "reduces.0"),
    ({"kind": "swap", "key": "decoder.film_mul.weight", "other": "decoder.film_add.weight"}, "film_mul"),
    ({"kind": "scale", "key": "decoder.transposed_convolution.2.weight", "factor": 1.01}, "trans_conv.2"),
]


@pytest.mark.parametrize("mutation,first", MUTATIONS, ids=[m["kind"] + ":" + m["key"] for m, _ in MUTATIONS])
def test_corrupted_mapping_fails_at_the_first_affected_capture(tmp_path, mutation, first):
    result = parity("diff", "--dump", str(REFINED), "--out", str(tmp_path), "--mutate", json.dumps(mutation), check=1)
    report = read_json(tmp_path / "report.json")
    assert report["verdict"] == "fail"
    assert report["first_divergence"] == first, result.stdout
    assert not (tmp_path / "hf").exists()


def test_origin_is_docker_only_with_a_one_line_error(tmp_path):
    result = parity("convert", "clipseg-tiny-random", "--out", str(tmp_path), check=2)
    line = error_line(result)
    assert "origin 'clipseg' cannot run in a local venv here" in line and "--backend docker" in line
    assert "timojl/clipseg" in line
    assert len(stderr_without_progress(result)) == 1


def test_origin_helpers_without_the_upstream_packages(tmp_path):
    """Everything in origin.py that needs neither clip nor clipseg: preprocessing reproduces the fixtures' pixel values
    bit for bit, the expected key sets match the fixture files, OpenAI's archive is the step's `clip-vit-b16` asset
    (an error naming it when the step carries none) and a fixture tower resolves in the step's fixtures folder."""
    (tmp_path / "ViT-B-16.pt").write_bytes(b"archive")
    out = in_env("fixtures", f"""
import numpy as np, torch
from pathlib import Path
from PIL import Image
from safetensors.torch import load_file
from parity.families.clipseg import origin
from parity.families.clipseg.variants import FIXTURE_RECIPES, PUBLISHED
for name in ('clipseg-tiny-rd16', 'clipseg-tiny-clip-vit-b16'):
    fx = Path({str(FIXTURES)!r}) / name
    names = sorted(p.stem for p in fx.glob('image*.png'))
    images = {{n: np.asarray(Image.open(fx / (n + '.png')).convert('RGB')) for n in names}}
    print(torch.equal(origin.preprocess(FIXTURE_RECIPES[name], images), load_file(str(fx / 'inputs.safetensors'))['pixel_values']))
recipe = FIXTURE_RECIPES['clipseg-tiny-rd64-refined']
dec = torch.load(Path({str(REFINED)!r}) / 'clipseg_decoder.pth', weights_only=True)
tower = torch.load(Path({str(FIXTURES)!r}) / 'clipseg-tiny-clip-vit-b16' / 'clip_vit_b16_tiny.pt', weights_only=True)
print(set(dec) == origin.decoder_keys(recipe.original_config['decoder']),
      set(tower) - set(origin.ARCHIVE_SCALARS) == origin.tower_keys(recipe.original_config['clip']),
      len(origin.decoder_keys(FIXTURE_RECIPES['clipseg-tiny-rd16'].original_config['decoder'])))
real = PUBLISHED[0]
from parity.contracts.errors import ParityError
from parity.origin.assets import use_assets
try:
    origin.tower_file(real)
except ParityError as exc:
    print(exc)
use_assets({{'clip-vit-b16': Path({str(tmp_path / 'ViT-B-16.pt')!r})}})
print(origin.tower_file(real))
from parity.contracts.paths import use_fixtures_dir
use_fixtures_dir(Path({str(tmp_path)!r}))
print(origin.tower_file(recipe))
""").splitlines()
    assert out[:2] == ["True", "True"]
    assert out[2] == "True True 36"
    assert out[3].startswith("the step carries no asset 'clip-vit-b16'") and "--asset clip-vit-b16=PATH" in out[3]
    assert out[4] == str(tmp_path / "ViT-B-16.pt")
    assert out[5] == str(tmp_path / "clipseg-tiny-clip-vit-b16" / "clip_vit_b16_tiny.pt")
