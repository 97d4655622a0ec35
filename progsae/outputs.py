"""Claiming an output before a verb computes anything: locked, ours to write, writable, cleared of stale partial files.

A verb calls `claim_folder` (an SAE, a store, a run folder) or `claim_file` (a results JSON) at the top of
its run(). The claim
  - takes a lock (an flock on `.progsae-lock`, held until the process ends or `release_all`); a second
    process refuses at once naming the holder (pid, host, command); a lock whose holder died is free;
  - refuses a target that holds anything (another SAE, another run, a store, a file where a folder goes),
    naming it, unless --overwrite, which replaces only what progsae writes; a resumable verb (train,
    collect, reproduce) accepts a folder of its own kind and checks itself that it is the same job;
  - proves the location writable (the lock file is the first thing written) and removes the temporary
    files an interrupted atomic write left behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from progsae.errors import ProgsaeError

LOCK_FILE = ".progsae-lock"
PARTIAL_SUFFIX = ".partial"  # temporary files of atomic writes: .<name>.<random>.partial
# temporary files of atomic writes made before they carried PARTIAL_SUFFIX (mkstemp's 8 random characters)
_LEGACY_PARTIAL = re.compile(r"^\..+\.(json|jsonl|safetensors|png|md|html)\.[a-z0-9_]{8}$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_temp_file(path: Path) -> str:
    """An empty temporary file beside `path` (atomic writes fill it, then `follow_umask` it and rename it over `path`)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    os.close(fd)
    return tmp


def follow_umask(tmp: str) -> None:
    """Give a finished temporary file the mode an ordinary open() would (mkstemp, and writers that recreate the file, make it 0600)."""
    os.chmod(tmp, 0o666 & ~_umask())


def is_partial(name: str) -> bool:
    return name.startswith(".") and (name.endswith(PARTIAL_SUFFIX) or bool(_LEGACY_PARTIAL.match(name)))


def remove_partial_writes(folder: Path) -> int:
    """Delete what interrupted atomic writes left in a claimed folder and below; returns the count.

    A subfolder with its own lock file is another claim's (perhaps live) output and is left alone."""
    removed = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not (Path(root, d) / LOCK_FILE).exists()]
        for name in files:
            if is_partial(name):
                Path(root, name).unlink(missing_ok=True)
                removed += 1
    return removed


def remove_partial_writes_of(paths: tuple[Path, ...]) -> None:
    """Delete what interrupted atomic writes of these files left beside them (`.NAME.<random>.partial`)."""
    for path in paths:
        for p in path.parent.glob(f".{glob_escape(path.name)}.*"):
            if is_partial(p.name):
                p.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _command() -> str:
    """The command line as the user typed it (for the lock's holder line)."""
    if Path(sys.argv[0]).name in ("progsae", "__main__.py", "cli.py"):
        return shlex.join(["progsae", *sys.argv[1:]])
    return shlex.join(sys.argv)


# ---- the lock -----------------------------------------------------------------------------------
@dataclass
class _Lock:
    path: Path
    fd: int


_HELD: list[tuple[_Lock, list[Path]]] = []  # (lock, the folders this claim created, deepest first)


def _holder(lock_path: Path) -> str:
    try:
        h = json.loads(lock_path.read_text())
        return f"pid {h['pid']} on {h['host']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"


