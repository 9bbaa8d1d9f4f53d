"""Reliability: bad input and faults against the real CLI, as a hostile or unlucky user would try them.

Every probe asserts the exit code (0 pass, 1 parity failed, 2 bad input or an error), that an error is exactly one
line on stderr (no traceback), and that nothing is left behind that looks complete: no report, model or conversion
record from a run that did not reach its verdict, and a dump only if it verifies completely against its manifest.
docs/reliability.md lists every probe with the promise it tests.

End-to-end probes run `sam-tiny-random` (its origin runs locally) and share one conversion (`tiny_run`). Disk-full
and read-only probes mount a small tmpfs (root needed; skipped with the reason otherwise, and a skip is not a pass).
Kill probes stop a step at a named progress point (PARITY_TEST_STALL_AT), then SIGKILL the host.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from safetensors.numpy import load_file, save_file

from parity.contracts.recipe import Recipe
from parity.contracts.report import ParityReport
from parity.host.dumps import read_tensors, verify_dump
from parity.host.envs import cache_dir
from parity.host.staging import LOCK_FILE
from parity.runtime.protocol import STALL_AT
from tests.conftest import ROOT, in_env, parity, read_json, stderr_without_progress

pytestmark = pytest.mark.slow
VARIANT = "sam-tiny-random"
COMPLETE = ("report.json", "report.md", "report.html", "junit.xml", "conversion.json", "hf")


# ---------------------------------------------------------------------------------------------------------- helpers

def one_line(result: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    """The run ended with `code` and exactly one non-empty stderr line holding every fragment (plain progress lines,
    printed when stderr is not a terminal, may come before it); no traceback."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = stderr_without_progress(result)
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def nothing_complete(folder: Path) -> None:
    """No model, and no report or conversion record unless the report is the run's own 'error' verdict; a dump only
    when it is complete and genuine; no visible file that is a truncated JSON document."""
    if (folder / "report.json").exists():
        assert ParityReport.model_validate_json((folder / "report.json").read_text()).verdict == "error"
    else:
        for name in COMPLETE:
            assert not (folder / name).exists(), f"{folder / name} left behind"
    assert not (folder / "hf").exists(), f"{folder / 'hf'} left behind"
    if (folder / "dump" / "manifest.json").exists():
        verify_dump(folder / "dump")
    if folder.is_dir():
        for path in folder.rglob("*.json"):
            if not any(part.startswith(".") for part in path.relative_to(folder).parts):
                json.loads(path.read_text())


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `folder` (hidden ones too): size, mtime and content hash."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def staging_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE)


def _sigint_as_in_a_terminal() -> None:
    """A suite started in the background by a script (`.ci/run &`) inherits SIGINT ignored, and Python then installs
    no KeyboardInterrupt handler; a user's Ctrl-C reaches a CLI whose SIGINT is the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, stall: str | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    """The CLI in the background (optionally stopping its step at a progress point)."""
    env = dict(os.environ, COLUMNS="200", TERM="dumb", NO_COLOR="1")
    env.pop(STALL_AT, None)
    if stall:
        env[STALL_AT] = stall
    return subprocess.Popen([sys.executable, "-m", "parity.host.cli", *args], cwd=cwd, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_sigint_as_in_a_terminal)


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended ({proc.returncode}) before {text!r}:\n{out}\n{err}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{text!r} never appeared in {log}")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def kill9(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the host; its step must die with it (within seconds, not at its next write)."""
    steps = children(proc.pid)
    assert steps, "no step was running under the host"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in steps) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(pid) for pid in steps), f"steps {steps} outlived the host"
    return steps


