"""SAM end to end: the original segment-anything in its environment vs transformers SamModel in its own."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import FIXTURES, error_line, in_env, parity, read_json, stderr_without_progress

pytestmark = pytest.mark.slow
SAM_FIXTURE = FIXTURES / "sam-vit-tiny"


def test_tiny_variant_passes_every_capture_at_strict_fp32(tiny_run):
    report = read_json(tiny_run / "report.json")
    assert report["verdict"] == "pass" and report["first_divergence"] is None
    names = [c["name"] for c in report["captures"]]
    for required in ("image_encoder.patch_embed", "image_encoder.blocks.0", "image_encoder.neck",
                     "prompt_encoder.get_dense_pe", "point1.prompt_encoder.0", "points2.prompt_encoder.1",
                     "box.mask_decoder.predict_masks.0", "box.mask_decoder.predict_masks.1",
                     "point_mask.return.iou_predictions", "batch2.postprocess_masks"):
        assert required in names
    for capture in report["captures"]:
        assert capture["verdict"] == "pass", capture
        assert capture["atol"] <= 1e-5 and capture["tolerance_reason"] is None
    assert report["conversion"]["missing"] == [] and report["conversion"]["unused"] == []
    assert report["processor"]["verdict"] == "pass"
    assert "PASS" in (tiny_run / "report.md").read_text()


def test_origin_really_resized_and_padded_a_non_square_image(tiny_run):
    manifest = read_json(tiny_run / "dump" / "manifest.json")
    shapes = {e["name"]: e["shape"] for e in manifest["inputs"]}
    assert shapes["image"] == [3, 96, 128]
    assert shapes["pixel_values"] == [1, 3, 128, 128]
    pixels = load_file(str(tiny_run / "dump" / "inputs.safetensors"))["pixel_values"]
    assert np.all(pixels[..., 96:, :] == 0) and np.any(pixels[..., :96, :] != 0)
    assert manifest["environment"]["packages"]["segment-anything"] == "1.0"
    assert "transformers" not in manifest["environment"]["packages"]


def test_saved_port_reloads_with_from_pretrained(tiny_run):
    code = f"""
import torch
from safetensors.torch import load_file
from transformers import SamModel, SamProcessor
model = SamModel.from_pretrained({str(tiny_run / 'hf')!r})
processor = SamProcessor.from_pretrained({str(tiny_run / 'hf')!r})
pixels = load_file({str(tiny_run / 'dump' / 'inputs.safetensors')!r})["pixel_values"]
refs = load_file({str(tiny_run / 'dump' / 'reference.safetensors')!r})
with torch.no_grad():
    emb = model.get_image_embeddings(pixels)
