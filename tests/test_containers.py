"""Containers, compose and the GPU workflow, checked statically (no Docker engine runs on these machines), and the
docker backend up to the exact Docker API calls it would make."""

from __future__ import annotations

import json
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
from tests.conftest import ROOT, error_line, parity

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


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_validate_against_the_compose_spec(compose_schema, name):
    document = yaml.safe_load((ROOT / name).read_text())
    errors = [e.message for e in jsonschema.Draft201909Validator(compose_schema).iter_errors(document)]
    assert errors == []


def test_compose_services_volumes_and_profiles_exist():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    convert = services["convert"]
    assert convert["entrypoint"][:2] == ["parity", "convert"]
    for volume in convert["volumes"]:
        source = volume.split(":")[0]
        if not source.startswith(("/", "$")):
            assert source in compose["volumes"], f"volume {source} is not declared"
    for name, service in services.items():
        dockerfile = ROOT / service["build"]["dockerfile"]
        assert dockerfile.is_file(), f"service {name}: {dockerfile} missing"
        if name != "convert":
            assert service["profiles"] == ["images"]
            assert service["image"] == f"parity/{name}:latest"
    origins = {r.origin for r in all_recipes().values()} | {"transformers", "base", "fixtures"}
    assert origins <= set(services), f"no compose service for {origins - set(services)}"
    gpu = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())["services"]["convert"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["environment"]["PARITY_DEVICE"] == "cuda"


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

    def start(self):
        pass

    def logs(self, stream, follow):
        return iter(line.encode() + b"\n" for line in self.lines)

    def wait(self, timeout):
        return {"StatusCode": self.exit_code}

    def remove(self, force):
        self.removed = True


class FakeClient:
    """Records what the backend asks the engine for."""

    def __init__(self, present=(), exit_code=0, lines=("parity-progress: working",), response=None):
        import docker.errors

        if response is not None:
            lines = (*lines, f"parity-response: {response.model_dump_json()}")
        self.errors, self.present, self.exit_code, self.lines = docker.errors, set(present), exit_code, lines
        self.created, self.builds = [], []
        outer = self

        class Images:
            def get(self, tag):
                if tag not in outer.present:
                    raise outer.errors.ImageNotFound(tag)

        class Api:
            def build(self, **spec):
                outer.builds.append(spec)
                outer.present.add(spec["tag"])
                return iter([{"stream": "Step 1/1"}])

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
    assert config["network_disabled"] is True
    assert config["volumes"][str(checkpoint.resolve())]["mode"] == "ro"
    assert config["volumes"][str((tmp_path / "out").resolve())]["mode"] == "rw"
    assert config["volumes"][config["command"][3]]["mode"] == "ro"
    assert not config["user"].startswith("0")
    assert "device_requests" not in config
    assert container.removed and "working" in messages


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


def test_absent_engine_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    result = parity("convert", "sam-tiny-random", "--backend", "docker", "--out", str(tmp_path), check=2)
    assert "no Docker engine reachable" in error_line(result)
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1