def _lock(lock_path: Path, target: Path) -> _Lock:
    """Take the flock on lock_path, or refuse naming its holder. A dead holder's flock is gone with it."""
    for _ in range(20):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            raise ProgsaeError(f"{target}: cannot write here ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ProgsaeError(f"{target}: cannot lock {lock_path.name} ({e.strerror})") from None
            raise ProgsaeError(f"{target} is in use by another progsae process ({_holder(lock_path)}); "
                               "wait for it to finish or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and our flock: try again
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return _Lock(lock_path, fd)
    raise ProgsaeError(f"{target}: could not take {lock_path.name} (it keeps changing)")


def _unlock(lock: _Lock) -> None:
    try:
        lock.path.unlink(missing_ok=True)  # while still holding it, so no one locks the removed file
    finally:
        os.close(lock.fd)


def release_all(failed: bool = False) -> None:
    """Release every lock this process took; after a failed run, undo a claim that left nothing behind."""
    while _HELD:
        lock, created = _HELD.pop()
        _unlock(lock)
        if failed:
            _remove_empty(created)


def _make_folder(path: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, deepest first (a failed claim removes them again)."""
    created = [p for p in [path, *path.parents] if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(created: list[Path]) -> None:
    for folder in created:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _is_secondary_rank() -> bool:
    """Under torchrun every rank runs the verb; rank 0 claims the output, the others only read it."""
    return os.environ.get("RANK", "0") != "0"


# ---- what a folder holds ------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


SAE_WEIGHTS = ("sae.safetensors", "sae_weights.safetensors", "ae.pt", "params.npz")  # progsae's and the formats it imports


def folder_kind(path: Path) -> str | None:
    """What a folder holds, if progsae writes such folders: 'study run', 'training run', 'SAE', 'activation store', or None."""
    study = _read_json(path / "config.json")
    if (path / "stages").is_dir() or (study is not None and {"data", "train", "eval"} <= set(study)):
        return "study run"
    if (path / "checkpoint").is_dir() or (path / "metrics.jsonl").exists():
        return "training run"
    if any((path / w).exists() for w in SAE_WEIGHTS) and any((path / c).exists() for c in ("cfg.json", "config.json")):
        return "SAE"
    meta = _read_json(path / "meta.json")
    if meta is not None and meta.get("format") == "progsae-activations":
        return "activation store"
    return None


def _contents(path: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if p.name != LOCK_FILE and not is_partial(p.name))


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _check_not_an_input(path: Path, inputs, is_file: bool) -> None:
    """Refuse an output that is one of the job's inputs, or (a folder) holds one: writing it would destroy what is read."""
    out = path.resolve()
    for given in inputs:
        if given is None:
            continue
        inp = Path(given).resolve()
        if inp == out or (not is_file and out in inp.parents) or (is_file and inp in out.parents and out.exists()):
            raise ProgsaeError(f"{path}: {'is' if inp == out else 'would replace a part of' if is_file else 'holds'} the input {given}; "
                               "choose another --out")


def _hold(lock_path: Path, target: Path, created, check) -> None:
    """Take the lock on `target` and run `check` holding it; if either fails, release the lock and remove
    the folders this claim created, so a refused claim leaves nothing behind."""
    lock = None
    try:
        lock = _lock(lock_path, target)
        check()
    except BaseException:
        if lock is not None:
            _unlock(lock)
        _remove_empty(created)
        raise
    _HELD.append((lock, created))


def claim_folder(path, verb: str, *, overwrite: bool = False, resumable: tuple[str, ...] = (), inputs=()) -> Path:
    """Lock the output folder `path` for `verb` and check it is ours to write (see the module docstring).

    `resumable` names the kinds of folder this verb continues (e.g. train: 'training run'); the verb then
    checks itself that the folder holds this same job. Any other non-empty folder is refused, unless
    --overwrite replaces a progsae output. `inputs` are paths the job reads: never an output."""
    path = Path(path)
    if _is_secondary_rank():
        return path
    _check_not_an_input(path, inputs, is_file=False)
    if path.exists() and not path.is_dir():
        raise ProgsaeError(f"{path}: is a file, and {verb} writes a folder here; choose another --out")
    try:
        created = _make_folder(path)
    except (FileExistsError, NotADirectoryError):
        raise ProgsaeError(f"{path}: a part of this path is a file, not a folder; choose another --out") from None
    except OSError as e:
        raise ProgsaeError(f"{path}: cannot create this folder ({e.strerror})") from None
    def check() -> None:
        _check_folder(path, overwrite, resumable)
        remove_partial_writes(path)

    _hold(path / LOCK_FILE, path, created, check)
    return path


def _check_folder(path: Path, overwrite: bool, resumable: tuple[str, ...]) -> None:
    """Raise unless the folder is empty, of a kind this verb resumes, or (--overwrite) a progsae output, which is cleared."""
    names = _contents(path)
    if not names:
        return
    kind = folder_kind(path)
    if kind is not None and kind in resumable and not overwrite:
        return  # the verb checks that it holds this same job
    what = {"SAE": "an SAE", "activation store": "an activation store"}.get(kind, f"a {kind}") if kind else "files"
    if not overwrite:
        raise ProgsaeError(f"{path}: already holds {what} ({_listing(names)}); choose another --out or pass --overwrite to replace it")
    if kind is None:
        raise ProgsaeError(f"{path}: holds files progsae did not write ({_listing(names)}); --overwrite replaces only "
                           "progsae outputs, so choose another --out")
    for p in path.iterdir():
        if p.name != LOCK_FILE:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()  # noqa: B018


def claim_file(path, *, overwrite: bool = False, what: str = "--out", inputs=(), companions: tuple[Path, ...] = ()) -> Path:
    """Lock an output file (beside it, `.NAME.progsae-lock`) and refuse to replace an existing one unless --overwrite.

    `companions` are files the verb writes beside it (e.g. results.replicates.safetensors), cleared of partial writes too."""
    path = Path(path)
    if _is_secondary_rank():
        return path
    _check_not_an_input(path, inputs, is_file=True)
    if path.is_dir():
        raise ProgsaeError(f"{path}: is a folder; {what} names a file")
    try:
        created = _make_folder(path.parent)
    except (FileExistsError, NotADirectoryError):
        raise ProgsaeError(f"{path}: a part of this path is a file, not a folder") from None
    except OSError as e:
        raise ProgsaeError(f"{path}: cannot create its folder ({e.strerror})") from None
    def check() -> None:
        if path.exists() and not overwrite:  # checked holding the lock, so a run that just finished is seen
            raise ProgsaeError(f"{path}: already exists; choose another {what} or pass --overwrite to replace it")
        remove_partial_writes_of((path, *map(Path, companions)))

    _hold(path.parent / f".{path.name}{LOCK_FILE}", path, created, check)
    return path
