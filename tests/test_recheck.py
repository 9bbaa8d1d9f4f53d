"""Keep proving it: a saved port re-checked against other transformers releases, loading it (no conversion) in one
port environment per release. Offline with two releases from the package index that support these models."""

from __future__ import annotations

import shutil

import pytest

from parity.contracts.errors import ParityError
from parity.contracts.steps import PortRequest
from parity.host import envs
from parity.host.backends.docker import DockerBackend
from parity.host.pipeline import port_env
from tests.conftest import error_line, parity, read_json, stderr_without_progress

PINNED = envs.pinned_version("transformers")
OTHER = "5.23.0"
"""Another 5.x release on the package index whose dependencies the pinned set satisfies (5.25.0 needs a `kernels`
release the index does not have: its build fails in one line naming it)."""


def test_the_pinned_release_is_the_plain_port_environment():
    assert port_env(None) == port_env(PINNED) == "transformers"
    assert port_env(OTHER) == f"transformers@{OTHER}"


@pytest.mark.parametrize("args", [["recheck", "sam-tiny-random", "--transformers", "5.x"],
                                  ["recheck", "sam-tiny-random", "--transformers", f"{OTHER},{OTHER}"],
                                  ["recheck", "sam-tiny-random", "--transformers", ","],
                                  ["diff", "--dump", ".", "--transformers", "latest"]])
def test_bad_release_lists_are_one_line_errors(args, tmp_path):
    result = parity(*args, cwd=tmp_path, check=2)
    assert stderr_without_progress(result) == [error_line(result)]
    assert any(word in error_line(result) for word in ("not a release version", "twice", "at least one"))


def test_recheck_needs_a_dump_and_a_saved_port(tmp_path):
    assert "no dump at" in error_line(parity("recheck", "sam-tiny-random", "--transformers", PINNED,
                                             "--out", str(tmp_path), check=2))
    (tmp_path / "sam-tiny-random" / "dump").mkdir(parents=True)
    (tmp_path / "sam-tiny-random" / "dump" / "manifest.json").write_text("{}")
    line = error_line(parity("recheck", "sam-tiny-random", "--transformers", PINNED, "--out", str(tmp_path), check=2))
    assert "no saved port at" in line and "parity convert sam-tiny-random" in line


def test_docker_backend_refuses_a_derived_environment(tmp_path):
    request = PortRequest(dump=tmp_path, out=tmp_path)
    with pytest.raises(ParityError, match="runs with the local backend only"):
        DockerBackend(client=object()).run(f"transformers@{OTHER}", request, log=tmp_path / "log",
                                           on_progress=lambda _m: None)


@pytest.mark.slow
def test_recheck_loads_the_saved_port_in_each_release(tiny_run):
    result = parity("recheck", "sam-tiny-random", "--transformers", f"{OTHER},{PINNED}", "--out",
                    str(tiny_run.parent), check=0)
    for version in (OTHER, PINNED):
        report = read_json(tiny_run / "recheck" / f"transformers-{version}" / "report.json")
        assert report["verdict"] == "pass"
        assert report["port_environment"]["packages"]["transformers"] == version
        assert report["port"] == str((tiny_run / "hf").resolve()) and report["conversion"] is None
        assert any(version in line and "sam-tiny-random" in line and "pass" in line
                   for line in result.stdout.splitlines())
    assert read_json(tiny_run / "report.json")["port"] == "converted"
    assert (tiny_run / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_recheck_catches_a_port_whose_numbers_changed(tiny_run, tmp_path):
    from safetensors.numpy import load_file, save_file

    port = tmp_path / "port"
    shutil.copytree(tiny_run / "hf", port)
    weights = load_file(port / "model.safetensors")
    # the neck's last LayerNorm bias: a shift no later normalisation undoes (a conv before a LayerNorm would be)
    weights["vision_encoder.neck.layer_norm2.bias"] = weights["vision_encoder.neck.layer_norm2.bias"] + 0.01
    save_file(weights, port / "model.safetensors", metadata={"format": "pt"})
    parity("recheck", "sam-tiny-random", "--transformers", OTHER, "--port", str(port), "--out",
           str(tiny_run.parent), check=1)
    report = read_json(tiny_run / "recheck" / f"transformers-{OTHER}" / "report.json")
    assert report["verdict"] == "fail" and report["first_divergence"] == "image_encoder.neck"


@pytest.mark.slow
def test_diff_port_with_another_release_reports_beside_not_over_the_conversion(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "hf", tmp_path / "saved")
    parity("diff", "--dump", str(tiny_run / "dump"), "--port", "saved", "--transformers", OTHER, cwd=tmp_path, check=0)
    report = read_json(tmp_path / "out" / "sam-tiny-random" / "recheck" / f"transformers-{OTHER}" / "report.json")
    assert report["verdict"] == "pass" and report["port"] == str(tmp_path / "saved")
    assert report["port_environment"]["packages"]["transformers"] == OTHER
