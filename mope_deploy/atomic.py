"""Atomic writes that never lose a user's files.

Everything the toolchain writes (checkpoints, model directories, score tables, plans, reports, bundles) goes
through here: a temporary sibling ``.NAME.tmp-PID-XXXX``, fsync, ``os.replace``, then an fsync of the folder
(so the rename itself survives a power loss); a failure leaves nothing behind. Results get the usual permissions
(``mkstemp``/``mkdtemp`` would leave them private).

How to write an output folder (any package: exporting, sparsity, serve, ...)::

    from mope_deploy.atomic import Owner, atomic_dir, check_target

    MY_OUTPUT = Owner("sparse bundle", markers=[("sparse.json",)], allowed=("sparse.json", "*.onnx"))

    check_target(out, MY_OUTPUT, force=force)      # optional: refuse a bad --out before any work is spent
    with atomic_dir(out, owner=MY_OUTPUT, force=force) as tmp:
        (tmp / "sparse.json").write_text(...)       # write everything into tmp; it replaces ``out`` on success

The ownership rule (:func:`check_target`): ``out`` may be absent, an empty folder, or a folder this tool
wrote before, recognised by ``owner.markers`` (e.g. ``manifest.json`` for a bundle, ``config.json`` +
``model.safetensors`` for a model directory) and holding nothing outside ``owner.allowed``. Anything else
(a file, a symlink, a foreign or mixed folder) raises :class:`OutputPathError` saying what is there; only
``force=True`` (the CLI's ``--force``) replaces it.

Interrupted writes leave nothing behind: while a temporary path is live, SIGTERM and SIGINT remove it before
the process ends (SIGINT still raises ``KeyboardInterrupt``; SIGTERM still terminates). SIGKILL cannot be
caught: the next write of the same target removes stale ``.NAME.tmp-*`` siblings left by dead processes and
logs a warning saying so.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from .errors import MopeError

log = logging.getLogger(__name__)


class OutputPathError(MopeError, ValueError):
    """An output path that cannot be written, or whose current content the tool may not replace."""


@dataclass(frozen=True)
class Owner:
    """How to recognise a folder this tool wrote: ``kind`` names it in messages; ``markers`` lists alternative
    sets of top-level files (all files of one set present = ours); ``allowed`` (glob patterns of top-level
    names, None = anything) lists what such a folder may hold, so a user's own file inside it is never lost."""

    kind: str
    markers: Sequence[Sequence[str]] = ()
    allowed: Sequence[str] | None = None

    def recognises(self, names: set[str]) -> bool:
        return any(all(m in names for m in ms) for ms in self.markers)

    def foreign(self, names: set[str]) -> list[str]:
        if self.allowed is None:
            return []
        return sorted(n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in self.allowed))


#: Default owner: recognises nothing, so only an absent or empty folder is replaced. Writers of folders that
#: are rewritten in place pass their own Owner (models.files.model_dir_owner, bundle.BUNDLE_OWNER, ...).
NEW_ONLY = Owner("output")


# --------------------------------------------------------------------------------------------- ownership rule

