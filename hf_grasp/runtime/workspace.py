"""Where a run writes: its output directory (checked, locked, replaced atomically) and its scratch space.

Every path a run creates carries its owner's ``<pid>-<start time>`` tag
(:func:`owner_tag`), so a later run can tell a leftover of a killed run (owner
gone: removed) from the work of a live one (left alone):

* the output is checked before any work (:func:`check_output`) and locked for
  the run (:func:`claim_output`, a ``.NAME.lock`` beside it);
* the finished output is written to ``.NAME.tmp-<tag>-*`` beside it and renamed
  into place (:func:`staged`; files: :func:`write_atomically`, :func:`write_json`):
  every write-then-rename of the package goes through :func:`staged`;
* scratch files (the best fine-tuning state, evicted sources' downloads) live in
  one directory per process, ``<tempdir>/hf-grasp-runs-<uid>/<tag>/``
  (:func:`run_dir`), removed at exit;
* every name derived from the output (:func:`sibling`) fits the file system's
  limits, ``NAME`` shortened when it must be, or the output is refused up front.

SIGKILL runs no cleanup: whatever it leaves is swept by the next run that
claims the same output or opens a run directory.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import psutil
from filelock import FileLock, Timeout

from .errors import GraspError, flag
from .progress import log

#: name of a path owned by a process: ``<pid>-<start time, whole seconds>``
_TAG = r"(\d+)-(\d+)"
#: outputs this process holds the lock of: save_pretrained inside the CLI's claim must not lock again
_claimed: set[Path] = set()
#: this process's run directory (keyed by PID: a forked child gets its own)
_run_dirs: dict[int, Path] = {}
#: the longest suffix a name derived from an output takes: ``.tmp-<pid>-<start>-<8 random>``, for a 7-digit PID
#: (Linux's largest) and a 10-digit start time
_LONGEST_SUFFIX = len(".tmp-4194304-9999999999-") + 8
#: room kept for the longest file name a run writes inside the output or its work area (the longest now,
#: ``preprocessor_config.json``, has 24)
_LONGEST_INNER = 64


# --- owners -------------------------------------------------------------------------------------------------


def owner_tag() -> str:
    """This process's ``<pid>-<start>``; the start time tells a reused PID from the one that made a path."""
    me = psutil.Process()
    return f"{me.pid}-{int(me.create_time())}"


def owner_alive(pid: int, start: int) -> bool:
    """Whether the process that wrote tag ``<pid>-<start>`` still runs (a zombie does not)."""
    try:
        proc = psutil.Process(pid)
        # 2 s: the tag truncates to whole seconds
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - start) < 2
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another account's live process
        return True


def _sweep(directory: Path, pattern: str) -> None:
    """Remove the entries of ``directory`` whose name matches ``pattern`` (groups: pid, start) and whose owner
    is gone. Best effort: a path that cannot be removed is left for the next sweep."""
    if not directory.is_dir():
        return
    name = re.compile(pattern)
    for path in directory.iterdir():
        m = name.match(path.name)
        if m and not owner_alive(int(m[1]), int(m[2])):
            log.info("removing %s, left by a run that no longer exists", path)
            _remove(path)


def _remove(path: Path) -> None:
    """Remove a file or a directory tree if it is there; best effort (what stays is swept later)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


# --- scratch ------------------------------------------------------------------------------------------------


def _runs_root_path() -> Path:
    """``<tempdir>/hf-grasp-runs-<uid>``: per account, because a 0700 directory another account made first would
    lock everyone else out."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    return Path(tempfile.gettempdir()) / ("hf-grasp-runs" if uid is None else f"hf-grasp-runs-{uid}")