print((emb - refs["image_encoder.neck"]).abs().max().item(), processor.image_processor.size)
"""
    max_abs, size = in_env("transformers", code).strip().split(" ", 1)
    assert float(max_abs) < 1e-5
    assert "128" in size


def test_slimsam_proportioned_tiny_variant_passes(tmp_path):
    parity("convert", "slimsam-tiny-random", "--out", str(tmp_path), check=0)
    report = read_json(tmp_path / "slimsam-tiny-random" / "report.json")
    assert report["verdict"] == "pass"
    assert all(c["atol"] <= 1e-5 for c in report["captures"])


def test_two_dumps_of_one_recipe_are_bit_identical(tmp_path):
    for name in ("a", "b"):
        parity("dump", "sam-tiny-random", "--out", str(tmp_path / name), check=0)
    first, second = (read_json(tmp_path / n / "sam-tiny-random" / "dump" / "manifest.json") for n in "ab")
    hashes = [{e["name"]: e["sha256"] for e in m["inputs"] + m["references"]} for m in (first, second)]
    assert hashes[0] == hashes[1] and len(hashes[0]) > 80
    assert first["state_dict"]["sha256"] == second["state_dict"]["sha256"]


def test_port_passes_against_the_upstream_fixture(tmp_path):
    parity("diff", "--dump", str(SAM_FIXTURE), "--out", str(tmp_path), check=0)
    report = read_json(tmp_path / "report.json")
    assert report["dump_producer"] == "fixture" and report["verdict"] == "pass"
    fixture_refs = {r["key"] for r in read_json(SAM_FIXTURE / "fixture.json")["references"]}
    assert {c["name"] for c in report["captures"]} == fixture_refs


def test_origin_side_reproduces_the_upstream_fixture(tmp_path):
    """Same checkpoint, image and prompts through OUR origin code: the fixture's numbers come back.

    Inputs (preprocessing, prompt transforms) are bit-identical. Activations agree within the family's fp32 tolerance:
    the fixture ran torch 2.13 on another CPU, the origin env runs torch 2.14.1 here (another oneDNN; rounding noise
    differs between machines, so no noise magnitude is assumed).
    """
    from parity.contracts.recipe import TOLERANCE_PRESETS

    atol, rtol = TOLERANCE_PRESETS["fp32-cpu"]
    parity("dump", "sam-fixture-vit-tiny", "--out", str(tmp_path), check=0)
    ours_in = load_file(str(tmp_path / "sam-fixture-vit-tiny" / "dump" / "inputs.safetensors"))
    ours = load_file(str(tmp_path / "sam-fixture-vit-tiny" / "dump" / "reference.safetensors"))
    theirs_in = load_file(str(SAM_FIXTURE / "inputs.safetensors"))
    theirs = load_file(str(SAM_FIXTURE / "reference.safetensors"))
    assert set(ours) == set(theirs) and set(ours_in) == set(theirs_in)
    for key in theirs_in:
        if key != "point_mask.mask_inputs":
            assert np.array_equal(ours_in[key], theirs_in[key]), key
    for key in theirs:
        assert ours[key].shape == theirs[key].shape, key
        ref = theirs[key].astype(np.float64)
        excess = np.abs(ours[key].astype(np.float64) - ref) - (atol + rtol * np.abs(ref))
        assert float(excess.max()) <= 0, key


MUTATIONS = [
    ({"kind": "swap-chunks", "key": "vision_encoder.layers.1.attn.qkv.weight", "chunks": 3, "i": 0, "j": 1},
     "image_encoder.blocks.1"),
    ({"kind": "swap", "key": "prompt_encoder.point_embed.0.weight", "other": "prompt_encoder.point_embed.1.weight"},
     "point1.prompt_encoder.0"),
]


@pytest.mark.parametrize("mutation,first", MUTATIONS, ids=[m["kind"] + ":" + m["key"] for m, _ in MUTATIONS])
def test_corrupted_mapping_fails_at_the_first_affected_capture(tiny_run, tmp_path, mutation, first):
    result = parity("diff", "--dump", str(tiny_run / "dump"), "--out", str(tmp_path), "--mutate", json.dumps(mutation),
                    check=1)
    report = read_json(tmp_path / "report.json")
    assert report["verdict"] == "fail"
    assert report["first_divergence"] == first, result.stdout
    assert not (tmp_path / "hf").exists()


def test_mutation_suite_every_corruption_is_caught_where_it_first_matters(tmp_path):
    """30 single corruptions (swap, transpose, zero, drop, scale by 1.01, off-by-one layer, chunk swaps in fused qkv)."""
    from parity.families.sam.selftest import MUTATIONS as SUITE

    assert len(SUITE) >= 20
    result = parity("selftest", "sam", "--out", str(tmp_path), check=0)
    assert f"mutations caught at the expected capture: {len(SUITE)} of {len(SUITE)}" in result.stdout
    outcomes = json.loads((tmp_path / "selftest" / "sam-tiny-random" / "mutations.json").read_text())
    assert len(outcomes) == len(SUITE)
    for (mutation, expected), outcome in zip(SUITE, outcomes):
        said = outcome["first_divergence"] if outcome["verdict"] == "fail" else outcome["verdict"]
        assert said == expected, (mutation, outcome)


def test_reverify_an_existing_port_without_converting(tiny_run, tmp_path):
    parity("diff", "--dump", str(tiny_run / "dump"), "--port", str(tiny_run / "hf"), "--out", str(tmp_path), check=0)
    report = read_json(tmp_path / "report.json")
    assert report["verdict"] == "pass" and report["port"] == str(tiny_run / "hf")
    assert report["conversion"] is None and not (tmp_path / "hf").exists()


def test_all_modules_derives_pairs_from_the_weight_mapping(tmp_path):
    parity("dump", "sam-tiny-random", "--all-modules", "--out", str(tmp_path), check=0)
    dump = tmp_path / "sam-tiny-random" / "dump"
    parity("diff", "--dump", str(dump), "--all-modules", "--out", str(tmp_path / "r"), check=0)
    report = read_json(tmp_path / "r" / "report.json")
    pairs = {m["name"]: m["port_name"] for m in report["modules"]}
    assert pairs["image_encoder.blocks.2.attn.qkv"] == "vision_encoder.layers.2.attn.qkv"
    assert pairs["image_encoder.neck"] == "vision_encoder.neck"
    assert pairs["mask_decoder.output_hypernetworks_mlps.3"] == "mask_decoder.output_hypernetworks_mlps.3"
    numeric = [m for m in report["modules"] if m["verdict"] != "shape-mismatch"]
    assert len(numeric) > 100 and all(m["verdict"] == "pass" for m in numeric)
    assert report["module_first_divergence"] is None
    assert "original mask_decoder.output_upscaling" in report["unpaired"]
    mutation = {"kind": "scale", "key": "vision_encoder.layers.1.mlp.lin1.weight", "factor": 1.01}
    parity("diff", "--dump", str(dump), "--all-modules", "--mutate", json.dumps(mutation), "--out",
           str(tmp_path / "m"), check=1)
    mutated = read_json(tmp_path / "m" / "report.json")
    assert mutated["first_divergence"] == "image_encoder.blocks.1"
    assert mutated["module_first_divergence"] == "image_encoder.blocks.1.mlp.lin1"


def test_dropped_weight_is_caught_by_strict_accounting(tiny_run, tmp_path):
    mutation = {"kind": "drop", "key": "vision_encoder.layers.0.attn.qkv.bias"}
    result = parity("diff", "--dump", str(tiny_run / "dump"), "--out", str(tmp_path), "--mutate", json.dumps(mutation),
                    check=2)
    assert "vision_encoder.layers.0.attn.qkv.bias" in error_line(result)


def test_full_size_slimsam50_checkpoint_in_the_real_layout(tmp_path):
    """28M parameters at SlimSAM-50's real dims, written by the original classes, converted via --checkpoint."""
    checkpoint = tmp_path / "SlimSAM-50-uniform.pth"
    parity("generate", "slimsam-50-uniform", "--seed", "5", "--out", str(checkpoint), check=0)
    parity("convert", "slimsam-50-uniform", "--checkpoint", str(checkpoint), "--out", str(tmp_path), check=0)
    report = read_json(tmp_path / "slimsam-50-uniform" / "report.json")
    assert report["verdict"] == "pass"
    assert report["conversion"]["source_keys"] == 314
    assert (tmp_path / "slimsam-50-uniform" / "hf" / "config.json").is_file()


