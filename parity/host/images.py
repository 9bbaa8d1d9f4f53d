"""Image identity for every entry point: what defines each image under images/, its tag, its build, its run-time CA.

ONE tag scheme for the docker backend, scripts/build-images.sh, compose's `images` service and the GPU workflow:

    parity/<env>:<hash16>   hash16 = sha256 of image_inputs(env)[:16]

image_inputs(env) lists everything the build reads: the Dockerfile's bytes (its ARG defaults, upstream commit ARGs
included), the bytes of every file it COPYs from the build context, the build arguments that differ from the
Dockerfile's defaults (the OS base image among them), the sha256 of the host CA bundle (for images that copy it) and
the parent image's tag (which carries the parent's own inputs). Changing any of them changes that image's tag and its
dependents' tags, and nothing else's. Images hold environments only: parity's code is mounted read-only at run time
(code_mounts), so code changes never touch a tag.

Two things in the build context are deliberately NOT tag inputs: local upstream checkouts (images/upstream/<repo>/,
git-ignored; the build verifies their HEAD is the pinned commit and fetches exactly that commit's objects, so they
yield the same sources as GitHub) and the generated CA file itself (its sha256 is an input of its own).

Settings (environment): PARITY_OS_IMAGE (build argument OS_IMAGE), PARITY_BUILD_ARG_<NAME> (build argument NAME, for
images whose Dockerfile declares it), PARITY_CA_BUNDLE (a file, `none`, or `context`: keep images/ca/host-ca.crt as it
is), else PIP_CERT / SSL_CERT_FILE name the host bundle. Functions take `root` and `environ` explicitly; defaults are
the checkout this module lives in and os.environ.

Command line (`python -m parity.host.images ...`, scripts/build-images.sh):
    tag ENV...           the tags
    inputs ENV           the inputs as JSON
    build [--all] ENV... parents first, skipping tags the engine already has; needs the docker SDK and an engine
    compose-env          PARITY_ORCHESTRATOR_IMAGE=<tag> (for `docker compose --env-file` / $GITHUB_ENV)
Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from parity.contracts.errors import ParityError
from parity.contracts.paths import PACKAGE_ROOT
from parity.host.envs import PROJECT_ROOT, missing_images_message

ROOT = PROJECT_ROOT
"""The checkout holding images/ (PARITY_ROOT, else the folder the parity package sits in)."""
IMAGES = "images"
LAYER = "base"
TAG_PREFIX = "parity"
SCHEMA = 1
PARENT_ARG = "BASE_IMAGE"
"""A Dockerfile's parent is the image named by `ARG BASE_IMAGE=parity/<env>:...`; the build passes the parent's tag."""
OS_ARG = "OS_IMAGE"
DEFAULT_OS_IMAGE = "python:3.11.7-slim-bookworm"
CA_CONTEXT_FILE = "images/ca/host-ca.crt"
UPSTREAM_SLOT = "images/upstream"
CODE_DIR = "/opt/parity"
"""The running parity package is mounted read-only at CODE_DIR/parity in every step container (images put CODE_DIR
first on PYTHONPATH)."""
CA_IN_CONTAINER = "/run/parity/host-ca.crt"
CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")


BUILDER_BOOKKEEPING = re.compile(r"^(Step \d+/\d+ : | ---> |Removing intermediate container |Successfully )")
"""The classic builder's own lines; a failed build's error names the last other line (what the failing step said)."""
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CERTIFICATE_FAILURE = "CERTIFICATE_VERIFY_FAILED"
CERTIFICATE_HINT = ("TLS certificates could not be verified inside the build: behind a TLS-intercepting proxy, point "
                    "PIP_CERT or SSL_CERT_FILE at the host's CA bundle and run scripts/build-images.sh on the host "
                    "once (it writes images/ca/host-ca.crt, which docker compose builds and runs read)")
"""A pip that cannot verify the proxy's certificate fails with "no matching distribution": the error names the cause."""