@contextmanager
def tmpfs(path: Path, size: str = "8m", readonly: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}): probe not run")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int) -> None:
    """Fill a filesystem until about `leave` bytes are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def dump_bytes(dump: Path) -> int:
    return sum(p.stat().st_size for p in dump.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny original-format checkpoint made by the original code (seed 11)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    parity("generate", VARIANT, "--seed", "11", "--out", str(path), check=0)
    return path


def _edited_checkpoint(checkpoint: Path, out: Path, code: str) -> Path:
    """The checkpoint rewritten by `code` (acting on `sd`) in the origin environment."""
    in_env("sam", f"import torch\nsd = torch.load({str(checkpoint)!r}, weights_only=True)\n{code}\n"
                  f"torch.save(sd, {str(out)!r})\n")
    return out


def _copy_dump(tiny_run: Path, tmp_path: Path) -> Path:
    dump = tmp_path / "dump"
    shutil.copytree(tiny_run / "dump", dump)
    return dump


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ----------------------------------------------------------------------------------------- bad command-line input

def test_unknown_variant(tmp_path):
    one_line(parity("convert", "sam-vit-gigantic", "--out", str(tmp_path)), "unknown variant")
    assert list(tmp_path.iterdir()) == []


def test_empty_selector_selects_nothing(tmp_path):
    one_line(parity("convert", "", "--out", str(tmp_path)), "empty variant selector")
    one_line(parity("dump", " ", "--out", str(tmp_path)), "empty variant selector")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_threads_must_be_a_positive_integer(tmp_path, value):
    one_line(parity("convert", VARIANT, "--threads", value, "--out", str(tmp_path)), "--threads")
    assert list(tmp_path.iterdir()) == []


def test_unknown_option_is_one_line(tmp_path):
    one_line(parity("convert", VARIANT, "--frobnicate", "--out", str(tmp_path)), "--frobnicate")


def test_missing_argument_is_one_line():
    one_line(parity("report"), "Missing argument")
    one_line(parity("convert"), "give a variant id", "--recipe FILE")


@pytest.mark.parametrize("value", ["", "xyz", "0" * 63, "g" * 64])
def test_sha256_option_is_validated(checkpoint, tmp_path, value):
    one_line(parity("convert", VARIANT, "--checkpoint", str(checkpoint), "--sha256", value, "--out", str(tmp_path)),
             "--sha256 is not a sha256")
    assert list(tmp_path.iterdir()) == []


def test_sha256_option_is_case_insensitive(checkpoint, tmp_path):
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest().upper()
    parity("dump", VARIANT, "--checkpoint", str(checkpoint), "--sha256", digest, "--out", str(tmp_path), check=0)
    verify_dump(tmp_path / VARIANT / "dump")


def test_wrong_sha256_refuses_the_checkpoint(checkpoint, tmp_path):
    one_line(parity("convert", VARIANT, "--checkpoint", str(checkpoint), "--sha256", "ab" * 32, "--out",
                    str(tmp_path)), "expected abababab")
    nothing_complete(tmp_path / VARIANT)


def test_checkpoint_for_several_variants(checkpoint, tmp_path):
    one_line(parity("convert", "sam", "--checkpoint", str(checkpoint), "--out", str(tmp_path)), "selects")


def test_out_on_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("mine")
    for command in (["convert", VARIANT], ["dump", VARIANT], ["schema"]):
        one_line(parity(*command, "--out", str(target)), "is a file")
    assert target.read_text() == "mine"


def test_generate_out_on_a_folder_leaves_nothing(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    one_line(parity("generate", VARIANT, "--out", str(folder)), "is a folder")
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ckpts"]


def test_generate_takes_one_variant(tmp_path):
    one_line(parity("generate", "sam", "--out", str(tmp_path / "x.pth")), "generate takes one id")


def test_invalid_mutation(tiny_run, tmp_path):
    one_line(parity("diff", "--dump", str(tiny_run / "dump"), "--mutate", "{not json", "--out", str(tmp_path)),
             "--mutate is not a valid mutation")
    assert not (tmp_path / "report.json").exists()


def test_unexpected_exception_is_one_line_and_exit_2(monkeypatch, capsys):
    """A bug in parity itself still ends in one line and exit 2, never a traceback and the 'parity failed' code."""
    import parity.host.registry
    from parity.host.cli import app

    def broken(_selector):
        raise RuntimeError("boom\nwith a second line")

    monkeypatch.setattr(parity.host.registry, "select", broken)
    with pytest.raises(SystemExit) as exit_info:
        app(["list"])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["parity: error: unexpected RuntimeError: boom with a second line"]


# ---------------------------------------------------------------------------------------------- bad checkpoints

def test_missing_checkpoint_file(tmp_path):
    one_line(parity("convert", VARIANT, "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path)),
             "checkpoint not found")
    nothing_complete(tmp_path / VARIANT)


def test_truncated_checkpoint(checkpoint, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 3])
    one_line(parity("convert", VARIANT, "--checkpoint", str(cut), "--out", str(tmp_path)), "truncated", str(cut))
    nothing_complete(tmp_path / VARIANT)


def test_random_bytes_checkpoint(tmp_path):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    one_line(parity("convert", VARIANT, "--checkpoint", str(noise), "--out", str(tmp_path)), str(noise))
    nothing_complete(tmp_path / VARIANT)


def test_malicious_pickle_checkpoint_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": _Evil(marker)}))
    one_line(parity("convert", VARIANT, "--checkpoint", str(evil), "--out", str(tmp_path)), str(evil))
    assert not marker.exists()
    nothing_complete(tmp_path / VARIANT)


def test_checkpoint_of_another_variant_names_the_mismatch(tmp_path):
    other = tmp_path / "slimsam.pth"
    parity("generate", "slimsam-tiny-random", "--out", str(other), check=0)
    line = one_line(parity("convert", VARIANT, "--checkpoint", str(other), "--out", str(tmp_path)),
                    "does not fit the original model", "shape mismatch")
    assert "image_encoder." in line and " vs " in line
    nothing_complete(tmp_path / VARIANT)


def test_checkpoint_with_an_extra_key(checkpoint, tmp_path):
    extra = _edited_checkpoint(checkpoint, tmp_path / "extra.pth", "sd['image_encoder.bonus'] = torch.zeros(3)")
    one_line(parity("convert", VARIANT, "--checkpoint", str(extra), "--out", str(tmp_path)),
             "unexpected keys [image_encoder.bonus]")
    nothing_complete(tmp_path / VARIANT)


# ------------------------------------------------------------------------------------------ NaN / Inf anywhere

NONFINITE_EDITS = {
    "all-nan": "{k: torch.full_like(v, float('nan')) if v.is_floating_point() else v for k, v in sd.items()}",
    "iou-nan": "sd['mask_decoder.iou_prediction_head.layers.2.bias'][0] = float('nan')",
    "neck-inf": "sd['image_encoder.neck.0.weight'][0, 0, 0, 0] = float('inf')",
}


@pytest.fixture(scope="module")
def nonfinite_runs(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """One conversion per non-finite checkpoint (all made in one origin-env call): {case: OUT/<id>}."""
    root = tmp_path_factory.mktemp("nonfinite")
    code = ["import torch", f"base = torch.load({str(checkpoint)!r}, weights_only=True)"]
    for case, edit in NONFINITE_EDITS.items():
        code += ["sd = {k: v.clone() for k, v in base.items()}",
                 f"sd = {edit}" if edit.startswith("{") else edit, f"torch.save(sd, {str(root / case)!r} + '.pth')"]
    in_env("sam", "\n".join(code))
    runs = {}
    for case in NONFINITE_EDITS:
        result = parity("convert", VARIANT, "--checkpoint", str(root / f"{case}.pth"), "--out", str(root / case))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        runs[case] = root / case / VARIANT
    return runs


def _nonfinite_report(folder: Path) -> dict:
    return ParityReport.model_validate_json((folder / "report.json").read_text()).model_dump(mode="json")


def _named_in_every_format(folder: Path, name: str) -> None:
    assert "NaN/Inf" in (folder / "report.md").read_text().split("**First divergence", 1)[0]
    page = (folder / "report.html").read_text()
    assert page.index("NaN/Inf") < page.index("<h2>")
    properties = [p.get("value") for p in ET.parse(folder / "junit.xml").iter("property")]
    assert any("NaN/Inf" in value and name in value for value in properties)


def test_all_nan_checkpoint_fails_and_says_so(nonfinite_runs):
    folder = nonfinite_runs["all-nan"]
    report = _nonfinite_report(folder)
    assert report["verdict"] == "fail" and report["first_divergence"] == "image_encoder.patch_embed"
    weights = [f["name"] for f in report["nonfinite"] if f["where"] == "weight"]
    assert "image_encoder.patch_embed.proj.weight" in weights
    assert all(c["verdict"] == "nonfinite" for c in report["captures"])
    _named_in_every_format(folder, weights[0])


def test_nan_only_in_the_iou_head_is_caught(nonfinite_runs):
    folder = nonfinite_runs["iou-nan"]
    report = _nonfinite_report(folder)
    assert report["verdict"] == "fail"
    assert report["first_divergence"] == "point1.mask_decoder.iou_prediction_head"
    found = {(f["where"], f["name"]) for f in report["nonfinite"]}
    assert ("weight", "mask_decoder.iou_prediction_head.layers.2.bias") in found
    assert ("reference", "point1.mask_decoder.iou_prediction_head") in found
    assert ("port", "point1.mask_decoder.iou_prediction_head") in found
    assert all(f["declared"] is None for f in report["nonfinite"])
    _named_in_every_format(folder, "mask_decoder.iou_prediction_head.layers.2.bias")


def test_inf_in_one_weight_is_caught(nonfinite_runs):
    folder = nonfinite_runs["neck-inf"]
    report = _nonfinite_report(folder)
    assert report["verdict"] == "fail" and report["first_divergence"] == "image_encoder.neck"
    finding = {"where": "weight", "name": "image_encoder.neck.0.weight", "count": 1, "declared": None}
    assert finding in report["nonfinite"]
    _named_in_every_format(folder, "image_encoder.neck.0.weight")


def _forge(dump: Path, edit) -> None:
    """Rewrite a dump the way a forger would: edit its recipe and references, then recompute every hash."""
    manifest = json.loads((dump / "manifest.json").read_text())
    refs = load_file(str(dump / "reference.safetensors"))
    edit(manifest["recipe"], refs)
    save_file(refs, str(dump / "reference.safetensors"), metadata={"format": "pt"})
    for entry in manifest["references"]:
        entry["sha256"] = hashlib.sha256(np.ascontiguousarray(refs[entry["name"]]).tobytes()).hexdigest()
    manifest["recipe_hash"] = Recipe.model_validate(manifest["recipe"]).recipe_hash()
    (dump / "manifest.json").write_text(json.dumps(manifest))


def test_nan_declared_only_by_the_dump_is_a_loud_widening(nonfinite_runs, tmp_path):
    """A dump from elsewhere that declares NaN allowed: accepted where the positions agree, but every report says the
    registry's recipe does not allow it."""
    dump = tmp_path / "dump"
    shutil.copytree(nonfinite_runs["iou-nan"] / "dump", dump)

    def declare(recipe, _refs):
        reason = "forged: the forger says NaN is fine in the IoU head"
        recipe["tolerance"]["nonfinite"] = {pattern: {"values": ["nan"], "reason": reason} for pattern in
                                            ("*iou*", "*.return.masks", "*predict_masks*", "*postprocess_masks")}

    _forge(dump, declare)
    result = parity("diff", "--dump", str(dump), "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    report = read_json(tmp_path / "r" / "report.json")
    assert any(f["declared"] for f in report["nonfinite"]) and not [f for f in report["nonfinite"] if not f["declared"]]
    widened = {w["name"]: w for w in report["tolerance_widened"]}
    assert widened["point1.mask_decoder.iou_prediction_head"]["nonfinite_only_in_dump"] == ["nan"]
    assert widened["point1.mask_decoder.iou_prediction_head"]["verdict_under_registry"] == "nonfinite"
    assert "more loosely than the registry's" in result.stderr
    assert "TOLERANCE WIDENED" in (tmp_path / "r" / "report.md").read_text().split("\n- captures", 1)[0]


# ------------------------------------------------------------------------------------ dumps edited or forged

def test_edited_reference_tensor_is_refused(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)
    refs = load_file(str(dump / "reference.safetensors"))
    refs["image_encoder.neck"] = refs["image_encoder.neck"] + np.float32(0.5)
    save_file(refs, str(dump / "reference.safetensors"), metadata={"format": "pt"})
    one_line(parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o")),
             "reference tensor 'image_encoder.neck' does not match the sha256")
    nothing_complete(tmp_path / "o")


def test_edited_input_tensor_is_refused(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)
    inputs = load_file(str(dump / "inputs.safetensors"))
    inputs["pixel_values"] = inputs["pixel_values"] * np.float32(1.001)
    save_file(inputs, str(dump / "inputs.safetensors"), metadata={"format": "pt"})
    one_line(parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o")),
             "input tensor 'pixel_values' does not match the sha256")
    nothing_complete(tmp_path / "o")


def test_edited_raw_image_is_refused(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)
    image = next(dump.glob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")
    one_line(parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o")), image.name,
             "does not match the sha256")
    nothing_complete(tmp_path / "o")


def test_edited_state_dict_is_refused(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)
    with open(dump / "state_dict.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x00\x80\x3f")
    one_line(parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o")), "state_dict.safetensors",
             "does not match the sha256")
    nothing_complete(tmp_path / "o")


def test_truncated_reference_file_is_named(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)
    path = dump / "reference.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    one_line(parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o")), str(path), "truncated")
    nothing_complete(tmp_path / "o")


