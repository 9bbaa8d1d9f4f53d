"""The container path against a REAL Docker engine: the engine script, the OS base image, image builds with the tags of
parity/host/images.py, the host CA bundle inside images, and every step image's upstream import, offline and as a
non-root user. Marked `docker`; skipped only when no engine can be started here (scripts/docker-engine.sh fails).

Images are built on demand and kept in the engine (tags are content hashes: a later run finds them present). First run
on a bare engine: ~2 min for the OS image (debootstrap, when the public python image cannot be pulled), ~2 min for the
torch layer, under a minute per step image, and several minutes for detectron2 (its compiled ops).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from parity.host import images as img
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

SMOKE = {
    "base": "import torch, torchvision",
    "sam": "import segment_anything",
    "transformers": "import transformers",
    "fixtures": "import torch, safetensors, pydantic",
    "mmseg0": "import mmcv, mmcls, mmseg",
    "mmseg1": "import mmcv, mmengine, mmpretrain, mmseg",
    "msn": "import src.deit",
    "clipseg": "import clip, models.clipseg",
    "detectron2": "import torch, detectron2, detectron2._C, MultiScaleDeformableAttention, mask2former",
    "orchestrator": "import docker, typer, pydantic",
}
UPSTREAM_ARGS = {"msn": ["MSN_COMMIT"], "clipseg": ["CLIPSEG_COMMIT"],
                 "detectron2": ["DETECTRON2_COMMIT", "MASK2FORMER_COMMIT"]}
NOBODY = "4242:4242"  # no such user in the images: any uid must work


@pytest.fixture(scope="session")
def engine():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "docker-engine.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"no Docker engine can be started here: {result.stderr.strip()}")
    import docker

    return docker.from_env(timeout=900)


@pytest.fixture(scope="session")
def build_env(engine) -> dict[str, str]:
    """The environment parity.host.images sees: PARITY_OS_IMAGE set to a debootstrapped image when the public
    python image is neither present nor pullable (no registry)."""
    import docker.errors

    environ = dict(os.environ)
    if environ.get("PARITY_OS_IMAGE"):
        return environ
    try:
        engine.images.get(img.DEFAULT_OS_IMAGE)
        return environ
    except docker.errors.ImageNotFound:
        pass
    try:
        engine.images.pull(img.DEFAULT_OS_IMAGE)
        return environ
    except docker.errors.APIError:
        pass
    made = subprocess.run(["bash", str(ROOT / "scripts" / "make-os-image.sh")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    environ["PARITY_OS_IMAGE"] = made.stdout.strip()
    return environ


def _build(engine, build_env, env: str) -> str:
    img.build([env], engine, environ=build_env, on_line=lambda _line: None)
    return img.image_tag(env, environ=build_env)


def _run(engine, tag: str, command: list[str], **kwargs) -> str:
    out = engine.containers.run(tag, command, entrypoint=[], network_disabled=True, user=NOBODY, remove=True,
                                stdout=True, stderr=True, **kwargs)
    return out.decode()


def test_engine_script_is_idempotent(engine):
    start = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "scripts" / "docker-engine.sh")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert time.monotonic() - start < 10


def test_engine_script_fails_in_one_line_when_it_may_not_start_an_engine(tmp_path):
    """A non-root caller with no reachable engine: one line, non-zero (it never tries to start one)."""
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    result = subprocess.run(["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", "bash",
                             str(ROOT / "scripts" / "docker-engine.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "needs root" in result.stderr


def test_os_image_script_is_idempotent(build_env):
    if build_env.get("PARITY_OS_IMAGE", "").startswith("parity/os:"):
        start = time.monotonic()
        again = subprocess.run(["bash", str(ROOT / "scripts" / "make-os-image.sh")], capture_output=True, text=True)
        assert again.returncode == 0 and again.stdout.strip() == build_env["PARITY_OS_IMAGE"]
        assert time.monotonic() - start < 10, "an existing OS image was made again"


def test_builds_skip_present_tags_and_label_their_inputs(engine, build_env):
    tag = _build(engine, build_env, "orchestrator")
    results = img.build(["orchestrator"], engine, environ=build_env, on_line=lambda _line: None)
    assert results == [("orchestrator", tag, None)]
    labels = engine.images.get(tag).labels
    assert json.loads(labels["parity.inputs"]) == img.image_inputs("orchestrator", environ=build_env)
    assert labels["parity.inputs.sha256"].startswith(tag.split(":")[1])


def test_the_host_ca_bundle_is_in_the_images_trust_store(engine, build_env):
    tag = _build(engine, build_env, "orchestrator")
    bundle = img.ca_bundle(environ=build_env).decode()
    trusted = _run(engine, tag, ["cat", "/etc/ssl/certs/ca-certificates.crt"])
    certificates = [c for c in bundle.split("-----END CERTIFICATE-----") if "BEGIN CERTIFICATE" in c]
    for cert in certificates[:1] + certificates[-1:]:
        body = cert.split("-----BEGIN CERTIFICATE-----")[1].strip()
        assert body in trusted
    if not certificates:
        assert "parity-host-ca" not in _run(engine, tag, ["ls", "/usr/local/share/ca-certificates"])


@pytest.mark.parametrize("env", sorted(SMOKE))
def test_every_image_imports_its_upstream_offline_as_any_user(engine, build_env, env):
    tag = _build(engine, build_env, env)
    out = _run(engine, tag, ["python", "-c", SMOKE[env] + "; print('imported')"])
    assert out.strip().splitlines()[-1] == "imported"
    if env in UPSTREAM_ARGS:
        record = json.loads(_run(engine, tag, ["cat", img.UPSTREAM_RECORD]))
        declared = img.declared_args((ROOT / "images" / env / "Dockerfile").read_text())
        commits = {repo["commit"] for repo in record["repositories"].values()}
        assert commits == {declared[arg] for arg in UPSTREAM_ARGS[env]}
        if env == "detectron2":
            (patch,) = record["patches"]
            assert patch["sha256"] == declared["MSDA_PATCH_SHA256"]
            assert "ops.MultiScaleDeformableAttention" in record["notes"]


def test_step_images_hold_no_code_and_run_it_from_the_read_only_mount(engine, build_env):
    tag = _build(engine, build_env, "sam")
    probe = "import parity.origin.steps, parity.contracts.manifests; print(parity.origin.steps.__file__)"
    import docker.errors

    with pytest.raises(docker.errors.ContainerError) as absent:
        _run(engine, tag, ["python", "-c", probe])
    assert b"No module named 'converters'" in absent.value.stderr
    out = _run(engine, tag, ["python", "-c", probe], volumes=img.code_mounts())
    assert out.strip() == f"{img.CODE_DIR}/parity/origin/steps.py"
    denied = _run(engine, tag, ["sh", "-c", f"touch {img.CODE_DIR}/parity/x 2>&1 || true"], volumes=img.code_mounts())
    assert "Read-only file system" in denied