def _describe(names: list[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check_target(target: str | Path, owner: Owner = NEW_ONLY, force: bool = False) -> None:
    """Refuse to write ``target`` unless it is absent, an empty folder, or a folder ``owner`` recognises
    (see the module docstring); ``force=True`` allows replacing anything. Also checks the parent is writable."""
    target = Path(target)
    _check_parent(target)
    if not os.path.lexists(target) or force:
        return
    how = "choose another --out, move it away, or pass --force to replace it"
    if target.is_symlink():
        raise OutputPathError(f"{target} is a symbolic link (to {os.readlink(target)}); mope does not replace "
                              f"links: {how}")
    if not target.is_dir():
        raise OutputPathError(f"{target} is an existing file, not a {owner.kind} folder; mope only replaces "
                              f"folders it wrote itself: {how}")
    try:
        names = {p.name for p in target.iterdir()}
    except OSError as e:
        raise OutputPathError(f"cannot read {target} ({e.strerror or e}); {how}") from None
    if not names:
        return
    if not owner.recognises(names):
        want = f" (a {owner.kind} folder holds {' or '.join(' + '.join(ms) for ms in owner.markers)})" \
            if owner.markers else ""
        raise OutputPathError(f"{target} already holds {_describe(sorted(names))}, which mope did not write{want}; "
                              f"mope only replaces folders it wrote itself: {how}")
    extra = owner.foreign(names)
    if extra:
        raise OutputPathError(f"{target} is a {owner.kind} folder but also holds {_describe(extra)}, which mope did "
                              f"not write and replacing the folder would delete; move it out first, or "
                              f"pass --force to replace the folder anyway")


def _check_parent(target: Path) -> None:
    """The nearest existing ancestor of ``target`` must be a writable folder (clear message, not an OSError)."""
    parent = target.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {target}: no permission to create files in {parent}")


def _os_error(target: Path, e: OSError) -> OutputPathError:
    where = e.filename or target
    return OutputPathError(f"cannot write {target}: {e.strerror or e} ({where}); choose an --out you can write to")


#: errnos that mean "no room": the disk (or a quota, or the file-size limit, RLIMIT_FSIZE) is full
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def no_room_cause(e: BaseException) -> OSError | None:
    """The out-of-space ``OSError`` behind ``e``: ``e`` itself, one in its cause/context chain (torch.save turns it
    into a RuntimeError raised while handling it), or an "os error N" a Rust library put in its message
    (safetensors); None when ``e`` is something else."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return e
        m = re.search(r"os error (\d+)", str(e)[:2000])
        if m and int(m.group(1)) in _NO_ROOM:
            return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
        e = e.__cause__ or e.__context__
    return None


class NoRoomError(OutputPathError):
    """A write that failed because the disk (quota, file-size limit) is full; names the output and the cause."""

    def __init__(self, target: Path, cause: OSError):
        self.target, self.cause = Path(target), cause
        super().__init__(f"cannot write {target}: {cause.strerror} ({errno.errorcode.get(cause.errno, '?')}); "
                         f"nothing was replaced, its previous content is unchanged: free disk space (or raise the "
                         f"file-size limit) and run the command again")


def _no_room(target: Path, e: BaseException, tmp: Path | None = None) -> None:
    """Raise :class:`NoRoomError` for ``target`` when ``e`` is a full disk (a file inside this write's temporary
    folder ``tmp`` is reported as ``target``, the output the user named); otherwise do nothing."""
    if isinstance(e, NoRoomError):
        if tmp is not None and (e.target == tmp or tmp in e.target.parents):
            raise NoRoomError(target, e.cause) from e
        return
    cause = None if isinstance(e, MopeError) else no_room_cause(e)
    if cause is not None:
        raise NoRoomError(target, cause) from e


# ------------------------------------------------------------------------------ live temporaries and signals

_live: dict[str, int] = {}                 # temporary path -> pid that created it
_previous: dict[int, object] = {}          # signal -> handler we replaced
_lock = threading.Lock()
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _on_signal(signum: int, frame) -> None:
    prev = _previous.get(signum, signal.SIG_DFL)
    mine = [p for p, pid in _live.items() if pid == os.getpid()]   # a forked worker must not touch them
    if prev is signal.SIG_IGN:
        return
    if callable(prev) and prev is not signal.default_int_handler:
        prev(signum, frame)                  # someone else's handler (e.g. a server's graceful shutdown) decides
        return
    for p in mine:                          # the process is about to end: remove what it had half written
        _remove(p)
        _live.pop(p, None)
    if prev is signal.default_int_handler:
        raise KeyboardInterrupt
    _restore_handlers()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)             # die of the signal as usual (exit status -SIG / 128+SIG)


def _restore_handlers() -> None:
    for s, h in list(_previous.items()):
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(s, h)
        _previous.pop(s, None)


@contextlib.contextmanager
def _live_temp(path: str) -> Iterator[None]:
    """Register ``path`` for removal on SIGTERM/SIGINT while the block runs (handlers only in the main thread)."""
    main = threading.current_thread() is threading.main_thread()
    with _lock:
        _live[path] = os.getpid()
        if main and not _previous:
            for s in _SIGNALS:
                with contextlib.suppress(ValueError, OSError):
                    _previous[s] = signal.getsignal(s)
                    signal.signal(s, _on_signal)
    try:
        yield
    finally:
        with _lock:
            _live.pop(path, None)
            if main and not any(pid == os.getpid() for pid in _live.values()):
                _restore_handlers()


# -------------------------------------------------------------------------------------- stale temporaries

def _process_start() -> float:
    """Wall-clock start time of this process (Linux /proc; elsewhere: when this module was imported)."""
    try:
        ticks = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                     if ln.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(target: str | Path) -> list[Path]:
    """Remove ``.NAME.tmp-*`` siblings of ``target`` left by an interrupted (killed) earlier write; returns them.

    A temporary named with a pid is stale when that process is gone; an older unnamed one when it predates
    this process. A live writer's temporary is never touched."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    started = _process_start()
    removed = []
    for p in target.parent.glob(f".{_glob_escape(target.name)}.tmp-*"):
        if str(p) in _live:
            continue
        rest = p.name[len(f".{target.name}.tmp-"):]
        pid = rest.split("-", 1)[0]
        try:
            if pid.isdigit() and "-" in rest:
                stale = int(pid) != os.getpid() and not _alive(int(pid))
            else:
                stale = p.lstat().st_mtime < started - 1
        except OSError:
            continue
        if stale:
            _remove(str(p))
            removed.append(p)
    if removed:
        log.warning("removed %d stale temporary %s left by an interrupted run: %s", len(removed),
                    "entry" if len(removed) == 1 else "entries", ", ".join(p.name for p in removed))
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


# ------------------------------------------------------------------------------------------------- writers

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


def fsync_dir(folder: str | Path) -> None:
    """fsync ``folder`` itself, so a file just created or renamed in it survives a power loss (a rename is only
    durable once its folder is). A no-op where the OS cannot open a folder (Windows) or sync one (EINVAL)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return                                  # Windows, or a folder we may write but not read: nothing to sync
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):   # a file system that cannot sync folders
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, sync_dir: bool = True) -> Iterator[Path]:
    """A temporary file name beside ``path`` for libraries that write by name (safetensors, onnx); on a clean
    exit it is fsynced and replaces ``path`` (files are always replaceable: callers write files inside folders
    they own, or paths the user named as the file to write), and the folder is fsynced. ``sync_dir=False``: a
    caller writing many files into one folder syncs it once itself (:func:`fsync_dir`)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise OutputPathError(f"cannot write the file {path}: it is an existing folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _os_error(path, e) from None
    with _live_temp(tmp):
        try:
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
            if sync_dir:
                fsync_dir(path.parent)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            _no_room(path, e)
            raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", sync_dir: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path, sync_dir) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, sync_dir: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb", sync_dir) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(target: str | Path, owner: Owner = NEW_ONLY, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``target`` (whole) only if the block succeeds.

    ``target`` must pass :func:`check_target` (checked before the block and again before replacing): absent,
    empty, or a folder ``owner`` recognises; ``force=True`` replaces whatever is there."""
    target = Path(target)
    check_target(target, owner, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
    except OSError as e:
        raise _os_error(target, e) from None
    with _live_temp(str(tmp)):
        try:
            yield tmp
            mask = _umask()
            os.chmod(tmp, 0o777 & ~mask)
            for p in tmp.rglob("*"):
                if not p.is_symlink():
                    os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
            check_target(target, owner, force)   # it may have changed during a long write
            _replace(tmp, target)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            _no_room(target, e, tmp)
            raise


def _replace(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``; whatever was at ``target`` (already checked replaceable) goes only after."""
    old = None
    if os.path.lexists(target):
        st = target.lstat()
        if stat.S_ISDIR(st.st_mode) and not any(target.iterdir()):
            target.rmdir()                      # an empty folder: nothing to keep
        else:
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)             # put the previous content back
        raise
    fsync_dir(target.parent)
    if old is not None:
        _remove(str(old))


# ------------------------------------------------------------------------------------- the output policy

#: The one sentence every command that writes shows for ``--force`` (cli/common.FORCE_HELP repeats it).
FORCE_POLICY = ("--out may be absent, an empty folder, or a folder mope wrote; anything else is refused, naming "
                "what is there. --force replaces it anyway, but only after the new output is complete and has "
                "passed its gates: a failed run leaves the old content byte-identical.")


@dataclass(frozen=True)
class Output:
    """Where a command writes, and whether it may replace what is there: the one output policy.

    ``Output(path, owner, force)``: :meth:`check` refuses a bad target before any work (see :func:`check_target`);
    :meth:`write` yields a temporary folder that replaces ``path`` whole, only when the block succeeds (so a
    gate that raises inside the block leaves the old content untouched, with or without ``force``)."""

    path: Path
    owner: Owner = NEW_ONLY
    force: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def check(self) -> "Output":
        check_target(self.path, self.owner, self.force)
        return self

    def write(self) -> contextlib.AbstractContextManager[Path]:
        return atomic_dir(self.path, self.owner, self.force)


# ----------------------------------------------------------------------------------------- output files

@dataclass(frozen=True)
class FileOwner:
    """How to recognise a single file this tool wrote (a score table, a results JSON, a plot): ``recognises``
    gets the file's bytes (files larger than ``max_bytes`` are never recognised)."""

    kind: str
    recognises: Callable[[bytes], bool]
    max_bytes: int = 256 << 20


def json_with(*keys: str) -> Callable[[bytes], bool]:
    """A recogniser: a JSON object holding every one of ``keys`` at its top level."""
    def recognises(data: bytes) -> bool:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return False
        return isinstance(obj, dict) and all(k in obj for k in keys)
    return recognises


def check_file_target(path: str | Path, owner: FileOwner, force: bool = False) -> None:
    """The output policy for a single file: ``path`` may be absent or a file ``owner`` recognises; a folder,
    a link or a user's file is refused (:class:`OutputPathError`) unless ``force``. Write it with
    :func:`atomic_file`, so a failed run leaves the old file byte-identical, ``force`` or not."""
    path = Path(path)
    _check_parent(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        raise OutputPathError(f"{path} is a folder; give the name of the {owner.kind} file to write")
    if force:
        return
    how = "choose another file name, move it away, or pass --force to replace it"
    if path.is_symlink():
        raise OutputPathError(f"{path} is a symbolic link; mope does not replace links: {how}")
    try:
        ours = path.stat().st_size <= owner.max_bytes and owner.recognises(path.read_bytes())
    except OSError as e:
        raise OutputPathError(f"cannot read {path} ({e.strerror or e}); {how}") from None
    if not ours:
        raise OutputPathError(f"{path} already exists and is not a {owner.kind} mope wrote; mope only replaces "
                              f"files it wrote itself: {how}")


# ------------------------------------------------------------------------------------------- work folders

#: The file that marks a work folder as created by mope (and so removable by mope).
WORK_MARKER = ".mope-work"


def claim_work_dir(path: str | Path, kind: str) -> Path:
    """Create (or reuse) a work folder the tool may later remove: absent -> created with :data:`WORK_MARKER`;
    present with the marker -> reused (a resumed run); anything else (a user's file or folder of that name) ->
    :class:`OutputPathError`, and nothing is touched."""
    path = Path(path)
    if os.path.lexists(path):
        if path.is_dir() and not path.is_symlink() and (path / WORK_MARKER).is_file():
            return path
        what = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else "a file"
        raise OutputPathError(f"{path} is {what} that mope did not create, but mope needs that name for its "
                              f"{kind} work folder; move it away (mope never deletes what it did not write)")
    _check_parent(path)
    try:
        path.mkdir(parents=True)
        atomic_write_text(path / WORK_MARKER, f"{kind}\n")
    except OSError as e:
        raise _os_error(path, e) from None
    return path


def is_work_dir(path: str | Path) -> bool:
    """True when ``path`` is a work folder :func:`claim_work_dir` created."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / WORK_MARKER).is_file()


def remove_work_dir(path: str | Path) -> bool:
    """Remove a work folder :func:`claim_work_dir` created; absent -> False; a folder without the marker is
    never removed (:class:`OutputPathError`)."""
    path = Path(path)
    if not os.path.lexists(path):
        return False
    if not is_work_dir(path):
        raise OutputPathError(f"{path} was not created by mope (no {WORK_MARKER} inside); mope never deletes what "
                              f"it did not write: move it away or delete it yourself")
    shutil.rmtree(path)
    return True
