"""The container path against a REAL Docker engine: the engine script, the OS base image, image builds with the tags of
parity/host/images.py, `docker compose run convert` end to end as a non-root user (bit-identical to the local backend,
every file owned by that user), the fixture families imported and diffed in containers, a step's sandbox asserted
from inside it, the deadline, SIGINT/SIGTERM clean-up, and rebuilds of exactly the images whose inputs changed.
Marked `docker`; skipped only when no engine can be started here (scripts/docker-engine.sh fails) unless
PARITY_REQUIRE_DOCKER is set (.ci/run sets it after starting the engine), which turns that skip into a failure.

Only images that build from a package registry are used here (base, sam, transformers, fixtures, mmseg0, mmseg1,
orchestrator): the upstream-source images (msn, clipseg, detectron2) need GitHub or local checkouts, which CI has
neither of; their build mechanism is tested with a git repository the test makes. Images are built on demand and
kept in the engine (tags are content hashes: a later run finds them present). First run on a bare engine: ~2 min for
the OS image (debootstrap, when the public python image cannot be pulled), ~2 min for the torch layer, under a
minute per step image.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from parity.contracts.errors import ParityError
from parity.host import envs
from parity.host import images as img
from tests.conftest import FIXTURES, ROOT, parity

pytestmark = pytest.mark.docker

CI_IMAGES = ("base", "sam", "transformers", "fixtures", "mmseg0", "mmseg1", "orchestrator")
"""Every image that builds from package registries alone (what CI can build)."""
SMOKE = {
    "base": "import torch, torchvision",
    "sam": "import segment_anything",
    "transformers": "import transformers",
    "fixtures": "import torch, safetensors, pydantic",
    "mmseg0": "import mmcv, mmcls, mmseg",
    "mmseg1": "import mmcv, mmengine, mmpretrain, mmseg",
    "orchestrator": "import docker, typer, pydantic",
}
NOBODY = "4242:4242"  # no such user in the images: any uid must work
USER_ID = 4242
"""The non-root user the compose tests run as (no account needed)."""
FIXTURE_NAMES = sorted(p.parent.name for p in FIXTURES.glob("*/fixture.json"))


@pytest.fixture(scope="session")
def engine():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "docker-engine.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        if os.environ.get("PARITY_REQUIRE_DOCKER"):
            pytest.fail(f"PARITY_REQUIRE_DOCKER is set but no engine: {result.stderr.strip()}")
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


@pytest.fixture(scope="session")
def ci_images(engine, build_env) -> dict[str, str]:
    """Every CI image built (present ones skipped); the environment the host side must run with to find them."""
    img.build(CI_IMAGES, engine, environ=build_env, on_line=lambda _line: None)
    return build_env


def _build(engine, build_env, env: str) -> str:
    img.build([env], engine, environ=build_env, on_line=lambda _line: None)
    return img.image_tag(env, environ=build_env)


def _run(engine, tag: str, command: list[str], **kwargs) -> str:
    out = engine.containers.run(tag, command, entrypoint=[], network_disabled=True, user=NOBODY, remove=True,
                                stdout=True, stderr=True, **kwargs)
    return out.decode()


def _checkout_copy(target: Path) -> Path:
    """images/ as committed (no local upstream checkouts), in a throwaway folder."""
    shutil.copytree(ROOT / "images", target / "images", ignore=shutil.ignore_patterns("upstream", "__pycache__"))
    (target / "images" / "upstream").mkdir()
    for name in ("upstream.py", "README.md"):
        shutil.copy(ROOT / "images" / "upstream" / name, target / "images" / "upstream" / name)
    return target


def _tensor_hashes(dump: Path) -> dict[str, object]:
    """What makes two dumps the same bit for bit: every tensor's sha256 and the re-exported state dict (not the
    checkpoint file's bytes: mmcv's writer stores the time in its meta)."""
    manifest = json.loads((dump / "manifest.json").read_text())
    hashes: dict[str, object] = {f"{group}:{entry['name']}": entry["sha256"] for group in ("inputs", "references",
                                                                                          "modules")
                                 for entry in manifest.get(group, [])}
    hashes["state_dict"] = manifest["state_dict"]["sha256"]
    hashes["raw_inputs"] = sorted((f["name"], f["sha256"]) for f in manifest["raw_inputs"])
    return hashes


# --- the engine and the images ---------------------------------------------------------------------------------------

def test_engine_script_is_idempotent(engine):
    start = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "scripts" / "docker-engine.sh")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert time.monotonic() - start < 10
    compose = subprocess.run(["setpriv", f"--reuid={USER_ID}", f"--regid={USER_ID}", "--clear-groups", "env",
                              "HOME=/tmp", "docker", "compose", "version"], capture_output=True, text=True)
    assert compose.returncode == 0 and "v2." in compose.stdout, "docker compose is not available to every user"


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
def test_every_ci_image_imports_its_packages_offline_as_any_user(engine, build_env, env):
    tag = _build(engine, build_env, env)
    out = _run(engine, tag, ["python", "-c", SMOKE[env] + "; print('imported')"])
    assert out.strip().splitlines()[-1] == "imported"


def test_step_images_hold_no_code_and_run_it_from_the_read_only_mount(engine, build_env):
    tag = _build(engine, build_env, "sam")
    probe = "import parity.origin.steps, parity.contracts.manifests; print(parity.origin.steps.__file__)"
    import docker.errors

    with pytest.raises(docker.errors.ContainerError) as absent:
        _run(engine, tag, ["python", "-c", probe])
    assert b"No module named 'parity'" in absent.value.stderr
    out = _run(engine, tag, ["python", "-c", probe], volumes=img.code_mounts())
    assert out.strip() == f"{img.CODE_DIR}/parity/origin/steps.py"
    denied = _run(engine, tag, ["sh", "-c", f"touch {img.CODE_DIR}/parity/x 2>&1 || true"], volumes=img.code_mounts())
    assert "Read-only file system" in denied


def test_a_second_build_builds_nothing_and_a_changed_input_rebuilds_exactly_its_images(engine, ci_images, tmp_path):
    """Tags are content hashes over each image's inputs: a second run finds every tag; in a throwaway copy of the
    checkout, a changed pin rebuilds that image alone (built for real here), a changed Dockerfile its image and every
    image FROM it, and a change to parity's code nothing (the code is mounted, never built in)."""
    assert all(present for _env, _tag, present in img.plan(CI_IMAGES, engine, environ=ci_images))
    assert {seconds for _env, _tag, seconds in img.build(CI_IMAGES, engine, environ=ci_images,
                                                         on_line=lambda _l: None)} == {None}
    copy = _checkout_copy(tmp_path / "checkout")
    shutil.copytree(ROOT / "parity", copy / "parity", ignore=shutil.ignore_patterns("__pycache__"))
    known = img.known_images(copy)

    def missing() -> set[str]:
        return {env for env, _tag, present in img.plan(known, engine, root=copy, environ=ci_images) if not present}

    upstream_only = missing()
    assert upstream_only <= {"msn", "clipseg", "detectron2"}, "the copy does not compute the checkout's tags"
    (copy / "parity" / "host" / "cli.py").write_text((copy / "parity" / "host" / "cli.py").read_text() + "\n# edit\n")
    assert missing() == upstream_only, "a code change must rebuild nothing"
    pins = copy / "images" / "sam" / "requirements.txt"
    pins.write_text(pins.read_text() + "# a changed pin file\n")
    assert missing() - upstream_only == {"sam"}
    built = img.build(["sam"], engine, root=copy, environ=ci_images, on_line=lambda _l: None)
    try:
        assert [(env, seconds is None) for env, _tag, seconds in built] == [("base", True), ("sam", False)]
        assert missing() == upstream_only
    finally:
        engine.images.remove(built[-1][1], force=True)
    dockerfile = copy / "images" / "base" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# a changed Dockerfile\n")
    assert missing() == {env for env in known if img.parent(env, copy) == "base"} | {"base"}
    assert "orchestrator" not in missing()