def _is_ours(directory: Path) -> bool:
    """A real directory of this account: one someone else made (or a symlink planted) is neither used nor swept."""
    st = directory.lstat()
    return stat.S_ISDIR(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def sweep_stale_runs() -> None:
    """Remove the run directories of processes that are gone (killed before their exit cleanup)."""
    root = _runs_root_path()
    if root.exists() and _is_ours(root):
        _sweep(root, rf"^{_TAG}$")


def run_dir() -> Path:
    """This process's scratch directory, made on first use and removed at interpreter exit.

    ``tempfile`` calls take it as ``dir=`` so that every scratch file of a run
    sits in one place a later run can sweep when this one was killed.
    """
    pid = os.getpid()
    if pid not in _run_dirs:
        sweep_stale_runs()
        root = _runs_root_path()
        root.mkdir(mode=0o700, exist_ok=True)
        if not _is_ours(root):
            raise GraspError(f"scratch directory {root} is not a directory of yours; remove it or set TMPDIR "
                             "elsewhere")
        path = root / owner_tag()
        path.mkdir(mode=0o700, exist_ok=True)
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _run_dirs[pid] = path
    return _run_dirs[pid]


# --- the output ---------------------------------------------------------------------------------------------


def _limits(path: Path) -> tuple[int, int]:
    """The file-name and path limits, in bytes, of the file system holding ``path`` (its nearest existing
    ancestor's); Linux's usual 255 and 4096 where the system does not say."""
    anchor = next((p for p in [path, *path.parents] if os.path.isdir(p)), None)  # isdir: never raises
    limits = []
    for key, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            limits.append(os.pathconf(anchor, key) or default)
        except (OSError, ValueError, TypeError, AttributeError):  # unknown key, no pathconf (Windows), no anchor
            limits.append(default)
    return limits[0], limits[1]


def _stem(out: Path) -> str:
    """``.NAME``, the start of every name derived from output ``NAME`` (temporary siblings, lock, resume area);
    when NAME is too long for them to fit the file system's name limit, a prefix of it and a hash of all of it,
    so that a legal name stays usable and two long names still get different locks."""
    stem, limit = f".{out.name}", _limits(out.parent)[0] - _LONGEST_SUFFIX
    if len(os.fsencode(stem)) <= limit:
        return stem
    digest = hashlib.sha256(os.fsencode(out.name)).hexdigest()[:12]
    prefix = os.fsencode(out.name)[:limit - len(digest) - 2].decode(errors="ignore")  # bytes: the limit's unit
    return f".{prefix}~{digest}"


def sibling(out: str | os.PathLike, suffix: str) -> Path:
    """The hidden sibling ``.NAME<suffix>`` of output ``NAME`` (``NAME`` shortened when it must be, see
    :func:`_stem`): every name derived from an output is built here, so it fits the file system's limits."""
    out = Path(out)
    return out.parent / f"{_stem(out)}{suffix}"


def temp_sibling(out: Path) -> Path:
    """A new hidden directory beside ``out`` to write it in before the rename: ``.NAME.tmp-<tag>-<random>``."""
    return Path(tempfile.mkdtemp(prefix=sibling(out, f".tmp-{owner_tag()}-").name, dir=out.parent))


def _temp_file(out: Path) -> Path:
    """A new empty file beside ``out``, named like :func:`temp_sibling`'s directories.

    Made with ``open(..., "x")`` rather than ``mkstemp``: the file, renamed into
    place, keeps the mode a plain write would give it (0666 less the umask),
    not mkstemp's 0600.
    """
    while True:
        path = sibling(out, f".tmp-{owner_tag()}-{secrets.token_hex(4)}")
        try:
            open(path, "xb").close()
            return path
        except FileExistsError:
            continue


def old_sibling(out: Path) -> Path:
    """Where the previous ``out`` goes between the two renames of an overwrite: ``.NAME.old-<tag>``."""
    return sibling(out, f".old-{owner_tag()}")


@contextlib.contextmanager
def staged(out: str | os.PathLike, *, file: bool = False, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling to write ``out`` in; renamed into place when the block ends cleanly, removed whatever
    happens otherwise. The one write-then-rename of the package: every output, cache entry and state file goes
    through it (or :func:`write_atomically`).

    A directory by default (:func:`temp_sibling`); with ``file`` an empty file
    to write (or overwrite) by path. An existing ``out`` is replaced only once
    the new one is complete: a file in one atomic ``os.replace``; a directory by
    two renames, the previous one put back if the swap is cut between them (a
    SIGTERM, say), so a failure or an interrupt never loses the previous output.
    Without ``replace`` an ``out`` that exists when the block ends (another
    process finished first) is kept and the new copy dropped.

    A Ctrl-C a library swallowed during the block
    (:func:`~hf_grasp.runtime.interrupts.raise_if_interrupted`) puts no
    directory in place; a file is put in place anyway, being a consistent state
    (a checkpoint worth resuming from). Leftovers of killed writers beside
    ``out`` are swept first. A run's output is held first (:func:`claim_output`).
    """
    from .interrupts import raise_if_interrupted

    out = Path(out)
    sweep_stale_siblings(out)
    tmp = _temp_file(out) if file else temp_sibling(out)
    try:
        yield tmp
        if file:
            if replace or not out.exists():
                os.replace(tmp, out)  # one step: a reader sees the old file or the new one, never a part
            return
        raise_if_interrupted()
        if out.exists():
            if not replace:
                return
            old = old_sibling(out)
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                if not out.exists():
                    old.rename(out)
                raise
            _remove(old)  # a directory, or the file an overwrite of a directory output replaces
        else:
            try:
                tmp.rename(out)
            except OSError:
                if replace or not out.exists():
                    raise  # else another process put its copy in place between the check and the rename
    finally:
        if tmp.exists():
            _remove(tmp)


def write_atomically(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (a str as UTF-8) to ``path`` through :func:`staged`, making its parent if missing: the file
    is either the old one or the new one, never half-written. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged(path, file=True) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (atomically, :func:`write_atomically`) and return the path.

    NaN/inf become ``null`` (strict JSON); numpy/torch scalars and paths are
    converted to plain values.
    """
    return write_atomically(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return _jsonable(obj.tolist())
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


def sweep_stale_siblings(out: Path) -> None:
    """Remove the ``.NAME.tmp-*`` / ``.NAME.old-*`` beside ``out`` that killed runs left."""
    _sweep(out.parent, rf"^{re.escape(_stem(out))}\.(?:tmp|old)-{_TAG}(?:-|$)")


def _local_path(ref) -> Path | None:
    """The path an input reference names on disk (``local-dir:`` or an existing path), else None (Hub ids)."""
    if ref is None:
        return None
    text = os.fspath(ref) if isinstance(ref, os.PathLike) else str(ref)
    if text.startswith("hf-hub:"):
        return None
    path = Path(text.removeprefix("local-dir:")).expanduser()
    return path if path.exists() else None


def _refuse_overlap(out: Path, shown: str, inputs: Iterable[tuple[str, object]]) -> None:
    """An output that is, is inside or contains an input would write into it or, with --overwrite, delete it."""
    from huggingface_hub import constants

    real = Path(os.path.realpath(out))
    named = [(f"{what} {ref}", _local_path(ref)) for what, ref in inputs]
    cache = Path(constants.HF_HUB_CACHE)  # where Hub sources live
    named.append((f"the Hugging Face cache {cache}", cache))
    for label, path in named:
        if path is None:
            continue
        other = Path(os.path.realpath(path))
        relation = ("is" if real == other else "is inside" if real.is_relative_to(other)
                    else "contains" if other.is_relative_to(real) else None)
        if relation:
            raise GraspError(f"output {shown} {relation} {label}, which a merge never writes to; "
                             f"choose an {flag('output', None)} outside every input")


def _refuse_cwd(out: Path, shown: str) -> None:
    """The current directory (or an ancestor of it) cannot be renamed into place, and --overwrite would delete
    the directory the user works in: refused with or without --overwrite."""
    real, cwd = Path(os.path.realpath(out)), Path.cwd().resolve()
    if real == cwd or cwd.is_relative_to(real):
        raise GraspError(f"output {shown} is the current directory or contains it, which writing the output would "
                         f"replace; pass a new subdirectory, e.g. {flag('output', None)} ./merged")


def _check_lengths(out: Path, shown: str) -> None:
    """Refuse an output one of whose names, or the longest path a run makes from it, exceeds the file system's
    limits (``pathconf`` of its nearest existing ancestor): found now, not as an OSError once the merge is done.

    Checked: each name of the output's path, and its temporary sibling holding
    a file (every name derived from the output fits by construction: :func:`_stem`).
    """
    name_max, path_max = _limits(out)
    for part in out.parts[1:]:
        if len(os.fsencode(part)) > name_max:
            raise GraspError(f"output {shown}: the name {part[:32]}... has {len(os.fsencode(part))} bytes, over the "
                             f"{name_max}-byte file-name limit of its file system; choose a shorter "
                             f"{flag('output', None)}")
    longest = len(os.fsencode(os.path.join(out.parent, _stem(out)))) + _LONGEST_SUFFIX + 1 + _LONGEST_INNER
    if longest >= path_max:  # PC_PATH_MAX counts the terminating NUL
        raise GraspError(f"output {shown}: its path has {len(os.fsencode(out))} bytes, and the files a merge writes "
                         f"in and beside it need up to {longest} with their names, over the {path_max - 1}-byte "
                         f"path limit of its file system; choose a shorter {flag('output', None)}")


def _remove_made(made: list[Path]) -> None:
    """Remove the directories a run made for its output (deepest first) while they are empty: a failed run
    leaves none behind, and a directory something else wrote into meanwhile is kept."""
    for directory in made:
        try:
            os.rmdir(directory)
        except OSError:
            return


def _check_parent(out: Path, shown: str) -> list[Path]:
    """Make ``out``'s parent if missing, then create and remove a file in it: the only test that a write will
    succeed (``os.access`` misses read-only mounts, ACLs and root's exemptions). Returns the directories it made,
    deepest first (removed again if the check fails)."""
    blocker = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise GraspError(f"output {shown}: {blocker} is a file, so no directory can be made under it; "
                         f"choose another {flag('output', None)}")
    made = [p for p in [out.parent, *out.parent.parents] if not os.path.lexists(p)]
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GraspError(f"output {shown}: cannot create {out.parent} ({e.strerror}); "
                             f"choose a writable location for {flag('output', None)}") from None
        try:
            with tempfile.NamedTemporaryFile(dir=out.parent, prefix=sibling(out, ".probe-").name):
                pass
        except OSError as e:
            raise GraspError(f"output {shown}: cannot write in {out.parent} ({e.strerror}); "
                             f"choose a writable location for {flag('output', None)}") from None
    except GraspError:
        _remove_made(made)
        raise
    return made


def check_output(output: str | os.PathLike, *, inputs: Iterable[tuple[str, object]] = (),
                 overwrite: bool = False) -> Path:
    """Refuse, before any work, an output the run could not or must not write; returns it as an absolute path.

    Refused: an existing file or symbolic link; the current directory or one
    of its ancestors; anything that is, is inside or contains one of
    ``inputs`` (``(what, reference)`` pairs: local directories among them
    are compared by real path; Hub ids are not paths) or the HF cache; an
    existing non-empty directory unless ``overwrite``; a location whose parent
    cannot be made or written; a name or path longer than its file system allows
    (:func:`_check_lengths`). Makes the parent directory if it is missing.
    """
    return _check_output(output, inputs=inputs, overwrite=overwrite)[0]


def _check_output(output: str | os.PathLike, *, inputs: Iterable[tuple[str, object]],
                  overwrite: bool) -> tuple[Path, list[Path]]:
    """:func:`check_output`, also returning the directories it made (deepest first)."""
    shown = os.fspath(output)
    out = Path(os.path.abspath(Path(output).expanduser()))  # abspath: "." and ".." get a name and a parent
    _check_lengths(out, shown)  # first: a name over the limit makes every stat below raise
    if out.is_symlink():
        raise GraspError(f"output {shown} is a symbolic link; pass the directory it points to or a new path")
    if out.exists() and not out.is_dir():
        raise GraspError(f"output {shown} is an existing file, not a directory; choose a directory for "
                         f"{flag('output', None)}")
    _refuse_cwd(out, shown)
    _refuse_overlap(out, shown, inputs)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GraspError(f"output {shown} exists and is not empty; pass {flag('overwrite')} to replace it")
    return out, _check_parent(out, shown)


def _lock_holder(path: Path) -> str:
    """The PID a lock file names (its holder writes it once it has the lock)."""
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "PID not yet written"


def _write_pid(fd: int) -> None:
    """Called by filelock once the lock is ours: record who holds it, for the message of the next run."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _acquire(out: Path, shown: str) -> FileLock | None:
    """Take ``.NAME.lock`` beside ``out`` without waiting, or refuse naming the holder.

    ``flock`` (filelock's native Unix lock) rather than an ``O_EXCL`` marker
    file: the kernel drops it when its holder dies, even by SIGKILL, so a stale
    lock is taken over at once and a reused PID can never look like a holder.
    None (and a warning) on a file system without ``flock``.
    """
    path = sibling(out, ".lock")
    for _ in range(3):  # a holder unlinks the file as it releases: retry on the fresh one
        lock = FileLock(path, blocking=False, on_acquired=_write_pid)
        try:
            lock.acquire()
            return lock
        except Timeout:
            if path.exists():
                raise GraspError(f"output {shown} is being written by another hf-grasp run ({_lock_holder(path)}); "
                                 f"wait for it to finish or choose another {flag('output', None)}") from None
        except OSError as e:
            if e.errno == errno.ENOSYS:
                log.warning("%s: the file system has no file locks; two runs on this output would not be stopped",
                            out.parent)
                return None
            raise GraspError(f"output {shown}: cannot create the lock {path} ({e.strerror}); "
                             f"choose a writable location for {flag('output', None)}") from None
    raise GraspError(f"output {shown}: its lock {path} keeps changing hands; try again")


def _release(lock: FileLock) -> None:
    """Remove the lock file while still holding it, then unlock: a run that opened the old file gets the lock on
    an unlinked file, which filelock sees (st_nlink 0) and retries on a fresh one, so no two runs hold it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock.lock_file)
    lock.release()


@contextlib.contextmanager
def claim_output(output: str | os.PathLike, *, inputs: Iterable[tuple[str, object]] = (),
                 overwrite: bool = False) -> Iterator[Path]:
    """:func:`check_output`, then hold the output's lock for the block; yields the absolute output path.

    Taking the lock also sweeps what killed runs left beside the output and in
    the scratch root. Re-entrant within a process: the CLI claims the output
    for the whole run and ``MergeResult.save_pretrained`` claims it again.
    The parent directories it made are removed again (once empty) when the
    block ends without the output in place.
    """
    out, made = _check_output(output, inputs=inputs, overwrite=overwrite)
    key = Path(os.path.realpath(out.parent)) / out.name  # one key however the path is spelled
    if key in _claimed:
        yield out
        return
    try:
        lock = _acquire(out, os.fspath(output))
    except BaseException:
        _remove_made(made)
        raise
    _claimed.add(key)
    try:
        sweep_stale_siblings(out)
        sweep_stale_runs()
        yield out
    finally:
        _claimed.discard(key)
        if lock is not None:
            _release(lock)  # first: its file sits in the first directory to remove
        if not os.path.lexists(out):
            _remove_made(made)
