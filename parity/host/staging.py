"""Output folders during a run: one run at a time per folder (an advisory lock the kernel drops when the process
dies, even by SIGKILL), and what an interrupted run left behind swept at the start of the next.

Every artifact is written under a staging name and renamed into place when complete: `.dump.*` / `.hf.*` folders
(mkdtemp beside their target), `.NAME.tmp` and `.NAME.PID.tmp` files, and `parity-step-PID-*` request folders in the
temp dir. Inside a locked folder every staging name is an interrupted run's (no one else may write there); outside one
(the shared cache, the temp dir) a name is swept only when the process id it carries is gone."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from parity.contracts.errors import ParityError

LOCK_FILE = ".parity.lock"
"""The lock file inside a locked output folder (holds the pid of the run that has it)."""
ARTIFACTS = ("report.json", "report.md", "report.html", "junit.xml", "conversion.json", "mutations.json", "summary.md",
             "origins.json", "origins.md")
"""Files parity writes into an output folder, each through `.NAME.tmp`."""
STAGING = re.compile(r"^\.(?:(?:dump|hf)\.[a-z0-9_]{8}|(?:" + "|".join(re.escape(a) for a in ARTIFACTS) + r")\.tmp)$")
"""What a run stages in its output folder: `.dump.XXXXXXXX` / `.hf.XXXXXXXX` (mkdtemp) and `.ARTIFACT.tmp`; only these
names are ever swept, so an --out pointing at a folder of the user's own loses nothing else."""
STEP_TEMP = re.compile(r"parity-step-(\d+)-")
"""Request folders of a step (local backend) and an origin's scratch folder: `parity-step-PID-XXXXXXXX`."""
PID_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")
"""A temp file outside a locked folder: `.NAME.PID.tmp`."""

_held: dict[Path, int] = {}
"""Folders this process holds the lock of (resolved path -> file descriptor): nested entry points share one lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_locked(folder: Path) -> list[Path]:
    """Remove the staging an interrupted run left in a folder this process has locked. Returns what was removed."""
    removed = []
    for child in list(folder.iterdir()):
        if STAGING.match(child.name):
            _remove(child)
            removed.append(child)
    return removed


def sweep_dead(folder: Path, prefix: str = "") -> list[Path]:
    """Remove `.NAME.PID.tmp` files and `parity-step-PID-*` folders whose process is gone, in a shared folder (only
    names starting with `prefix`, when given)."""
    removed = []
    if not folder.is_dir():
        return removed
    for child in list(folder.iterdir()):
        if not child.name.startswith(prefix):
            continue
        match = PID_TMP.match(child.name) or STEP_TEMP.match(child.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            _remove(child)
            removed.append(child)
    return removed


def sweep_step_temps() -> list[Path]:
    """`parity-step-PID-*` folders in the temp dir left by killed runs."""
    return sweep_dead(Path(tempfile.gettempdir()))


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextmanager
def output_lock(folder: Path) -> Iterator[Path]:
    """Hold `folder` for one run: a second run into it fails at once with a one-line 'in use' error and changes
    nothing. Staging an interrupted run left there is swept once the lock is held. Re-entrant within a process."""
    folder = Path(folder).expanduser().absolute()
    if folder in _held:
        yield folder
        return
    if folder.exists() and not folder.is_dir():
        raise ParityError(f"output folder {folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ParityError(f"output folder {folder} is in use by another parity run{_holder(lock)}; wait for it "
                              "or choose another --out") from None
        raise
    _held[folder] = fd
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        sweep_locked(folder)
        sweep_step_temps()
        yield folder
    finally:
        del _held[folder]
        os.close(fd)


@contextmanager
def cache_lock(folder: Path, name: str) -> Iterator[None]:
    """Wait for exclusive use of one entry of a shared cache folder (e.g. one generated checkpoint), then sweep the
    temp files of dead processes there."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            sweep_dead(folder)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