def test_upstream_sources_come_from_a_local_checkout_at_the_pinned_commit(engine, ci_images, tmp_path):
    """The msn image's real Dockerfile built from a throwaway copy whose images/upstream/msn slot is a git repository
    the test makes (CI reaches no GitHub): the pinned commit's files land in the image and its record says where they
    came from; a slot at another commit fails the build in one line."""
    copy = _checkout_copy(tmp_path / "checkout")
    slot = copy / "images" / "upstream" / "msn"
    (slot / "src").mkdir(parents=True)
    (slot / "src" / "deit.py").write_text("MADE_BY = 'the test'\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for args in (["init", "-q", "."], ["add", "src"], ["commit", "-q", "-m", "pinned"]):
        subprocess.run(["git", *args], cwd=slot, check=True, env=env, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=slot, capture_output=True, text=True).stdout.strip()
    (slot / "src" / "deit.py").write_text("MADE_BY = 'an uncommitted edit'\n")
    environ = dict(ci_images, PARITY_BUILD_ARG_MSN_COMMIT=commit)
    ((_env, tag, _present),) = [row for row in img.plan(["msn"], engine, root=copy, environ=environ) if row[0] == "msn"]
    built = img.build(["msn"], engine, root=copy, environ=environ, on_line=lambda _l: None)
    try:
        assert built[-1][1] == tag
        assert _run(engine, tag, ["python", "-c", "import src.deit; print(src.deit.MADE_BY)"]).strip() == "the test"
        probe = "from parity.runtime.setup import image_upstream; print(image_upstream().model_dump_json())"
        record = json.loads(_run(engine, tag, ["python", "-c", probe], volumes=img.code_mounts()))
        assert record["repositories"]["msn"]["commit"] == commit
        assert record["repositories"]["msn"]["fetched_from"] == "local checkout images/upstream/msn"
    finally:
        engine.images.remove(tag, force=True)
    other = dict(environ, PARITY_BUILD_ARG_MSN_COMMIT="f" * 40)
    with pytest.raises(img.ImageError) as failed:
        img.build(["msn"], engine, root=copy, environ=other, on_line=lambda _l: None)
    assert f"is at {commit}, the image pins {'f' * 40}" in str(failed.value) and "\n" not in str(failed.value)


# --- a step's sandbox, from inside ------------------------------------------------------------------------------------

SANDBOX_PROBE = r"""
import json, os, socket, sys
out, dump = sys.argv[1], sys.argv[2]
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
def connect():
    socket.create_connection(("1.1.1.1", 443), timeout=3).close()
def resolve():
    socket.getaddrinfo("pypi.org", 443)
def write(path):
    return lambda: open(path, "w").write("x")
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
print(json.dumps({
    "uid": os.getuid(),
    "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "connect": attempt(connect), "resolve": attempt(resolve),
    "write_input": attempt(write(os.path.join(dump, "manifest.json"))),
    "new_file_in_input": attempt(write(os.path.join(dump, "new"))),
    "write_root": attempt(write("/opt/venv/x")), "write_etc": attempt(write("/etc/x")),
    "write_code": attempt(write("/opt/parity/parity/x")),
    "write_tmp": attempt(write("/tmp/x")), "write_output": attempt(write(os.path.join(out, "report.json"))),
    "pids_max": open("/sys/fs/cgroup/pids/pids.max").read().strip() if os.path.exists("/sys/fs/cgroup/pids/pids.max")
                else open("/sys/fs/cgroup/pids.max").read().strip(),
}))
"""


def test_a_step_cannot_reach_the_network_or_write_its_inputs_or_its_root(engine, ci_images, tmp_path, monkeypatch):
    """The exact container config the backend makes for a port step (its dump inside its output folder), with only
    the command replaced by a probe: no network, inputs and root filesystem read-only, no capabilities."""
    from parity.contracts.steps import PortRequest
    from parity.host.backends.docker import DockerBackend, container_config

    monkeypatch.setenv("PARITY_OS_IMAGE", ci_images.get("PARITY_OS_IMAGE", ""))
    out = tmp_path / "out" / "variant"
    (out / "dump").mkdir(parents=True)
    (out / "dump" / "manifest.json").write_text("{}")
    request_file = tmp_path / "request.json"
    request_file.write_text("{}")
    for path in (tmp_path, tmp_path / "out", out, out / "dump"):
        path.chmod(0o777)
    (out / "dump" / "manifest.json").chmod(0o666)
    backend = DockerBackend(client=engine)
    config = container_config("transformers", PortRequest(dump=out / "dump", out=out), request_file,
                              user=NOBODY, limits=backend.limits)
    config["command"] = ["python", "-c", SANDBOX_PROBE, str(out), str(out / "dump")]
    config.pop("detach")
    report = json.loads(engine.containers.run(**config, remove=True, stdout=True, stderr=True).decode())
    assert report["uid"] == 4242
    assert int(report["cap_eff"], 16) == 0 and report["no_new_privs"] == "1"
    assert report["interfaces"] == ["lo"] and report["connect"] != "ok" and report["resolve"] != "ok"
    assert report["write_input"] == report["new_file_in_input"] == "Read-only file system"
    assert report["write_root"] == report["write_etc"] == report["write_code"] == "Read-only file system"
    assert report["write_tmp"] == "ok" and report["write_output"] == "ok"
    assert report["pids_max"] == str(backend.limits.pids)
    assert (out / "dump" / "manifest.json").read_text() == "{}" and (out / "report.json").read_text() == "x"


def test_a_hung_step_is_killed_at_its_deadline_and_removed(engine, ci_images, tmp_path, monkeypatch):
    """A real dump step whose checkpoint is a FIFO nobody writes: the original loader's open() blocks forever. With
    PARITY_DOCKER_TIMEOUT=5 the backend kills and removes the container soon after 5 s and says so in one line."""
    from parity.contracts.steps import DumpRequest
    from parity.host.backends.docker import HOST_LABEL, DockerBackend
    from parity.host.registry import all_recipes

    monkeypatch.setenv("PARITY_OS_IMAGE", ci_images.get("PARITY_OS_IMAGE", ""))
    monkeypatch.setenv("PARITY_DOCKER_TIMEOUT", "5")
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    fifo = tmp_path / "checkpoint.pth"
    os.mkfifo(fifo)
    tmp_path.chmod(0o777)
    backend = DockerBackend(client=engine)
    assert backend.limits.timeout_s == 5
    request = DumpRequest(recipe=all_recipes()["sam-tiny-random"], checkpoint=fifo, checkpoint_source="a fifo",
                          out=tmp_path / "out" / "dump")
    started = time.monotonic()
    with pytest.raises(ParityError) as caught:
        backend.run("sam", request, log=tmp_path / "dump.log", on_progress=lambda _m: None)
    elapsed = time.monotonic() - started
    assert "exceeded 5s (PARITY_DOCKER_TIMEOUT)" in str(caught.value) and "\n" not in str(caught.value)
    assert 5 <= elapsed < 30
    label = f"{HOST_LABEL}={socket.gethostname()}:{os.getpid()}"
    assert engine.containers.list(all=True, filters={"label": label}) == []
    assert not (tmp_path / "out" / "dump").exists()


def test_a_root_host_with_its_cache_under_root_runs_steps_as_another_user(ci_images):
    """A root host side keeps its cache in /root/.cache/parity by default, and runs steps as PARITY_CONTAINER_USER
    (1000:1000), which must reach files mounted under /root inside the container (the images' /root is traversable):
    `parity convert sam-tiny-random --backend docker` generates, dumps and diffs to PASS with cache and output there."""
    if os.getuid() != 0:
        pytest.skip("the root-host case needs the host side to run as root")
    base = Path(tempfile.mkdtemp(prefix=".parity-root-host-", dir=Path.home()))
    try:
        env = {"PARITY_OS_IMAGE": ci_images.get("PARITY_OS_IMAGE", ""), "PARITY_CACHE_DIR": str(base / "cache")}
        parity("convert", "sam-tiny-random", "--backend", "docker", "--out", str(base / "out"), env=env, check=0)
        report = json.loads((base / "out" / "sam-tiny-random" / "report.json").read_text())
        assert report["verdict"] == "pass"
        assert (base / "out" / "sam-tiny-random" / "dump" / "manifest.json").stat().st_uid == 1000
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- compose, as a non-root user --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def compose_checkout(engine, ci_images):
    """A throwaway copy of the checkout owned by a non-root user (USER_ID), where that user runs `docker compose`; its
    cache does not exist yet (the engine creates it for the bind mount, root-owned: the service hands it over)."""
    img.sync_ca_bundle(environ=ci_images)
    base = Path(tempfile.mkdtemp(prefix="parity-compose-"))
    base.chmod(0o755)
    checkout = base / "checkout"
    checkout.mkdir()
    for name in ("compose.yaml", "compose.fixtures.yaml", "compose.gpu.yaml"):
        shutil.copy(ROOT / name, checkout / name)
    shutil.copytree(ROOT / "parity", checkout / "parity", ignore=shutil.ignore_patterns("__pycache__"))
    _checkout_copy(checkout)
    (base / "home").mkdir()
    for path in (base / "home", checkout, *checkout.rglob("*")):
        os.lchown(path, USER_ID, USER_ID)
    yield checkout
    shutil.rmtree(base, ignore_errors=True)


def _compose(checkout: Path, ci_images: dict[str, str], *args: str, project: str, popen: bool = False,
             files: tuple[str, ...] = ("compose.yaml",), extra: dict[str, str] | None = None):
    """`docker compose -f ... run --rm ARGS` as USER_ID (with the Docker socket's group), from the checkout copy."""
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    env = {"PATH": os.environ["PATH"], "HOME": str(checkout.parent / "home"), "PWD": str(checkout),
           "PARITY_CACHE_DIR": str(checkout.parent / "cache"),
           "PARITY_ORCHESTRATOR_IMAGE": img.image_tag("orchestrator", environ=ci_images),
           "PARITY_OS_IMAGE": ci_images.get("PARITY_OS_IMAGE", ""), **(extra or {})}
    argv = ["setpriv", f"--reuid={USER_ID}", f"--regid={USER_ID}", f"--groups={socket_gid}", "docker", "compose",
            "-p", project, *[a for f in files for a in ("-f", f)], "run", "--rm", *args]
    if popen:
        return subprocess.Popen(argv, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, stdin=subprocess.DEVNULL)
    return subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _owned_by_the_user(*roots: Path) -> list[str]:
    strangers = []
    for root in roots:
        for path in [root, *root.rglob("*")]:
            stat = path.lstat()
            if (stat.st_uid, stat.st_gid) != (USER_ID, USER_ID):
                strangers.append(f"{path} ({stat.st_uid}:{stat.st_gid})")
    return strangers


@pytest.mark.parametrize("args", [("sam-tiny-random",), ("upernet-convnext-tiny-random", "--origin", "all")],
                         ids=["sam", "upernet-all-origins"])
def test_compose_convert_passes_bit_identical_to_the_local_backend_and_owned_by_the_user(
        compose_checkout, ci_images, tmp_path, args):
    variant = args[0]
    result = _compose(compose_checkout, ci_images, "convert", *args, project=f"paritytest{os.getpid()}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = compose_checkout / "out" / variant
    origins = ["mmseg0", "mmseg1"] if "--origin" in args else [None]
    local = parity("convert", *args, "--out", str(tmp_path / "local"), check=0,
                   env={"PARITY_OS_IMAGE": ci_images.get("PARITY_OS_IMAGE", "")})
    assert "pass" in local.stdout
    for origin in origins:
        folder = out / origin if origin else out
        report = json.loads((folder / "report.json").read_text())
        assert report["verdict"] == "pass"
        local_dump = tmp_path / "local" / variant / (origin or "") / "dump"
        assert _tensor_hashes(folder / "dump") == _tensor_hashes(local_dump), f"{origin or variant}: dumps differ"
        assert (folder / "hf" / "config.json").is_file() and (folder / "report.md").is_file()
    if len(origins) > 1:
        assert (out / "origins.md").is_file()
    assert _owned_by_the_user(compose_checkout / "out", compose_checkout.parent / "cache") == []


def test_compose_fixture_recipes_run_with_the_fixtures_overlay(compose_checkout, ci_images):
    """compose.fixtures.yaml mounts PARITY_FIXTURES read-only at its host path; the fixture recipes whose origins
    build from registries (SAM, UperNet mmseg0) dump from the fixture checkpoint in their origin containers."""
    overlay = ("compose.yaml", "compose.fixtures.yaml")
    result = _compose(compose_checkout, ci_images, "convert", "sam-fixture-vit-tiny",
                      project=f"paritytest{os.getpid()}", files=overlay, extra={"PARITY_FIXTURES": str(FIXTURES)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((compose_checkout / "out" / "sam-fixture-vit-tiny" / "dump" / "manifest.json").read_text())
    assert manifest["checkpoint"]["source"].startswith("fixture sam-vit-tiny/")
    missing = _compose(compose_checkout, ci_images, "convert", "sam-fixture-vit-tiny",
                       project=f"paritytest{os.getpid()}", files=overlay)
    assert missing.returncode != 0 and "set PARITY_FIXTURES" in missing.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_convert_container_removes_every_step_container(engine, compose_checkout, ci_images, sig):
    """The convert service is interrupted while a step container runs: the host side removes it and exits."""
    name = f"parity-signal-{sig.name.lower()}-{os.getpid()}"
    proc = _compose(compose_checkout, ci_images, "--name", name, "convert", "upernet-convnext-tiny-random", "--origin",
                    "all", project=f"paritytest{os.getpid()}", popen=True)
    try:
        deadline = time.monotonic() + 300
        steps = []
        while time.monotonic() < deadline and not steps and proc.poll() is None:
            try:
                hostname = engine.containers.get(name).attrs["Config"]["Hostname"]
                steps = engine.containers.list(filters={"label": "parity.step", "status": "running"})
                steps = [c for c in steps if c.labels.get("parity.host", "").startswith(hostname + ":")]
            except Exception:  # noqa: BLE001 - the convert container is not there yet
                pass
            time.sleep(0.2)
        assert steps, "no step container ever ran"
        engine.containers.get(name).kill(signal=sig.name)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "interrupted" in output
    leftovers = [c for c in engine.containers.list(all=True, filters={"label": "parity.step"})
                 if c.labels.get("parity.host", "").startswith(hostname + ":")]
    assert leftovers == []


# --- fixtures in containers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_every_golden_fixture_imports_and_diffs_in_containers(ci_images, tmp_path, fixture):
    """`parity diff --dump <fixture> --backend docker`: the fixture is imported in its family's importer image
    (fixtures, sam or mmseg0 — none needs upstream sources) and diffed in the transformers image; the imported dump is
    the one the local backend imports, bit for bit."""
    env = {"PARITY_OS_IMAGE": ci_images.get("PARITY_OS_IMAGE", ""), "PARITY_CACHE_DIR": str(tmp_path / "cache")}
    docker_run = parity("diff", "--dump", str(FIXTURES / fixture), "--backend", "docker", "--out",
                        str(tmp_path / "docker"), env=env)
    assert docker_run.returncode == 0, docker_run.stderr[-3000:]
    assert json.loads((tmp_path / "docker" / "report.json").read_text())["verdict"] == "pass"
    (docker_dump,) = (tmp_path / "cache" / "dumps").glob(f"fixture-{fixture}-*")
    local_cache = tmp_path / "local-cache"
    for kind in ("envs", "layers"):  # the local environments the session already built, not the dumps
        (local_cache / kind).parent.mkdir(exist_ok=True)
        (local_cache / kind).symlink_to(envs.cache_dir() / kind)
    parity("diff", "--dump", str(FIXTURES / fixture), "--out", str(tmp_path / "local"), check=0,
           env={"PARITY_CACHE_DIR": str(local_cache)})
    assert _tensor_hashes(docker_dump) == _tensor_hashes(local_cache / "dumps" / docker_dump.name)


# --- parity doctor ---------------------------------------------------------------------------------------------------

def test_doctor_reports_the_engine_and_every_ci_image_built(engine, ci_images):
    result = parity("doctor", check=0, env={"PARITY_OS_IMAGE": ci_images.get("PARITY_OS_IMAGE", "")})
    version = engine.version()["Version"]
    lines = result.stdout.splitlines()
    assert any("docker engine" in line and version in line for line in lines)
    for env in CI_IMAGES:
        tag = img.image_tag(env, environ=ci_images)
        assert any(f"image {env} " in line and "built" in line and tag in line for line in lines), env
    assert any("disk" in line for line in lines) and any("GPU in containers" in line for line in lines)


# --- the GPU workflow's jobs, run here without a GPU ---------------------------------------------------------------

def _workflow() -> dict:
    import yaml

    return yaml.safe_load((ROOT / ".github" / "workflows" / "parity-gpu.yml").read_text())


def _run_job(job: dict, checkout: Path, runner: Path, env: dict[str, str], expressions: dict[str, str],
             edit=lambda _name, script: script) -> list[tuple[str, int, str]]:
    """Run a job's `run:` steps the way a runner does (bash -eo pipefail, GITHUB_ENV / GITHUB_PATH carried to later
    steps, `${{ ... }}` replaced from `expressions`) as USER_ID; `uses:` steps are the caller's business. Stops at
    the first failing step. Returns (step name, exit code, output) per step run."""
    import re

    def expand(text: str) -> str:
        return re.sub(r"\$\{\{\s*([^}]+?)\s*\}\}", lambda m: expressions[m.group(1)], text)

    files = {name: runner / name.lower() for name in ("GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT",
                                                      "GITHUB_STEP_SUMMARY")}
    for path in files.values():
        path.touch()
        os.chown(path, USER_ID, USER_ID)
    env = {**env, **{k: expand(str(v)) for k, v in job.get("env", {}).items()}, **{k: str(v) for k, v in files.items()}}
    done = []
    for step in job["steps"]:
        if "run" not in step:
            continue
        name = expand(step.get("name", step["run"].splitlines()[0]))
        step_env = {**env, **{k: expand(str(v)) for k, v in step.get("env", {}).items()}}
        extra_path = [line for line in files["GITHUB_PATH"].read_text().splitlines() if line]
        step_env["PATH"] = ":".join([*reversed(extra_path), step_env["PATH"]])
        for line in files["GITHUB_ENV"].read_text().splitlines():
            key, _, value = line.partition("=")
            step_env[key] = value
        script = edit(name, expand(step["run"]))
        result = subprocess.run(["setpriv", f"--reuid={USER_ID}", f"--regid={USER_ID}",
                                 f"--groups={os.stat('/var/run/docker.sock').st_gid}", "bash", "--noprofile",
                                 "--norc", "-eo", "pipefail", "-c", script], cwd=checkout, env=step_env,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL)
        done.append((name, result.returncode, result.stdout + result.stderr))
        if result.returncode != 0:
            break
    return done


@pytest.fixture
def runner_checkout(engine, ci_images):
    """A copy of the checkout's tracked files owned by USER_ID, like a runner's workspace, with the runner's HOME and
    RUNNER_TEMP beside it."""
    base = Path(tempfile.mkdtemp(prefix="parity-runner-"))
    base.chmod(0o755)
    checkout = base / "workspace"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in tracked.stdout.split("\0"):
        if rel and (ROOT / rel).is_file():
            (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, checkout / rel)
    for name in ("home", "runner-temp"):
        (base / name).mkdir()
    for path in (base / "home", base / "runner-temp", checkout, *checkout.rglob("*")):
        os.lchown(path, USER_ID, USER_ID)
    yield checkout
    shutil.rmtree(base, ignore_errors=True)


def _runner_env(checkout: Path, ci_images: dict[str, str]) -> dict[str, str]:
    keep = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT", "LANG",
            "PARITY_OS_IMAGE")
    env = {k: v for k, v in {**os.environ, **ci_images}.items() if k in keep}
    return {**env, "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(checkout.parent / "home"),
            "RUNNER_TEMP": str(checkout.parent / "runner-temp"), "GITHUB_WORKSPACE": str(checkout), "CI": "true"}


def test_the_workflow_matrix_job_runs_here_and_refuses_an_empty_matrix(runner_checkout, ci_images):
    """The matrix job's steps: `pip install .` (actions/setup-python stood in for by a venv on the system python),
    then `parity matrix`, as the runner's user; a selector that selects no published variant fails the job."""
    job = _workflow()["jobs"]["matrix"]
    env = _runner_env(runner_checkout, ci_images)
    venv = runner_checkout.parent / "runner-temp" / "setup-python"
    subprocess.run(["setpriv", f"--reuid={USER_ID}", f"--regid={USER_ID}", "--clear-groups", "/usr/bin/python3", "-m",
                    "venv", str(venv)], check=True, env=env)
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    steps = _run_job(job, runner_checkout, runner_checkout.parent / "runner-temp", env,
                     {"github.event.inputs.selector": "sam", "steps.matrix.outputs.variants": ""})
    assert [code for _name, code, _out in steps] == [0, 0], steps[-1][2][-3000:]
    output = (runner_checkout.parent / "runner-temp" / "github_output").read_text()
    assert json.loads(output.split("variants=", 1)[1]) == ["sam-vit-base", "sam-vit-large", "sam-vit-huge"]
    empty = _run_job(job, runner_checkout, runner_checkout.parent / "runner-temp", env,
                     {"github.event.inputs.selector": "sam-tiny", "steps.matrix.outputs.variants": ""})
    assert empty[-1][1] != 0 and "::error::parity matrix printed no variant" in empty[-1][2]


def test_the_workflow_convert_job_runs_here_as_the_runner_user_without_a_gpu(runner_checkout, ci_images):
    """The convert job's steps for a tiny variant, as the runner's user: engine check, host venv, images, doctor,
    `docker compose run convert` (here WITHOUT compose.gpu.yaml: this machine has no GPU), the step summary and the
    ownership fallback; afterwards the uploaded paths exist and nothing in the workspace or the cache belongs to
    anyone else."""
    variant = "sam-tiny-random"
    job = _workflow()["jobs"]["convert"]
    env = _runner_env(runner_checkout, ci_images)

    def no_gpu(name: str, script: str) -> str:
        return script.replace(" -f compose.gpu.yaml", "") if name.startswith("Convert") else script

    steps = _run_job(job, runner_checkout, runner_checkout.parent / "runner-temp", env, {"matrix.variant": variant},
                     edit=no_gpu)
    names = [name for name, _code, _out in steps]
    assert all(code == 0 for _name, code, _out in steps), steps[-1][2][-3000:]
    assert any(name.startswith("Convert") for name in names) and "Step summary" in names
    summary = (runner_checkout.parent / "runner-temp" / "github_step_summary").read_text()
    assert variant in summary and "pass" in summary.lower()
    upload = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact"))
    for line in filter(None, map(str.strip, upload["with"]["path"].splitlines())):
        path = runner_checkout / line.replace("${{ matrix.variant }}", variant)
        assert path.exists(), f"the artifact upload would miss {path}"
    assert _owned_by_the_user(runner_checkout / "out", runner_checkout.parent / "home" / ".cache" / "parity") == []
