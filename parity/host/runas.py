"""Run a command as the user who invoked `docker compose` (the entry point of compose's host-side services).

compose cannot know the invoking user's uid, yet everything the host side writes (out/, the cache) must belong to
that user, and the step containers run as the host side's uid. The service therefore starts as root only to switch:
to PARITY_UID (and PARITY_GID, default: PARITY_UID's value) when set, else to the owner of the working directory (the
checkout, mounted at its host path), keeping the Docker socket's group so that the host side can start step
containers. A bind-mount folder the engine had to create (root-owned and empty, e.g. a first-run cache dir) is handed
to that user first. When the target is root, or the process is not root, nothing changes. Then the command replaces
this process (the CLI handles SIGINT and SIGTERM itself).

    python -m parity.host.runas COMMAND [ARG...]

Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

DOCKER_SOCKET = Path("/var/run/docker.sock")
HANDED_OVER = ("PARITY_CACHE_DIR",)
"""Settings naming folders that compose bind-mounts and the host side writes into."""


class RunAsError(Exception):
    """Bad settings: one line."""


def target_user(environ: Mapping[str, str], workdir: Path) -> tuple[int, int]:
    """(uid, gid) the command runs as: PARITY_UID / PARITY_GID, else the working directory's owner."""
    uid_text = environ.get("PARITY_UID", "").strip()
    gid_text = environ.get("PARITY_GID", "").strip()
    if not uid_text:
        if gid_text:
            raise RunAsError("PARITY_GID is set without PARITY_UID")
        owner = workdir.stat()
        return owner.st_uid, owner.st_gid
    gid_text = gid_text or uid_text
    if not (uid_text.isdigit() and gid_text.isdigit()):
        raise RunAsError(f"PARITY_UID={uid_text!r} / PARITY_GID={gid_text!r} must be numeric ids (e.g. $(id -u))")
    return int(uid_text), int(gid_text)


def hand_over_created_mounts(folders: list[Path], uid: int, gid: int) -> list[Path]:
    """chown the folders the engine created for bind mounts (root-owned and empty) to uid:gid; returns them."""
    handed = []
    for folder in folders:
        if folder.is_dir() and folder.stat().st_uid == 0 and not any(folder.iterdir()):
            os.chown(folder, uid, gid)
            handed.append(folder)
    return handed


def switch_user(uid: int, gid: int, socket: Path = DOCKER_SOCKET) -> None:
    groups = {gid}
    if socket.exists():
        groups.add(socket.stat().st_gid)
    os.setgroups(sorted(groups))
    os.setgid(gid)
    os.setuid(uid)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv:
            raise RunAsError("usage: python -m parity.host.runas COMMAND [ARG...]")
        uid, gid = target_user(os.environ, Path.cwd())
        if os.getuid() == 0 and uid != 0:
            folders = [Path(os.environ[name]) for name in HANDED_OVER if os.environ.get(name)]
            hand_over_created_mounts(folders, uid, gid)
            switch_user(uid, gid)
    except (RunAsError, OSError) as exc:
        print(f"parity runas: error: {exc}", file=sys.stderr)
        return 2
    os.execvp(argv[0], argv)
    return 0  # not reached: execvp replaces the process


if __name__ == "__main__":
    sys.exit(main())