def test_manifest_sha256_must_be_a_hash(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)
    manifest = read_json(dump / "manifest.json")
    manifest["references"][0]["sha256"] = "not-a-hash"
    (dump / "manifest.json").write_text(json.dumps(manifest))
    one_line(parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o")), "invalid DumpManifest",
             "references.0.sha256")
    nothing_complete(tmp_path / "o")


def test_truncated_manifest(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)
    text = (dump / "manifest.json").read_text()
    (dump / "manifest.json").write_text(text[: len(text) // 2])
    one_line(parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o")), "invalid DumpManifest")
    nothing_complete(tmp_path / "o")


def test_reference_listed_but_absent(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)
    refs = load_file(str(dump / "reference.safetensors"))
    del refs["image_encoder.neck"]
    save_file(refs, str(dump / "reference.safetensors"), metadata={"format": "pt"})
    one_line(parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o")), "missing", "image_encoder.neck")
    nothing_complete(tmp_path / "o")


def test_not_a_dump(tmp_path):
    one_line(parity("diff", "--dump", str(tmp_path / "absent")), "dump folder not found")
    (tmp_path / "empty").mkdir()
    one_line(parity("diff", "--dump", str(tmp_path / "empty"), "--out", str(tmp_path / "o")), "manifest.json")
    assert not (tmp_path / "o").exists()


def test_forged_dump_cannot_quietly_widen_its_tolerance(tiny_run, tmp_path):
    """atol raised to 0.6 in the dump's recipe, a reference moved by +0.5 and every hash recomputed: the comparison
    follows the dump's recipe, and every format says, at the top, that the registry's recipe would not pass it."""
    dump = _copy_dump(tiny_run, tmp_path)

    def widen(recipe, refs):
        recipe["tolerance"]["atol"] = 0.6
        refs["image_encoder.neck"] = refs["image_encoder.neck"] + np.float32(0.5)

    _forge(dump, widen)
    out = tmp_path / "o"
    result = parity("diff", "--dump", str(dump), "--out", str(out))
    assert result.returncode == 0
    report = read_json(out / "report.json")
    assert report["registry_recipe_hash"] != report["recipe_hash"]
    first = report["tolerance_widened"][0]
    assert first["name"] == "image_encoder.neck" and first["verdict_under_registry"] == "fail"
    assert first["dump_atol"] == 0.6 and first["registry_atol"] == 1e-5
    assert "more loosely than the registry's, " in result.stderr and "image_encoder.neck" in result.stderr
    head = (out / "report.md").read_text().split("\n- captures", 1)[0]
    assert "TOLERANCE WIDENED" in head and "image\\_encoder.neck" in head
    page = (out / "report.html").read_text()
    assert page.index("TOLERANCE WIDENED") < page.index("<h2>")
    alerts = [p.get("value") for p in ET.parse(out / "junit.xml").iter("property")]
    assert any(a.startswith("TOLERANCE WIDENED") for a in alerts)


def test_forged_dump_with_an_unknown_id_says_its_tolerances_are_its_own(tiny_run, tmp_path):
    dump = _copy_dump(tiny_run, tmp_path)

    def rename(recipe, _refs):
        recipe["id"], recipe["tolerance"]["atol"] = "sam-tiny-elsewhere", 0.6

    _forge(dump, rename)
    parity("diff", "--dump", str(dump), "--out", str(tmp_path / "o"), check=0)
    report = read_json(tmp_path / "o" / "report.json")
    assert report["registry_recipe_hash"] is None and report["tolerance_widened"] == []
    assert "its id is not in this registry" in (tmp_path / "o" / "report.md").read_text()
    assert "its id is not in this registry" in (tmp_path / "o" / "report.html").read_text()


def test_origin_vs_origin_reads_are_hash_checked(tiny_run, tmp_path):
    """The host's numpy reader (origin vs origin) refuses an edited tensor too."""
    from parity.contracts.errors import ParityError
    from parity.contracts.io import load_model
    from parity.contracts.manifests import DumpManifest

    dump = _copy_dump(tiny_run, tmp_path)
    manifest = load_model(DumpManifest, dump / "manifest.json")
    assert len(read_tensors(dump, manifest, "references")) == len(manifest.references)
    with open(dump / "reference.safetensors", "r+b") as fh:
        fh.seek(-2, 2)
        fh.write(b"\x01\x02")
    with pytest.raises(ParityError, match="does not match the sha256"):
        read_tensors(dump, manifest, "references")


def test_damaged_cached_fixture_import_is_imported_again(tmp_path):
    from parity.host.pipeline import fixture_dump_dir, fixture_recipe_of

    fixture = ROOT.parent / "shared" / "fixtures" / "sam-vit-tiny"
    parity("diff", "--dump", str(fixture), "--out", str(tmp_path / "a"), check=0)
    cached = fixture_dump_dir(fixture, fixture_recipe_of(fixture), cache_dir())
    verify_dump(cached)
    with open(cached / "reference.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x00\x80\x3f")
    parity("diff", "--dump", str(fixture), "--out", str(tmp_path / "b"), check=0)
    verify_dump(cached)
    assert read_json(tmp_path / "b" / "report.json")["verdict"] == "pass"


# --------------------------------------------------------------------------------------------- existing ports

def test_reverifying_a_saved_port_with_the_default_out_keeps_it(tiny_run, tmp_path):
    """`parity diff --dump out/X/dump --port out/X/hf` (default --out: out/X/recheck/transformers-<pinned>): the model
    is re-verified, not deleted, and the conversion's own report stays as it was."""
    from parity.host.pipeline import recheck_folder

    shutil.copytree(tiny_run, tmp_path / "out" / VARIANT)
    folder = tmp_path / "out" / VARIANT
    model = snapshot(folder / "hf")
    conversion = (folder / "conversion.json").read_bytes()
    converted_report = (folder / "report.json").read_bytes()
    result = parity("diff", "--dump", f"out/{VARIANT}/dump", "--port", f"out/{VARIANT}/hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert snapshot(folder / "hf") == model
    assert (folder / "conversion.json").read_bytes() == conversion
    assert (folder / "report.json").read_bytes() == converted_report
    report = read_json(recheck_folder(folder, None) / "report.json")
    assert report["verdict"] == "pass" and report["port"] == str(folder / "hf")


def test_port_path_that_does_not_exist_is_not_a_hub_id(tiny_run, tmp_path):
    one_line(parity("diff", "--dump", str(tiny_run / "dump"), "--port", "out/missing/hf", "--out", str(tmp_path / "o")),
             "no such folder")
    assert not (tmp_path / "o").exists()


def test_empty_port(tiny_run, tmp_path):
    one_line(parity("diff", "--dump", str(tiny_run / "dump"), "--port", "", "--out", str(tmp_path / "o")),
             "--port is empty")


def test_port_holding_only_a_pickle_is_refused_unopened(tiny_run, tmp_path):
    port = tmp_path / "port"
    port.mkdir()
    shutil.copy(tiny_run / "hf" / "config.json", port / "config.json")
    marker = tmp_path / "pwned"
    (port / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Evil(marker)}))
    one_line(parity("diff", "--dump", str(tiny_run / "dump"), "--port", str(port), "--out", str(tmp_path / "o")),
             "pytorch_model.bin", "safetensors only")
    assert not marker.exists()
    nothing_complete(tmp_path / "o")


# ------------------------------------------------------------------------------------------- output folders

def test_stale_staging_is_swept_and_nothing_else(tiny_run, tmp_path):
    folder = tmp_path / VARIANT
    folder.mkdir()
    for name in (".dump.abcd1234", ".hf.zz_9abcd"):
        (folder / name).mkdir()
        (folder / name / "manifest.json").write_text("{}")
    (folder / ".report.json.tmp").write_text("{")
    (folder / ".mine.tmp").write_text("the user's")
    (folder / "notes.txt").write_text("the user's")
    dead = subprocess.Popen(["true"])
    dead.wait()
    step_temp = Path(tempfile.gettempdir()) / f"parity-step-{dead.pid}-stale"
    step_temp.mkdir()
    parity("diff", "--dump", str(tiny_run / "dump"), "--out", str(folder), check=0)
    assert staging_in(folder) == [".mine.tmp"]
    assert (folder / "notes.txt").read_text() == "the user's"
    assert not step_temp.exists()


def test_a_second_run_into_a_busy_folder_changes_nothing(tiny_run, tmp_path):
    shutil.copytree(tiny_run, tmp_path / VARIANT, ignore=shutil.ignore_patterns("logs"))
    first = start("diff", "--dump", str(tiny_run / "dump"), "--out", str(tmp_path / VARIANT),
                  stall="running the port")
    try:
        wait_for_line(tmp_path / VARIANT / "logs" / "port.log", "running the port", first)
        before = snapshot(tmp_path / VARIANT)
        for command in (["convert", VARIANT, "--out", str(tmp_path)],
                        ["diff", "--dump", str(tiny_run / "dump"), "--out", str(tmp_path / VARIANT)]):
            one_line(parity(*command), "is in use by another parity run", f"(pid {first.pid})")
        assert snapshot(tmp_path / VARIANT) == before
    finally:
        kill9(first)


# ------------------------------------------------------------------------------------------------ kill -9

def test_kill_during_generate(tmp_path):
    target = tmp_path / "gen.pth"
    log = cache_dir() / "logs" / f"generate-{VARIANT}.log"
    log.unlink(missing_ok=True)
    proc = start("generate", VARIANT, "--seed", "3", "--out", str(target),
                 stall="generate: checkpoint written to a temp file")
    wait_for_line(log, "generate: checkpoint written", proc)
    kill9(proc)
    assert not target.exists()
    parity("generate", VARIANT, "--seed", "3", "--out", str(target), check=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.pth"]


def test_kill_during_dump(tmp_path):
    proc = start("convert", VARIANT, "--out", str(tmp_path), stall="dump: tensors written")
    wait_for_line(tmp_path / VARIANT / "logs" / "dump.log", "dump: tensors written", proc)
    kill9(proc)
    folder = tmp_path / VARIANT
    nothing_complete(folder)
    assert not (folder / "dump").exists() and any(n.startswith(".dump.") for n in staging_in(folder))


def test_kill_during_the_port_forward(tmp_path):
    proc = start("convert", VARIANT, "--out", str(tmp_path), stall="running the port")
    wait_for_line(tmp_path / VARIANT / "logs" / "port.log", "running the port", proc)
    kill9(proc)
    nothing_complete(tmp_path / VARIANT)


def test_kill_during_save_then_rerun(tmp_path):
    proc = start("convert", VARIANT, "--out", str(tmp_path), stall="saving the processor")
    wait_for_line(tmp_path / VARIANT / "logs" / "port.log", "saving the processor", proc)
    kill9(proc)
    folder = tmp_path / VARIANT
    nothing_complete(folder)
    staged = [n for n in staging_in(folder) if n.startswith(".hf.")]
    assert staged and any((folder / staged[0]).glob("*.safetensors"))
    parity("convert", VARIANT, "--out", str(tmp_path), check=0)
    assert staging_in(folder) == [] and (folder / "hf" / "model.safetensors").is_file()


def test_ctrl_c_stops_the_step(tmp_path):
    proc = start("convert", VARIANT, "--out", str(tmp_path), stall="running the port")
    wait_for_line(tmp_path / VARIANT / "logs" / "port.log", "running the port", proc)
    steps = children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert all(gone(pid) for pid in steps)
    nothing_complete(tmp_path / VARIANT)


# ----------------------------------------------------------------------------------- full or read-only disks

def test_disk_full_while_dumping(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        fill(disk, leave=256 * 1024)
        line = one_line(parity("convert", VARIANT, "--out", str(disk / "out")), "No space left on device")
        assert "\n" not in line
        nothing_complete(disk / "out" / VARIANT)
        assert staging_in(disk / "out" / VARIANT) == []


def test_disk_full_while_saving_the_model(tiny_run, tmp_path):
    """The port side's folder on a disk with room for the logs and conversion record but not the model: the save
    fails in one line and no report claims a verdict (the dump it read is untouched)."""
    with tmpfs(tmp_path / "disk") as disk:
        fill(disk, leave=320 * 1024)
        one_line(parity("diff", "--dump", str(tiny_run / "dump"), "--out", str(disk / "out")), "No space left on device")
        nothing_complete(disk / "out")
        verify_dump(tiny_run / "dump")


def test_disk_full_while_writing_schemas(tmp_path):
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        fill(disk, leave=0)
        one_line(parity("schema", "--out", str(disk / "schemas")), "No space left on device")
        assert not any(disk.rglob("*.tmp"))


def test_read_only_out(tiny_run, tmp_path):
    with tmpfs(tmp_path / "ro", size="1m", readonly=True) as ro:
        one_line(parity("convert", VARIANT, "--out", str(ro)), "Read-only file system", str(ro))
        one_line(parity("diff", "--dump", str(tiny_run / "dump"), "--out", str(ro / "x")), "Read-only file system")
        one_line(parity("schema", "--out", str(ro / "schemas")), "Read-only file system")


# ------------------------------------------------------------------------------------ reports from elsewhere

PAYLOAD = "</code>\"'><script>alert(1)</script><img src=x onerror=alert(2)>`|**[x](javascript:alert(3))"


def _accepts(data: dict, path: tuple, value) -> bool:
    """Whether the schema accepts `value` at `path` (Literal verdicts and sha256 fields do not take markup)."""
    trial = json.loads(json.dumps(data))
    target = trial
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    try:
        ParityReport.model_validate(trial)
        return True
    except ValueError:
        return False


def _strings(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*path, i))
    elif isinstance(value, str):
        yield path


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def _crafted_report(tiny_run: Path, verdict: str) -> tuple[dict, list[tuple], list[tuple]]:
    """The tiny run's report with every part populated, then markup put into every string field the schema accepts;
    returns (report, injected paths, refused paths)."""
    data = read_json(tiny_run / "report.json")
    capture = data["captures"][0]
    data["modules"] = [dict(capture, name="m", port_name="pm", note="n")]
    data["unpaired"] = ["original x"]
    data["nonfinite"] = [{"where": "weight", "name": "w", "count": 1, "declared": "declared because of the forger"}]
    data["tolerance_widened"] = [{"name": "t", "dump_atol": 1.0, "dump_rtol": 1.0, "registry_atol": 1e-5,
                                  "registry_rtol": 1e-4, "dump_reason": "r", "verdict_under_registry": "fail"}]
    data["heatmap"]["values"][0][0] = None
    data["captures"][0]["tolerance_reason"] = "reason"
    data["captures"][0]["nonfinite_reason"] = "reason"
    data["processor"]["note"] = "note"
    data["origin_environment"]["upstream"] = "upstream"
    if verdict == "error":
        data["verdict"], data["error"] = "error", "boom"
    injected, refused = [], []
    for path in list(_strings(data)):
        value = f"{'.'.join(map(str, path))}:{PAYLOAD}"
        if _accepts(data, path, value):
            target = data
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
            injected.append(path)
        else:
            refused.append(path)
    data["durations"] = {f"step{PAYLOAD}": 1.0, **data["durations"]}
    data["origin_environment"]["packages"] = {f"pkg{PAYLOAD}": f"1.0{PAYLOAD}"}
    return data, injected, refused


SHOWN = [("recipe_id",), ("dump",), ("port",), ("captures", 0, "name"), ("captures", 0, "port_name"),
         ("captures", 0, "tolerance_reason"), ("modules", 0, "name"), ("unpaired", 0), ("nonfinite", 0, "name"),
         ("nonfinite", 0, "declared"), ("tolerance_widened", 0, "name"), ("tolerance_widened", 0, "dump_reason"),
         ("heatmap", "capture"), ("processor", "processor"), ("processor", "note"), ("origin_environment", "python"),
         ("origin_environment", "upstream"), ("port_environment", "device")]
"""String fields the HTML report shows (each must appear there, escaped)."""


@pytest.mark.parametrize("verdict", ["pass", "error"])
def test_markup_in_every_string_field_comes_out_escaped(tiny_run, tmp_path, verdict):
    from markupsafe import escape

    data, injected, refused = _crafted_report(tiny_run, verdict)
    assert len(injected) > 100
    assert {"recipe_hash", "checkpoint_sha256", "verdict", "dump_producer"} <= {path[-1] for path in refused}
    folder = tmp_path / "crafted"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(data))
    result = parity("report", str(folder))
    if verdict == "error":
        one_line(result, f"error:{PAYLOAD}")
    else:
        assert result.returncode == 0, result.stderr
    page = (folder / "report.html").read_text()
    tags = _Tags()
    tags.feed(page)
    assert "img" not in tags.tags and tags.tags.count("script") == 1 and "a" not in tags.tags
    shown = SHOWN + ([("error",)] if verdict == "error" else [])
    for path in shown:
        assert path in injected, path
        assert str(escape(f"{'.'.join(map(str, path))}:{PAYLOAD}")) in page, path
    assert str(escape(f"pkg{PAYLOAD}")) in page and str(escape(f"step{PAYLOAD}")) not in page.replace("&lt;", "<")
    suite = ET.parse(folder / "junit.xml").getroot()
    assert not [e for e in suite.iter() if e.tag in ("img", "script")]
    assert suite.find("testcase").get("name") == data["recipe_id"]
    markdown = (folder / "report.md").read_text()
    assert markdown.splitlines()[0].startswith("## parity: ``")
    rendered = _Tags()  # as a renderer that passes inline HTML through would show it
    rendered.feed(MarkdownIt("commonmark").enable("table").render(markdown))
    assert not {"img", "script", "a"} & set(rendered.tags), rendered.tags


def test_crafted_report_with_a_bad_hash_is_refused(tiny_run, tmp_path):
    for field in ("recipe_hash", "checkpoint_sha256"):
        data = read_json(tiny_run / "report.json")
        data[field] = "<script>alert(1)</script>"
        folder = tmp_path / field
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(data))
        one_line(parity("report", str(folder)), "invalid ParityReport", field)
        assert sorted(p.name for p in folder.iterdir()) == ["report.json"]


def test_report_of_a_missing_folder(tmp_path):
    one_line(parity("report", str(tmp_path / "absent")), "no report.json")
    assert not (tmp_path / "absent").exists()
