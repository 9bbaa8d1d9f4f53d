"""Upstream sources of parity's images: fetch a repository at a pinned commit, apply a declared patch, record it all.

Runs INSIDE an image build (stdlib + git only). The one mechanism every upstream image (detectron2 + Mask2Former,
msn, clipseg) uses; see docs/containers.md.

  python upstream.py fetch NAME URL COMMIT DEST     shallow checkout of COMMIT at DEST (verified)
  python upstream.py patch NAME REPO_DIR PATCH SHA256   check the patch file's sha256, `git apply` it at REPO_DIR
  python upstream.py note KEY VALUE                 record one more fact (e.g. which compiled ops the image has)

Source of `fetch`: when the Dockerfile's COPY put a local checkout next to this script (the build context's git-ignored
images/upstream/NAME/, for sites without GitHub access), that checkout is the source: its HEAD must be COMMIT, and
the commit's objects are fetched from it exactly as they would be from URL (`git fetch --depth 1 file://... COMMIT`),
so local edits in its work tree never reach the image. Otherwise COMMIT is fetched from URL. Either way the result is
checked (`git rev-parse HEAD` == COMMIT).

Everything is recorded in /opt/parity-upstream.json (PARITY_UPSTREAM_RECORD), which the origin side reads into every
dump's environment record: repositories and commits, where they were fetched from, patches with their sha256, notes.
Bad input or a failed check: one line on stderr, exit 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

RECORD = Path(os.environ.get("PARITY_UPSTREAM_RECORD", "/opt/parity-upstream.json"))


def fail(message: str) -> None:
    print(f"upstream: {message}", file=sys.stderr)
    sys.exit(1)


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"git {args[0]} failed")
    return result.stdout.strip()


def load_record() -> dict:
    if RECORD.is_file():
        return json.loads(RECORD.read_text())
    return {"repositories": {}, "patches": [], "notes": {}}


def save_record(record: dict) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def fetch(name: str, url: str, commit: str, dest: Path) -> None:
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        fail(f"{name}: {commit!r} is not a full 40-hex commit id")
    slot = Path(__file__).resolve().parent
    if (slot / ".git").exists():
        try:
            head = git("rev-parse", "HEAD", cwd=slot)
        except RuntimeError as exc:
            fail(f"{name}: images/upstream/{name} is not a self-contained git checkout ({exc}); clone it there "
                 f"(not a worktree or submodule), or remove it to fetch from {url}")
        if head != commit:
            fail(f"{name}: images/upstream/{name} is at {head}, the image pins {commit}; run "
                 f"`git -C images/upstream/{name} checkout {commit}`, or remove the folder to fetch from {url}")
        source, origin = f"file://{slot}", f"local checkout images/upstream/{name}"
    else:
        source, origin = url, url
    try:
        dest.mkdir(parents=True, exist_ok=True)
        git("init", "-q", str(dest))
        git("fetch", "-q", "--depth", "1", source, commit, cwd=dest)
        git("checkout", "-q", "--detach", "FETCH_HEAD", cwd=dest)
        got = git("rev-parse", "HEAD", cwd=dest)
    except RuntimeError as exc:
        fail(f"{name}: fetching {commit} from {origin} failed ({exc})")
    if got != commit:
        fail(f"{name}: fetched {got}, expected {commit}")
    record = load_record()
    record["repositories"][name] = {"url": url, "commit": commit, "path": str(dest), "fetched_from": origin}
    save_record(record)
    print(f"upstream: {name} @ {commit} from {origin}")


def patch(name: str, repo: Path, patch_file: Path, sha256: str) -> None:
    if not patch_file.is_file():
        fail(f"{name}: patch {patch_file} not found")
    got = hashlib.sha256(patch_file.read_bytes()).hexdigest()
    if got != sha256:
        fail(f"{name}: {patch_file.name} has sha256 {got}, the Dockerfile declares {sha256} (update the ARG with the patch)")
    try:
        git("apply", "--check", str(patch_file), cwd=repo)
        git("apply", str(patch_file), cwd=repo)
    except RuntimeError as exc:
        fail(f"{name}: {patch_file.name} does not apply at {repo} ({exc})")
    record = load_record()
    record["patches"].append({"repository": name, "name": patch_file.name, "sha256": sha256})
    save_record(record)
    print(f"upstream: {name} patched with {patch_file.name} (sha256 {sha256})")


def note(key: str, value: str) -> None:
    record = load_record()
    record["notes"][key] = value
    save_record(record)
    print(f"upstream: {key} = {value}")


def main(argv: list[str]) -> None:
    usage = "usage: upstream.py fetch NAME URL COMMIT DEST | patch NAME REPO_DIR PATCH SHA256 | note KEY VALUE"
    if not argv:
        fail(usage)
    verb, args = argv[0], argv[1:]
    if verb == "fetch" and len(args) == 4:
        fetch(args[0], args[1], args[2], Path(args[3]))
    elif verb == "patch" and len(args) == 4:
        patch(args[0], Path(args[1]), Path(args[2]), args[3])
    elif verb == "note" and len(args) == 2:
        note(args[0], args[1])
    else:
        fail(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
