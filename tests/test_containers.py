"""Containers, compose and the GPU workflow, checked statically (no Docker engine runs on these machines), and the
docker backend up to the exact Docker API calls it would make."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from parity.contracts.errors import ParityError
from parity.contracts.steps import GenerateRequest, GenerateResponse, PortRequest
from parity.host import envs
from parity.host.backends.docker import DockerBackend, build_spec, container_config, image_tag
from parity.host.registry import all_recipes
from tests.conftest import ROOT, error_line, parity, stderr_without_progress

DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))
STEP_ENVS = sorted(p.parent.name for p in ROOT.glob("images/*/requirements.txt") if p.parent.name != "orchestrator")


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} comes with the test extra (pip install -e '.[test]')"
    return str(path)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.parent.name for p in DOCKERFILES])
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([_tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_is_explained():
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*DL\d+", line):
            assert lines[i - 1].strip().startswith("#"), f"{line.strip()} has no explanation above it"


def test_every_step_environment_has_a_dockerfile_installing_the_same_pin_files():
    for env in STEP_ENVS:
        dockerfile = (ROOT / "images" / env / "Dockerfile").read_text().replace("\\\n", " ")
        for pin in envs.pin_files(env):
            rel = pin.relative_to(ROOT).as_posix()
            assert f"COPY {rel}" in dockerfile, f"{env}: Dockerfile does not copy {rel}"
        own = f"images/{env}/requirements.txt"
        assert re.search(rf"pip install [^\n]*-r {re.escape(own)}", dockerfile), f"{env}: does not install {own}"
        if env != envs.LAYER:
            assert f"-c images/{envs.LAYER}/requirements.txt" in dockerfile, f"{env}: torch layer pins not enforced"


def test_every_image_pins_versions_and_upstream_commits():
    for env in STEP_ENVS:
        for line in (ROOT / "images" / env / "requirements.txt").read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                assert "==" in line or re.search(r"@[0-9a-f]{40}", line), f"{env}: unpinned {line!r}"
        text = (ROOT / "images" / env / "Dockerfile").read_text()
        for url in re.findall(r"github\.com/[\w.-]+/[\w.-]+", text):
            assert re.search(r"\b[0-9a-f]{40}\b", text), f"{env}: {url} without a pinned commit SHA"


@pytest.fixture(scope="session")
def compose_schema(tmp_path_factory) -> dict:
    """The Compose specification schema as shipped in docker-compose 1.29.2's wheel (compose/config/compose_spec.json)."""
    cache = envs.cache_dir() / "tools"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("docker_compose-1.29.2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", str(cache), "docker-compose==1.29.2"], check=True, capture_output=True)
        wheels = list(cache.glob("docker_compose-1.29.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as archive:
        return json.loads(archive.read("compose/config/compose_spec.json"))


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml", "compose.fixtures.yaml"])
def test_compose_files_validate_against_the_compose_spec(compose_schema, name):
    document = yaml.safe_load((ROOT / name).read_text())
    errors = [e.message for e in jsonschema.Draft201909Validator(compose_schema).iter_errors(document)]
    assert errors == []


def test_compose_runs_the_host_side_and_builds_no_step_image():
    """Step images are tagged by parity.host.images only; compose builds just the code-free host-side image. Every
    service starts as root only to switch to the invoking user (parity.host.runas) and mounts host paths at the same
    paths."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"convert", "parity", "images"}
    runas = ["python", "-m", "parity.host.runas", "python", "-m"]
    assert services["convert"]["entrypoint"][:7] == [*runas, "parity.host.cli", "convert"]
    assert services["parity"]["entrypoint"] == [*runas, "parity.host.cli"]
    assert services["images"]["entrypoint"] == [*runas, "parity.host.images", "build"]
    for name, service in services.items():
        assert service["build"]["dockerfile"] == "images/orchestrator/Dockerfile"
        assert service["user"] == "0:0" and "group_add" not in service, f"{name}: runas picks the user"
        assert service["environment"]["PARITY_CA_BUNDLE"] == "context", f"{name}: would re-read the CA from its own env"
        assert service["environment"]["PYTHONPATH"] == service["working_dir"], f"{name}: the checkout is the code"
        assert "TMPDIR" not in service["environment"], f"{name}: step requests live in the cache, not in TMPDIR"
        assert service["environment"]["PARITY_BACKEND"] == "docker", f"{name}: the image has no local environments"
        for volume in service["volumes"]:
            source, target = _bind(volume)
            assert source == target, f"{name}: {volume} is not mounted at its host path"
        cache = service["environment"]["PARITY_CACHE_DIR"]
        assert any(_bind(v) == (cache, cache) for v in service["volumes"]), f"{name}: cache not at its host path"
    fixtures = yaml.safe_load((ROOT / "compose.fixtures.yaml").read_text())["services"]
    for name, service in fixtures.items():
        (volume,) = service["volumes"]
        assert volume.endswith(":ro") and _bind(volume)[0] == _bind(volume)[1], name
        assert service["environment"]["PARITY_FIXTURES"].startswith("${PARITY_FIXTURES:?"), name
    gpu = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())["services"]["convert"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["environment"]["PARITY_DEVICE"] == "cuda"


def _bind(volume: str) -> tuple[str, str]:
    """(source, target) of a short-syntax bind, whose parts may be ${...} interpolations (themselves nested)."""
    parts, depth, current = [], 0, ""
    for char in volume:
        depth += char == "{"
        depth -= char == "}"
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts[0], parts[1]


def test_gpu_workflow_passes_actionlint():
    result = subprocess.run([_tool("actionlint"), "-config-file", str(ROOT / ".github" / "actionlint.yaml"),
                             str(ROOT / ".github" / "workflows" / "parity-gpu.yml")], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "parity-gpu.yml").read_text())
    steps = " ".join(str(s.get("run", "")) for s in workflow["jobs"]["convert"]["steps"])
    assert "docker compose -f compose.yaml -f compose.gpu.yaml run --rm convert" in steps
    assert "GITHUB_STEP_SUMMARY" in steps
    assert "parity matrix" in " ".join(str(s.get("run", "")) for s in workflow["jobs"]["matrix"]["steps"])


def test_matrix_json():
    result = parity("matrix", "sam", check=0)
    assert json.loads(result.stdout) == ["sam-vit-base", "sam-vit-large", "sam-vit-huge"]
    grouped = json.loads(parity("matrix", "slimsam", "--include-tiny", "--group-by", "origin", check=0).stdout)
    assert grouped == [{"origin": "sam", "variants": ["slimsam-50-uniform", "slimsam-77-uniform",
                                                       "slimsam-tiny-random"]}]


def test_doctor_reports_every_environment():
    result = parity("doctor", check=0)
    for env in STEP_ENVS:
        assert f"env {env}" in result.stdout


# --- the docker backend, up to the API ------------------------------------------------------------------------------

class FakeContainer:
    def __init__(self, config, exit_code, lines):
        self.config, self.exit_code, self.lines, self.removed = config, exit_code, lines, False
        self.id = f"fake{id(self)}"

    def start(self):
        pass

    def logs(self, stream, follow):
        """The output in chunks that split lines, as the engine's stream may."""
        data = b"".join(line.encode() + b"\n" for line in self.lines)
        return iter(data[i:i + 7] for i in range(0, len(data), 7))

    def kill(self):
        pass

    def remove(self, force):
        self.removed = True


class FakeClient:
    """Records what the backend asks the engine for."""

    def __init__(self, present=(), exit_code=0, lines=("parity-progress: working",), response=None, build_chunks=None):
        import docker.errors

        if response is not None:
            lines = (*lines, f"parity-response: {response.model_dump_json()}")
        self.errors, self.present, self.exit_code, self.lines = docker.errors, set(present), exit_code, lines
        self.created, self.builds = [], []
        self.build_chunks = build_chunks or [{"stream": "Step 1/1"}]
        outer = self

        class Images:
            def get(self, tag):
                if tag not in outer.present:
                    raise outer.errors.ImageNotFound(tag)

        class Api:
            def build(self, **spec):
                outer.builds.append(spec)
                outer.present.add(spec["tag"])
                return iter(outer.build_chunks)

            def inspect_container(self, container_id):
                return {"State": {"Running": False, "ExitCode": outer.exit_code}}

        class Containers:
            def create(self, **config):
                container = FakeContainer(config, outer.exit_code, outer.lines)
                outer.created.append(container)
                return container

        self.images, self.api, self.containers = Images(), Api(), Containers()


def test_dump_container_is_offline_readonly_and_unprivileged(tmp_path):
    from parity.contracts.steps import DumpResponse
    from parity.host.pipeline import make_dump

    recipe = all_recipes()["sam-tiny-random"]
    checkpoint = tmp_path / "ckpt.pth"
    checkpoint.write_bytes(b"x")
    client = FakeClient(present={image_tag("sam"), image_tag("base")},
                        response=DumpResponse(dump=tmp_path / "out" / "dump", references=1))
    messages = []
    make_dump(recipe, DockerBackend(client=client), tmp_path / "out", checkpoint=checkpoint, sha256=None,
              device="cpu", threads=1, on_progress=messages.append)
    (container,) = client.created
    config = container.config
    assert config["image"] == image_tag("sam")
    assert config["command"][:3] == ["python", "-m", "parity.origin"]
    assert config["network_mode"] == "none"
    assert config["volumes"][str(checkpoint.resolve())]["mode"] == "ro"
    assert config["volumes"][str((tmp_path / "out").resolve())]["mode"] == "rw"
    assert config["volumes"][config["command"][3]]["mode"] == "ro"
    assert config["command"][3].startswith(str(envs.cache_dir() / "steps")), "the request file is not at a host path"
    assert config["read_only"] is True and set(config["tmpfs"]) == {"/tmp"}
    assert config["cap_drop"] == ["ALL"] and config["security_opt"] == ["no-new-privileges"]
    assert config["pids_limit"] > 0
    assert not config["user"].startswith("0:") and config["user"] != "0"
    assert "device_requests" not in config
    assert container.removed and "working" in messages


def test_an_input_inside_an_output_folder_is_mounted_read_only_on_top(tmp_path):
    request = PortRequest(dump=tmp_path / "out" / "dump", out=tmp_path / "out")
    volumes = container_config("transformers", request, tmp_path / "request.json")["volumes"]
    assert volumes[str(tmp_path / "out")]["mode"] == "rw"
    assert volumes[str(tmp_path / "out" / "dump")]["mode"] == "ro"
    hub = container_config("transformers", PortRequest(dump=tmp_path / "d", out=tmp_path / "o", port="org/name"),
                           tmp_path / "request.json")
    assert "network_mode" not in hub, "a hub port needs the network"


def test_generate_gets_a_fresh_staging_folder_not_the_checkpoint_cache(tmp_path):
    from parity.host.pipeline import generate_checkpoint

    target = tmp_path / "generated" / "x.pth"
    target.parent.mkdir()
    (target.parent / "other.pth").write_bytes(b"another generated checkpoint")
    seen = []

    class Recording:
        def run(self, env, request, *, log, on_progress):
            seen.append((request.writes(), request.out))
            request.out.write_bytes(b"made")
            return GenerateResponse(checkpoint=request.out, sha256="0" * 64)

    generate_checkpoint(all_recipes()["sam-tiny-random"], Recording(), target, lambda _m: None)
    ((writes, out),) = seen
    assert writes == [out.parent] and out.parent.parent == target.parent and out.parent != target.parent
    assert target.read_bytes() == b"made" and sorted(p.name for p in target.parent.iterdir()) == ["other.pth", "x.pth"]


def test_gpu_steps_request_nvidia_devices(tmp_path):
    request = PortRequest(dump=tmp_path, out=tmp_path / "o", device="cuda")
    config = container_config("transformers", request, tmp_path / "request.json", device="cuda")
    (request,) = config["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]


def test_missing_images_are_built_base_first_with_the_pinned_tags(tmp_path):
    client = FakeClient(response=GenerateResponse(checkpoint=tmp_path / "c.pth", sha256="0" * 64))
    request = GenerateRequest(recipe=all_recipes()["sam-tiny-random"], out=tmp_path / "c.pth")
    DockerBackend(client=client).run("sam", request, log=tmp_path / "log", on_progress=lambda _m: None)
    assert [b["tag"] for b in client.builds] == [image_tag("base"), image_tag("sam")]
    assert client.builds[1]["buildargs"] == {"BASE_IMAGE": image_tag("base")}
    assert build_spec("sam")["dockerfile"] == "images/sam/Dockerfile"


def test_failed_step_raises_its_one_line_error_and_removes_the_container(tmp_path):
    client = FakeClient(present={image_tag("sam"), image_tag("base")}, exit_code=2,
                        lines=("parity: error: checkpoint x is not a readable torch file",))
    request = GenerateRequest(recipe=all_recipes()["sam-tiny-random"], out=tmp_path / "c.pth")
    with pytest.raises(ParityError, match="not a readable torch file"):
        DockerBackend(client=client).run("sam", request, log=tmp_path / "log", on_progress=lambda _m: None)
    assert client.created[0].removed


def test_a_build_that_failed_on_certificates_names_the_cause_and_the_remedy(images_copy):
    """pip behind an intercepting proxy without its CA reports "no matching distribution"; the error must say why."""
    environ = {"PARITY_CA_BUNDLE": "none"}
    pip_lines = [{"stream": "Step 3/9 : RUN pip install -r requirements.txt\n"},
                 {"stream": "WARNING: Retrying after connection broken by 'SSLError(SSLCertVerificationError(1, "
                            "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'))': /simple/torch/\n"},
                 {"stream": "ERROR: No matching distribution found for torch==2.14.1\n"},
                 {"error": "The command '/bin/sh -c pip install' returned a non-zero code: 1"}]
    with pytest.raises(img.ImageError) as failed:
        img.build(["base"], FakeClient(build_chunks=pip_lines), root=images_copy, environ=environ,
                  on_line=lambda _l: None)
    message = str(failed.value)
    assert "\n" not in message and "No matching distribution found for torch==2.14.1" in message
    assert "TLS certificates could not be verified" in message and "scripts/build-images.sh" in message

    other = [pip_lines[0], pip_lines[2], pip_lines[3]]
    with pytest.raises(img.ImageError) as failed:
        img.build(["base"], FakeClient(build_chunks=other), root=images_copy, environ=environ, on_line=lambda _l: None)
    assert "No matching distribution" in str(failed.value) and "TLS" not in str(failed.value)


def test_absent_engine_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    result = parity("convert", "sam-tiny-random", "--backend", "docker", "--out", str(tmp_path), check=2)
    assert "no Docker engine reachable" in error_line(result)
    assert len(stderr_without_progress(result)) == 1
    by_setting = parity("convert", "sam-tiny-random", "--out", str(tmp_path), check=2, env={"PARITY_BACKEND": "docker"})
    assert "no Docker engine reachable" in error_line(by_setting)


# --- image identity (parity/host/images.py) --------------------------------------------------------------------------

from parity.host import images as img  # noqa: E402

UPSTREAM_IMAGES = {"detectron2": ("detectron2", "Mask2Former"), "msn": ("msn",), "clipseg": ("clipseg",)}


def test_every_origin_has_an_image_and_every_image_its_parent():
    origins = {r.origin for r in all_recipes().values()} | {"transformers", "fixtures", "base"}
    known = img.known_images()
    assert origins <= set(known), f"no images/<env>/Dockerfile for {origins - set(known)}"
    for env in known:
        order = img.build_order([env])
        assert order[-1] == env and (env in ("base", "orchestrator") or order[0] == "base"), order


def test_images_hold_environments_only():
    """Parity's code is mounted at run time, never copied: a code change can never leave a stale image."""
    for dockerfile in DOCKERFILES:
        for source in img.copy_sources(dockerfile.read_text()):
            assert source.startswith("images/"), f"{dockerfile}: COPY {source} (only images/** may enter an image)"
    assert set(img.code_mounts()) == {str(ROOT / "parity")}
    assert all(m["mode"] == "ro" and m["bind"].startswith(img.CODE_DIR + "/") for m in img.code_mounts().values())


def test_os_image_and_ca_bundle_are_build_arguments_of_the_images_from_an_os():
    for env in ("base", "orchestrator"):
        text = (ROOT / "images" / env / "Dockerfile").read_text()
        assert img.declared_args(text)[img.OS_ARG] == img.DEFAULT_OS_IMAGE
        assert "FROM ${OS_IMAGE}" in text and "OS_IMAGE" in text.split("FROM")[0], f"{env}: OS_IMAGE undocumented"
        assert img.copies_ca(env), f"{env}: does not install the host CA bundle"
    for env in img.known_images():
        if env not in ("base", "orchestrator"):
            assert not img.copies_ca(env) and img.parent(env) == "base", env


def test_dockerignore_keeps_the_context_to_images():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[:2] == ["*", "!images/"]
    ignored = (ROOT / ".gitignore").read_text()
    assert img.CA_CONTEXT_FILE in ignored and "images/upstream/*/" in ignored


@pytest.mark.parametrize("env", sorted(UPSTREAM_IMAGES))
def test_upstream_images_share_one_fetch_mechanism(env):
    text = (ROOT / "images" / env / "Dockerfile").read_text()
    args = img.declared_args(text)
    for repo in UPSTREAM_IMAGES[env]:
        slot = f"images/upstream/[{repo[0]}]{repo[1:]}"
        assert f"COPY images/upstream/upstream.py {slot} /tmp/upstream/{repo}/" in text, f"{env}: no slot for {repo}"
        assert re.search(rf"/tmp/upstream/{repo}/upstream.py fetch {repo} +\S*github.com\S+ \"\$\{{\w+_COMMIT\}}\"",
                         text.replace("\\\n", " ")), f"{env}: {repo} not fetched by upstream.py at a commit ARG"
    commits = {k: v for k, v in args.items() if k.endswith("_COMMIT")}
    assert len(commits) == len(UPSTREAM_IMAGES[env]) and all(re.fullmatch(r"[0-9a-f]{40}", v) for v in commits.values())
    assert "git clone" not in text and "curl " not in text and "wget " not in text


def test_deform_attn_patch_is_declared_with_its_sha256():
    import hashlib

    patch = ROOT / "images" / "detectron2" / "ms_deform_attn-torch2.patch"
    text = (ROOT / "images" / "detectron2" / "Dockerfile").read_text()
    assert img.declared_args(text)["MSDA_PATCH_SHA256"] == hashlib.sha256(patch.read_bytes()).hexdigest()
    changed = [ln for ln in patch.read_text().splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert len(changed) <= 8, "the patch is a few changed lines, never a copy of upstream files"
    assert "+PTX" in img.declared_args(text)["TORCH_CUDA_ARCH_LIST"]
    ops = (ROOT / "images" / "detectron2" / "build-ops.sh").read_text()
    assert 'python -c "import torch, MultiScaleDeformableAttention"' in ops


# tag properties, on a copy of images/ so that every input can be changed

@pytest.fixture()
def images_copy(tmp_path):
    import shutil

    shutil.copytree(ROOT / "images", tmp_path / "images",
                    ignore=lambda d, names: [n for n in names if (Path(d).name == "upstream" and (Path(d) / n).is_dir())
                                             or n in ("host-ca.crt", "__pycache__")])
    return tmp_path


def _tags(root, environ):
    return {env: img.image_tag(env, root=root, environ=environ) for env in img.known_images(root)}


def _dependents(root, env):
    return {e for e in img.known_images(root) if env in img.build_order([e], root)}


BASE_ENV = {"PARITY_CA_BUNDLE": "none"}


def test_same_inputs_give_the_same_tag_in_the_documented_form(images_copy):
    first, second = _tags(images_copy, BASE_ENV), _tags(images_copy, dict(BASE_ENV))
    assert first == second
    assert first == _tags(ROOT, BASE_ENV), "local upstream checkouts or the checkout's location changed a tag"
    for env, tag in first.items():
        assert re.fullmatch(rf"parity/{re.escape(env)}:[0-9a-f]{{16}}", tag)
    assert len(set(first.values())) == len(first)
    restated = dict(BASE_ENV, PARITY_OS_IMAGE=img.DEFAULT_OS_IMAGE, PARITY_BUILD_ARG_CUDA_OPS="1",
                    PARITY_BUILD_ARG_TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0+PTX")
    assert _tags(images_copy, restated) == first, "restating a default changed a tag"


def _assert_changes_exactly(before, after, expected):
    changed = {env for env in before if before[env] != after[env]}
    assert changed == expected


@pytest.mark.parametrize("env", ["base", "sam", "detectron2", "orchestrator"])
def test_a_dockerfile_byte_changes_that_image_and_its_dependents(images_copy, env):
    before = _tags(images_copy, BASE_ENV)
    path = images_copy / "images" / env / "Dockerfile"
    path.write_bytes(path.read_bytes() + b"\n")
    _assert_changes_exactly(before, _tags(images_copy, BASE_ENV), _dependents(images_copy, env))


@pytest.mark.parametrize("pin", ["base/requirements.txt", "mmseg0/requirements-nobuildisolation.txt",
                                 "detectron2/requirements-cuda.txt", "detectron2/ms_deform_attn-torch2.patch",
                                 "upstream/upstream.py", "ca/install-ca.sh"])
def test_a_copied_file_changes_exactly_the_images_that_copy_it(images_copy, pin):
    before = _tags(images_copy, BASE_ENV)
    users = {env for env in before if f"images/{pin}" in img.copied_files(env, images_copy)}
    assert users, f"no image copies images/{pin}"
    path = images_copy / "images" / pin
    path.write_bytes(path.read_bytes() + b"# changed\n")
    _assert_changes_exactly(before, _tags(images_copy, BASE_ENV), set().union(*(_dependents(images_copy, e) for e in users)))


def test_build_arguments_change_exactly_the_images_that_declare_them(images_copy):
    before = _tags(images_copy, BASE_ENV)
    os_image = _tags(images_copy, dict(BASE_ENV, PARITY_OS_IMAGE="parity/os:bookworm-0123456789ab"))
    _assert_changes_exactly(before, os_image, set(before))  # base (so every step image) and orchestrator
    cpu = _tags(images_copy, dict(BASE_ENV, PARITY_BUILD_ARG_CUDA_OPS="0"))
    _assert_changes_exactly(before, cpu, {"detectron2"})
    commit = _tags(images_copy, dict(BASE_ENV, PARITY_BUILD_ARG_MSN_COMMIT="0" * 40))
    _assert_changes_exactly(before, commit, {"msn"})
    assert img.build_args("msn", root=images_copy, environ=dict(BASE_ENV, PARITY_BUILD_ARG_MSN_COMMIT="0" * 40)) == {
        "MSN_COMMIT": "0" * 40, "BASE_IMAGE": before["base"]}
    unrelated = _tags(images_copy, dict(BASE_ENV, PARITY_BUILD_ARG_NOT_DECLARED_ANYWHERE="x"))
    assert unrelated == before
    with pytest.raises(img.ImageError, match="BASE_IMAGE"):
        img.build_args("sam", root=images_copy, environ=dict(BASE_ENV, PARITY_BUILD_ARG_BASE_IMAGE="x"))


def test_the_ca_bundle_changes_the_images_that_install_it_and_their_dependents(images_copy, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    before = _tags(images_copy, BASE_ENV)
    with_ca = _tags(images_copy, {"PIP_CERT": str(bundle)})
    _assert_changes_exactly(before, with_ca, set(before))  # base + orchestrator install it; everything else is FROM base
    assert _tags(images_copy, {"PARITY_CA_BUNDLE": str(bundle)}) == with_ca
    bundle.write_text(bundle.read_text() + "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n")
    assert all(_tags(images_copy, {"PIP_CERT": str(bundle)})[e] != with_ca[e] for e in before)
    # the build context carries what was hashed; inside compose (PARITY_CA_BUNDLE=context) the same tags come out
    path = img.sync_ca_bundle(images_copy, {"PIP_CERT": str(bundle)})
    assert path.read_bytes() == bundle.read_bytes()
    assert _tags(images_copy, {"PARITY_CA_BUNDLE": "context"}) == _tags(images_copy, {"PIP_CERT": str(bundle)})
    assert _tags(images_copy, {}) == _tags(images_copy, {"PARITY_CA_BUNDLE": "context"})
    assert img.sync_ca_bundle(images_copy, BASE_ENV).read_bytes() == b""
    mounts = img.runtime_ca(images_copy)
    assert mounts == {"volumes": {}, "environment": {}}
    img.sync_ca_bundle(images_copy, {"PIP_CERT": str(bundle)})
    mounts = img.runtime_ca(images_copy)
    assert list(mounts["volumes"].values()) == [{"bind": img.CA_IN_CONTAINER, "mode": "ro"}]
    assert set(mounts["environment"]) >= {"SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"}


def test_bad_image_input_is_one_line(images_copy, tmp_path):
    with pytest.raises(img.ImageError, match="not readable"):
        img.image_tag("base", root=images_copy, environ={"PIP_CERT": str(tmp_path / "missing.pem")})
    with pytest.raises(img.ImageError, match="no image 'nope'"):
        img.image_tag("nope", root=images_copy, environ=BASE_ENV)
    (images_copy / "images" / "sam" / "requirements.txt").unlink()
    with pytest.raises(img.ImageError, match="copies images/sam/requirements.txt, which does not exist"):
        img.image_tag("sam", root=images_copy, environ=BASE_ENV)
    result = subprocess.run([sys.executable, "-m", "parity.host.images", "tag", "nope"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_build_spec_and_docker_build_command_agree():
    spec = img.build_spec("sam", environ=BASE_ENV)
    assert spec["tag"] == img.image_tag("sam", environ=BASE_ENV) and spec["path"] == str(ROOT)
    assert spec["dockerfile"] == "images/sam/Dockerfile"
    assert spec["buildargs"] == {"BASE_IMAGE": img.image_tag("base", environ=BASE_ENV)}
    assert json.loads(spec["labels"]["parity.inputs"]) == img.image_inputs("sam", environ=BASE_ENV)
    argv = img.docker_build_argv("sam", environ=BASE_ENV)
    assert argv[:6] == ["docker", "build", "-f", "images/sam/Dockerfile", "-t", spec["tag"]] and argv[-1] == str(ROOT)


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@t"))


def test_upstream_fetch_from_a_local_checkout_is_verified_and_recorded(tmp_path):
    """images/upstream/upstream.py as the image builds run it, with a local checkout in its slot (no network)."""
    import hashlib
    import shutil

    slot = tmp_path / "upstream" / "repo"
    slot.mkdir(parents=True)
    _git("init", "-q", ".", cwd=slot)
    (slot / "a.txt").write_text("one\n")
    _git("add", "a.txt", cwd=slot)
    _git("commit", "-q", "-m", "one", cwd=slot)
    pinned = subprocess.run(["git", "rev-parse", "HEAD"], cwd=slot, capture_output=True, text=True).stdout.strip()
    shutil.copy(ROOT / "images" / "upstream" / "upstream.py", slot / "upstream.py")  # as the Dockerfile's COPY does
    (slot / "a.txt").write_text("edited, not committed\n")
    env = dict(os.environ, PARITY_UPSTREAM_RECORD=str(tmp_path / "record.json"))

    def run(*args):
        return subprocess.run([sys.executable, str(slot / "upstream.py"), *args], capture_output=True, text=True,
                              env=env)

    ok = run("fetch", "repo", "https://example.invalid/repo.git", pinned, str(tmp_path / "out"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "a.txt").read_text() == "one\n", "the work tree's edits reached the image"
    patch = tmp_path / "fix.patch"
    patch.write_text("--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+two\n")
    digest = hashlib.sha256(patch.read_bytes()).hexdigest()
    wrong = run("patch", "repo", str(tmp_path / "out"), str(patch), "0" * 64)
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1 and "sha256" in wrong.stderr
    assert run("patch", "repo", str(tmp_path / "out"), str(patch), digest).returncode == 0
    assert (tmp_path / "out" / "a.txt").read_text() == "two\n"
    assert run("note", "ops.x", "cpu").returncode == 0
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["repositories"]["repo"]["commit"] == pinned
    assert record["repositories"]["repo"]["fetched_from"] == "local checkout images/upstream/repo"
    assert record["patches"] == [{"repository": "repo", "name": "fix.patch", "sha256": digest}]
    assert record["notes"] == {"ops.x": "cpu"}
    from parity.contracts.manifests import ImageUpstreamRecord

    assert ImageUpstreamRecord.model_validate(record).patches[0].sha256 == digest, "a dump could not carry it"
    other = run("fetch", "repo", "https://example.invalid/repo.git", "f" * 40, str(tmp_path / "out2"))
    assert other.returncode == 1 and len(other.stderr.strip().splitlines()) == 1
    assert f"is at {pinned}, the image pins {'f' * 40}" in other.stderr


# --- limits, users ----------------------------------------------------------------------------------------------------

def test_step_limits_come_from_settings_and_bad_ones_are_one_line(monkeypatch):
    from parity.host.backends.docker import Limits

    for name in ("PARITY_DOCKER_TIMEOUT", "PARITY_DOCKER_MEMORY", "PARITY_DOCKER_PIDS", "PARITY_DOCKER_TMPFS"):
        monkeypatch.delenv(name, raising=False)
    assert Limits.from_env(engine_memory=8 << 30) == Limits(timeout_s=7200, memory=6 << 30, pids=4096, tmpfs="4g")
    monkeypatch.setenv("PARITY_DOCKER_TIMEOUT", "5")
    monkeypatch.setenv("PARITY_DOCKER_MEMORY", "512m")
    monkeypatch.setenv("PARITY_DOCKER_PIDS", "64")
    monkeypatch.setenv("PARITY_DOCKER_TMPFS", "1g")
    assert Limits.from_env(engine_memory=8 << 30) == Limits(timeout_s=5, memory=512 << 20, pids=64, tmpfs="1g")
    monkeypatch.setenv("PARITY_DOCKER_MEMORY", "none")
    assert Limits.from_env(engine_memory=8 << 30).memory is None
    for name, bad in (("PARITY_DOCKER_TIMEOUT", "soon"), ("PARITY_DOCKER_MEMORY", "lots"), ("PARITY_DOCKER_PIDS", "0"),
                      ("PARITY_DOCKER_TMPFS", "4x")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ParityError, match=name) as caught:
            Limits.from_env()
        assert "\n" not in str(caught.value)
        monkeypatch.delenv(name)


def test_config_carries_the_limits(tmp_path):
    from parity.host.backends.docker import Limits

    config = container_config("transformers", PortRequest(dump=tmp_path / "d", out=tmp_path / "o"),
                              tmp_path / "r.json", limits=Limits(timeout_s=5, memory=1 << 30, pids=99, tmpfs="1g"))
    assert config["mem_limit"] == config["memswap_limit"] == 1 << 30 and config["pids_limit"] == 99
    assert "size=1g" in config["tmpfs"]["/tmp"]


def test_steps_never_run_as_root(monkeypatch):
    from parity.host.backends import docker as backend

    monkeypatch.setattr(backend.os, "getuid", lambda: 0)
    monkeypatch.setenv("PARITY_CONTAINER_USER", "")
    assert backend.container_user() == "1000:1000"
    for bad in ("0:0", "root", "1000"):
        monkeypatch.setenv("PARITY_CONTAINER_USER", bad)
        with pytest.raises(ParityError, match="PARITY_CONTAINER_USER"):
            backend.container_user()
    monkeypatch.setattr(backend.os, "getuid", lambda: 4242)
    monkeypatch.setattr(backend.os, "getgid", lambda: 4343)
    assert backend.container_user() == "4242:4343"


def test_runas_picks_the_invoking_user(tmp_path):
    from parity.host import runas

    own = tmp_path.stat()
    assert runas.target_user({}, tmp_path) == (own.st_uid, own.st_gid)
    assert runas.target_user({"PARITY_UID": "4242"}, tmp_path) == (4242, 4242)
    assert runas.target_user({"PARITY_UID": "4242", "PARITY_GID": "100"}, tmp_path) == (4242, 100)
    for bad in ({"PARITY_UID": "me"}, {"PARITY_GID": "100"}):
        with pytest.raises(runas.RunAsError):
            runas.target_user(bad, tmp_path)
    result = subprocess.run([sys.executable, "-m", "parity.host.runas"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_runas_hands_over_only_folders_the_engine_created(tmp_path):
    from parity.host import runas

    created, used = tmp_path / "created", tmp_path / "used"
    created.mkdir()
    used.mkdir()
    (used / "x").write_text("kept")
    assert runas.hand_over_created_mounts([created, used, tmp_path / "absent"], 4242, 4242) == [created]
    assert created.stat().st_uid == 4242 and used.stat().st_uid == 0


def test_generated_checkpoints_are_named_by_their_container():
    from parity.host.checkpoints import resolve

    names = {r.origin: resolve(r).path.name for r in all_recipes().values() if r.checkpoint.kind == "generate"}
    assert names["detectron2"].endswith(".pkl"), "detectron2's checkpointer reads its pickles only from .pkl names"
    assert names["sam"].endswith(".pth")


def test_doctor_tells_built_stale_and_missing_images_and_engine_gpu_support(tmp_path):
    from types import SimpleNamespace

    from parity.host.doctor import engine_rows

    built, stale = image_tag("base"), "parity/sam:0123456789abcdef"

    class Images:
        def list(self, name):
            held = {"parity/base": [SimpleNamespace(tags=[built], attrs={"Size": 6e9})],
                    "parity/sam": [SimpleNamespace(tags=[stale], attrs={"Size": 6.5e9})]}
            return held.get(name, [])

    def client(runtimes):
        return SimpleNamespace(version=lambda: {"Version": "20.10.24", "ApiVersion": "1.41"},
                               info=lambda: {"ServerVersion": "20.10.24", "Runtimes": runtimes, "Driver": "overlay2",
                                             "NCPU": 2, "MemTotal": 8e9, "DockerRootDir": str(tmp_path)},
                               images=Images())

    rows = {check: (status, detail) for check, status, detail in engine_rows(client({"runc": {}}))}
    assert rows["docker engine"][0] == "ok" and "20.10.24" in rows["docker engine"][1]
    assert rows["GPU in containers"][0] == "none"
    assert rows["image base"] == ("built", f"{built} (6.00 GB)")
    assert rows["image sam"][0] == "stale" and stale in rows["image sam"][1] and "~0.50 GB" in rows["image sam"][1]
    assert rows["image transformers"][0] == "missing" and image_tag("transformers") in rows["image transformers"][1]
    assert rows["disk"][0] in ("ok", "low") and str(tmp_path) in rows["disk"][1]
    gpu = {check: status for check, status, _ in engine_rows(client({"runc": {}, "nvidia": {}}))}
    assert gpu["GPU in containers"] == "nvidia runtime"


@pytest.mark.slow
def test_an_installed_copy_runs_matrix_and_names_parity_root_when_it_needs_images(tmp_path):
    """`pip install .` (not editable) ships the package data but not images/: matrix and list work, anything that
    needs a pin file or a Dockerfile says PARITY_ROOT in one line; with PARITY_ROOT set, images/ is found there and
    steps still run the installed package's code."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-input", str(ROOT)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    cli = str(venv / "bin" / "parity")
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1", "PARITY_CACHE_DIR": str(tmp_path / "c")}
    env.pop("PARITY_ROOT", None)

    def run(*args, **extra):
        return subprocess.run([cli, *args], capture_output=True, text=True, cwd=tmp_path, env={**env, **extra},
                              stdin=subprocess.DEVNULL)

    matrix = run("matrix", "--group-by", "origin")
    assert matrix.returncode == 0, matrix.stderr
    assert {g["origin"] for g in json.loads(matrix.stdout)} == {r.origin for r in all_recipes().values() if not r.tiny}
    converted = run("convert", "sam-tiny-random", "--out", str(tmp_path / "out"))
    assert converted.returncode == 2
    assert [ln for ln in converted.stderr.splitlines() if ln.strip()] == [error_line(converted)]
    assert "PARITY_ROOT" in error_line(converted) and "images/" in error_line(converted)
    assert not (tmp_path / "out" / "sam-tiny-random" / "dump").exists()
    tag = subprocess.run([str(venv / "bin" / "python"), "-m", "parity.host.images", "tag", "sam"], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert tag.returncode == 2 and "PARITY_ROOT" in tag.stderr
    doctor = run("doctor", PARITY_ROOT=str(ROOT))
    images_row = rf"images/\s+│ ok\s+│ {re.escape(str(ROOT / 'images'))}"
    assert doctor.returncode == 0 and re.search(images_row, doctor.stdout)
    probe = "from parity.host import envs, images; print(envs.code_root()); print(*images.code_mounts())"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                           env={**env, "PARITY_ROOT": str(ROOT)})
    code_root, mounted = where.stdout.split()
    installed = next((venv / "lib").glob("python*/site-packages/parity"))
    assert Path(code_root, "parity").resolve() == installed and Path(mounted) == installed
    assert sorted(p.name for p in Path(code_root).iterdir()) == ["parity"], "site-packages would leak host packages"