def _no_valid_artifacts(folder):
    assert not (folder / "report.json").exists()
    assert not (folder / "hf").exists()
    assert not (folder / "dump" / "manifest.json").exists()


def _tiny_checkpoint(tmp_path):
    checkpoint = tmp_path / "tiny.pth"
    parity("generate", "sam-tiny-random", "--seed", "11", "--out", str(checkpoint), check=0)
    return checkpoint


def test_truncated_checkpoint(tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    result = parity("convert", "sam-tiny-random", "--checkpoint", str(checkpoint), "--out", str(tmp_path), check=2)
    line = error_line(result)
    assert "truncated" in line and str(checkpoint) in line
    assert stderr_without_progress(result) == [line]
    _no_valid_artifacts(tmp_path / "sam-tiny-random")


def test_checkpoint_with_missing_keys(tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path)
    in_env("sam", f"""
import torch
sd = torch.load({str(checkpoint)!r}, weights_only=True)
del sd["mask_decoder.iou_token.weight"]
torch.save(sd, {str(checkpoint)!r})
""")
    result = parity("convert", "sam-tiny-random", "--checkpoint", str(checkpoint), "--out", str(tmp_path), check=2)
    assert "missing keys [mask_decoder.iou_token.weight]" in error_line(result)
    _no_valid_artifacts(tmp_path / "sam-tiny-random")


def test_wrong_sha256(tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path)
    result = parity("convert", "sam-tiny-random", "--checkpoint", str(checkpoint), "--sha256", "0" * 64,
                    "--out", str(tmp_path), check=2)
    assert "sha256" in error_line(result) and "expected 0000" in error_line(result)
    _no_valid_artifacts(tmp_path / "sam-tiny-random")


def test_stale_outputs_are_removed_when_a_rerun_fails(tiny_run, tmp_path):
    out = tmp_path / "sam-tiny-random"
    shutil.copytree(tiny_run, out)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    parity("convert", "sam-tiny-random", "--checkpoint", str(bad), "--out", str(tmp_path), check=2)
    _no_valid_artifacts(out)


def test_hand_edited_manifest(tiny_run, tmp_path):
    dump = tmp_path / "dump"
    shutil.copytree(tiny_run / "dump", dump)
    manifest = read_json(dump / "manifest.json")
    manifest["references"][3]["shape"] = "eight by eight"
    (dump / "manifest.json").write_text(json.dumps(manifest))
    result = parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o"), check=2)
    line = error_line(result)
    assert "invalid DumpManifest" in line and "references.3.shape" in line
    assert not (tmp_path / "o" / "report.json").exists()


def test_tampered_state_dict_is_detected(tiny_run, tmp_path):
    dump = tmp_path / "dump"
    shutil.copytree(tiny_run / "dump", dump)
    with open(dump / "state_dict.safetensors", "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    result = parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o"), check=2)
    assert "does not match the sha256 in its manifest" in error_line(result)