class ImageError(ParityError):
    """Bad input about images: one line."""


# --- Dockerfiles ------------------------------------------------------------------------------------------------------

def dockerfile(env: str, root: Path = ROOT) -> Path:
    if not (Path(root) / IMAGES).is_dir():
        raise ImageError(missing_images_message() if Path(root) == ROOT else f"{root} holds no images/ folder")
    path = Path(root) / IMAGES / env / "Dockerfile"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", env) or not path.is_file():
        raise ImageError(f"no image {env!r} (images/{env}/Dockerfile missing; known: {', '.join(known_images(root))})")
    return path


def known_images(root: Path = ROOT) -> list[str]:
    """Every folder under images/ with a Dockerfile, parents before children."""
    names = sorted(p.parent.name for p in (Path(root) / IMAGES).glob("*/Dockerfile"))
    return build_order(names, root) if names else []


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    if pending.strip():
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def declared_args(text: str) -> dict[str, str | None]:
    """ARG name -> default (None when declared without one); the first declaration's default wins."""
    args: dict[str, str | None] = {}
    for word, rest in instructions(text):
        if word != "ARG":
            continue
        for token in shlex.split(rest):
            name, eq, default = token.partition("=")
            args.setdefault(name, default if eq else None)
    return args


def copy_sources(text: str) -> list[str]:
    """Build-context sources of every COPY/ADD (not `COPY --from=stage`), as written (globs kept)."""
    sources: list[str] = []
    for word, rest in instructions(text):
        if word not in ("COPY", "ADD"):
            continue
        if rest.startswith("["):
            parts = json.loads(rest)
        else:
            parts = shlex.split(rest)
        flags = [p for p in parts if p.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        paths = [p for p in parts if not p.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def parent(env: str, root: Path = ROOT) -> str | None:
    """The parity image this one is built FROM (ARG BASE_IMAGE=parity/<env>:...), or None."""
    default = declared_args(dockerfile(env, root).read_text()).get(PARENT_ARG)
    if not default:
        return None
    match = re.fullmatch(rf"{TAG_PREFIX}/([a-z0-9_.-]+)(:.*)?", default)
    if not match:
        raise ImageError(f"images/{env}/Dockerfile: ARG {PARENT_ARG}={default} does not name a {TAG_PREFIX}/<env> image")
    return match.group(1)


def build_order(envs: Iterable[str], root: Path = ROOT) -> list[str]:
    """The images to build for `envs`, their parents included, each after its parent."""
    ordered: list[str] = []

    def visit(env: str, trail: tuple[str, ...]) -> None:
        if env in ordered:
            return
        if env in trail:
            raise ImageError(f"images form a cycle: {' -> '.join(trail + (env,))}")
        above = parent(env, root)
        if above:
            visit(above, trail + (env,))
        ordered.append(env)

    for env in envs:
        visit(env, ())
    return ordered


# --- inputs -----------------------------------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copied_files(env: str, root: Path = ROOT) -> dict[str, str]:
    """Context file (relative path) -> sha256 for every file the Dockerfile copies, without local upstream checkouts
    and the generated CA file (see the module docstring). A literal source that does not exist is an error."""
    root = Path(root)
    files: dict[str, str] = {}
    for source in copy_sources(dockerfile(env, root).read_text()):
        if source.startswith(("/", "..")) or "://" in source:
            raise ImageError(f"images/{env}/Dockerfile copies {source!r}, which is not inside the build context")
        matches = sorted(root.glob(source)) if any(c in source for c in "*?[") else [root / source]
        if not any(c in source for c in "*?[") and not matches[0].exists():
            raise ImageError(f"images/{env}/Dockerfile copies {source}, which does not exist")
        for match in matches:
            rel = match.relative_to(root).as_posix()
            if rel == CA_CONTEXT_FILE or (rel.startswith(UPSTREAM_SLOT + "/") and match.is_dir()):
                continue
            walk = sorted(p for p in match.rglob("*") if p.is_file()) if match.is_dir() else [match]
            for path in walk:
                files[path.relative_to(root).as_posix()] = _sha256(path.read_bytes())
    return dict(sorted(files.items()))


def copies_ca(env: str, root: Path = ROOT) -> bool:
    """Whether the image installs the host CA bundle (its Dockerfile copies images/ca/...host-ca.crt)."""
    import fnmatch

    return any(fnmatch.fnmatchcase(CA_CONTEXT_FILE, source) for source in copy_sources(dockerfile(env, root).read_text()))


def build_arg_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build arguments asked for in the environment: PARITY_OS_IMAGE -> OS_IMAGE, PARITY_BUILD_ARG_<NAME> -> NAME
    (empty values are ignored, so compose can pass unset variables through)."""
    environ = os.environ if environ is None else environ
    overrides = {key[len("PARITY_BUILD_ARG_"):]: value for key, value in environ.items()
                 if key.startswith("PARITY_BUILD_ARG_") and key != "PARITY_BUILD_ARG_" and value != ""}
    if environ.get("PARITY_OS_IMAGE"):
        overrides[OS_ARG] = environ["PARITY_OS_IMAGE"]
    if PARENT_ARG in overrides:
        raise ImageError(f"{PARENT_ARG} is set by the build (the parent's tag); it cannot be overridden")
    return overrides


def build_args(env: str, *, root: Path = ROOT, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The build arguments the build passes: the parent's tag as BASE_IMAGE, and every override for an ARG this
    Dockerfile declares whose value differs from the declared default (so restating a default changes nothing)."""
    environ = os.environ if environ is None else environ
    declared = declared_args(dockerfile(env, root).read_text())
    args = {name: value for name, value in sorted(build_arg_overrides(environ).items())
            if name in declared and declared[name] != value}
    above = parent(env, root)
    if above:
        args[PARENT_ARG] = image_tag(above, root=root, environ=environ)
    return args


def ca_source(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the CA bundle comes from: a file path, "context" (keep images/ca/host-ca.crt as it is: inside the compose
    containers, or when the host names none) or None (PARITY_CA_BUNDLE=none: no bundle)."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("PARITY_CA_BUNDLE")
    if explicit is not None:
        return None if explicit.strip().lower() in ("", "none") else explicit
    for var in ("PIP_CERT", "SSL_CERT_FILE"):
        if environ.get(var):
            return environ[var]
    return "context"


def ca_bundle(root: Path = ROOT, environ: Mapping[str, str] | None = None) -> bytes:
    """The CA bundle's bytes as the build context will carry them (b"" when none)."""
    source = ca_source(environ)
    if source is None:
        return b""
    path = Path(root) / CA_CONTEXT_FILE if source == "context" else Path(source).expanduser()
    if source == "context":
        return path.read_bytes() if path.is_file() else b""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"CA bundle {path} is not readable ({exc.strerror}); fix PARITY_CA_BUNDLE / PIP_CERT / "
                         "SSL_CERT_FILE, or set PARITY_CA_BUNDLE=none") from None
    if data.strip() and b"-----BEGIN CERTIFICATE-----" not in data:
        raise ImageError(f"CA bundle {path} holds no PEM certificate")
    return data


def image_inputs(env: str, *, root: Path = ROOT, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything that defines the image, as canonical JSON-able data (the tag hashes exactly this)."""
    root = Path(root)
    path = dockerfile(env, root)
    inputs: dict[str, Any] = {
        "schema": SCHEMA,
        "env": env,
        "dockerfile": {path.relative_to(root).as_posix(): _sha256(path.read_bytes())},
        "files": copied_files(env, root),
        "build_args": build_args(env, root=root, environ=environ),
    }
    if copies_ca(env, root):
        inputs["ca_bundle_sha256"] = _sha256(ca_bundle(root, environ))
    above = parent(env, root)
    inputs["parent"] = image_tag(above, root=root, environ=environ) if above else None
    return inputs


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    return _sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode())


def image_tag(env: str, *, root: Path = ROOT, environ: Mapping[str, str] | None = None) -> str:
    """parity/<env>:<first 16 hex of the sha256 of image_inputs(env)>."""
    return f"{TAG_PREFIX}/{env}:{inputs_digest(image_inputs(env, root=root, environ=environ))[:16]}"


# --- build context and build ------------------------------------------------------------------------------------------

def sync_ca_bundle(root: Path = ROOT, environ: Mapping[str, str] | None = None) -> Path:
    """Write the CA bundle into the build context (images/ca/host-ca.crt; empty when none) unless it already holds
    exactly those bytes. Every build entry point calls this before building, so a build reads what the tag hashed."""
    path = Path(root) / CA_CONTEXT_FILE
    data = ca_bundle(root, environ)
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def build_spec(env: str, *, root: Path = ROOT, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for the Docker SDK's low-level APIClient.build (classic builder): the repository is the
    context (.dockerignore keeps it small), images/<env>/Dockerfile, the tag, build arguments and labels."""
    root = Path(root)
    inputs = image_inputs(env, root=root, environ=environ)
    digest = inputs_digest(inputs)
    return {
        "path": str(root),
        "dockerfile": dockerfile(env, root).relative_to(root).as_posix(),
        "tag": f"{TAG_PREFIX}/{env}:{digest[:16]}",
        "buildargs": dict(inputs["build_args"]),
        "labels": {"parity.env": env, "parity.inputs.sha256": digest,
                   "parity.inputs": json.dumps(inputs, sort_keys=True, separators=(",", ":"))},
        "rm": True,
        "forcerm": True,
        "decode": True,
    }


def docker_build_argv(env: str, *, root: Path = ROOT, environ: Mapping[str, str] | None = None) -> list[str]:
    """The same build as a `docker build` command line (classic builder: DOCKER_BUILDKIT=0)."""
    spec = build_spec(env, root=root, environ=environ)
    argv = ["docker", "build", "-f", spec["dockerfile"], "-t", spec["tag"]]
    for name, value in spec["buildargs"].items():
        argv += ["--build-arg", f"{name}={value}"]
    for name, value in spec["labels"].items():
        argv += ["--label", f"{name}={value}"]
    return argv + [spec["path"]]


def plan(envs: Iterable[str], client: Any, *, root: Path = ROOT, environ: Mapping[str, str] | None = None
         ) -> list[tuple[str, str, bool]]:
    """(env, tag, whether the engine has it) for `envs` and their parents, parents first: what a build would do."""
    import docker.errors

    rows = []
    for env in build_order(envs, root):
        tag = image_tag(env, root=root, environ=environ)
        try:
            client.images.get(tag)
            rows.append((env, tag, True))
        except docker.errors.ImageNotFound:
            rows.append((env, tag, False))
    return rows


def build(envs: Iterable[str], client: Any, *, root: Path = ROOT, environ: Mapping[str, str] | None = None,
          on_line: Callable[[str], None] = print, force: bool = False) -> list[tuple[str, str, float | None]]:
    """Build `envs` and their parents, parents first, through `client` (docker.DockerClient). Tags the engine already
    has are skipped unless force. Returns (env, tag, seconds or None when skipped). A failed step raises ImageError."""
    import docker.errors

    sync_ca_bundle(root, environ)
    done: list[tuple[str, str, float | None]] = []
    for env in build_order(envs, root):
        spec = build_spec(env, root=root, environ=environ)
        tag = spec["tag"]
        if not force:
            try:
                client.images.get(tag)
                on_line(f"{tag}: present, skipped")
                done.append((env, tag, None))
                continue
            except docker.errors.ImageNotFound:
                pass
        on_line(f"{tag}: building images/{env}/Dockerfile")
        start = time.monotonic()
        last = ""
        certificate_failed = False
        try:
            for chunk in client.api.build(**spec):
                if "error" in chunk:
                    error = chunk["error"].strip().splitlines()[-1]
                    message = f"building {tag} failed: {last} ({error})" if last else f"building {tag} failed: {error}"
                    raise ImageError(f"{message}; {CERTIFICATE_HINT}" if certificate_failed else message)
                for line in ANSI_ESCAPE.sub("", str(chunk.get("stream", ""))).splitlines():
                    certificate_failed = certificate_failed or CERTIFICATE_FAILURE in line
                    if line.strip():
                        if not BUILDER_BOOKKEEPING.match(line):
                            last = line.strip()
                        on_line(f"{env}: {line.rstrip()}")
        except docker.errors.APIError as exc:
            raise ImageError(f"building {tag} failed: {exc.explanation or exc}") from None
        seconds = time.monotonic() - start
        on_line(f"{tag}: built in {seconds:.0f} s")
        done.append((env, tag, seconds))
    return done


# --- run time ---------------------------------------------------------------------------------------------------------

def code_mounts(package: Path = PACKAGE_ROOT) -> dict[str, dict[str, str]]:
    """Docker SDK `volumes` entries mounting the running parity package read-only at CODE_DIR/parity (a host path as
    the engine sees it: the checkout is at the same path on the host and in the compose `convert` service)."""
    return {str(Path(package).resolve()): {"bind": f"{CODE_DIR}/parity", "mode": "ro"}}


def runtime_ca(root: Path = ROOT) -> dict[str, dict]:
    """{"volumes": ..., "environment": ...} giving a step container the bundle its image was built with: the build
    context's CA file (a path inside the checkout, valid on the host and in the compose service alike) mounted
    read-only at CA_IN_CONTAINER, and every CA variable pointing at it. Empty dicts when the context has no bundle."""
    path = (Path(root) / CA_CONTEXT_FILE).resolve()
    if not path.is_file() or not path.read_bytes().strip():
        return {"volumes": {}, "environment": {}}
    return {"volumes": {str(path): {"bind": CA_IN_CONTAINER, "mode": "ro"}},
            "environment": {var: CA_IN_CONTAINER for var in CA_ENV_VARS}}


# --- command line -----------------------------------------------------------------------------------------------------

def _docker_client():
    try:
        import docker
    except ImportError:
        raise ImageError("building images needs the docker SDK: pip install 'parity[docker]'") from None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine is one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"no Docker engine reachable ({reason[:120]}); scripts/docker-engine.sh starts one") from None
    return client


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m parity.host.images tag ENV... | inputs ENV | build [--all] [--force] [ENV...] | compose-env"
    try:
        if not argv:
            raise ImageError(usage)
        verb, rest = argv[0], argv[1:]
        flags = {a for a in rest if a.startswith("--")}
        names = [a for a in rest if not a.startswith("--")]
        unknown = flags - {"--all", "--force"}
        if unknown:
            raise ImageError(f"unknown option {sorted(unknown)[0]}; {usage}")
        if verb == "tag" and names and not flags:
            for env in names:
                print(image_tag(env))
        elif verb == "inputs" and len(names) == 1 and not flags:
            print(json.dumps(image_inputs(names[0]), indent=2, sort_keys=True))
        elif verb == "build" and (names or "--all" in flags) and not (names and "--all" in flags):
            for env in names:
                dockerfile(env)
            targets = known_images() if "--all" in flags else names
            client = _docker_client()
            results = build(targets, client, force="--force" in flags, on_line=lambda line: print(line, flush=True))
            for env, tag, seconds in results:
                print(f"{tag}\t{'present' if seconds is None else f'built {seconds:.0f} s'}")
        elif verb == "compose-env" and not names and not flags:
            print(f"PARITY_ORCHESTRATOR_IMAGE={image_tag('orchestrator')}")
        else:
            raise ImageError(usage)
    except ImageError as exc:
        print(f"parity images: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
