"""Files written whole or not at all, and folders checked before they are written (no
TensorFlow here: programs import this before their flags are parsed)."""

from __future__ import annotations

import contextlib
import errno
import os

try:
    import fcntl
except ImportError:  # not on Windows: folders are then not locked
    fcntl = None


_TEMPORARY = ".tmp-"  # written_atomically's temporary name: <path>.tmp-<pid>


@contextlib.contextmanager
def written_atomically(path: str):
    """Yields a temporary name next to ``path``, moved over it when the block succeeds and
    removed when it fails (Ctrl-C included): readers never see a half-written file, and a
    failed run leaves no .tmp file behind. An OSError about the temporary name names ``path``
    instead: that is the name the user gave."""
    tmp = f"{path}{_TEMPORARY}{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        # A full disk fails the write or the close, whose OSError names no file.
        if isinstance(error, OSError) and error.filename in (tmp, None) and error.errno:
            raise type(error)(error.errno, error.strerror, path) from None
        raise


def killed_runs_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of ``written_atomically`` whose process is gone
    (killed before it could remove it)."""
    stem, found, pid = name.rpartition(_TEMPORARY)
    return bool(stem and found and pid.isdigit()) and process_gone(int(pid))


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (only this machine's are known: a
    name's pid from another host on a shared file system says nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        pass
    return False


def same_path(path: str, other: str | None) -> bool:
    """Whether ``path`` and ``other`` name one file or folder (links and "a/../b" resolved);
    False when ``other`` is empty."""
    return bool(other) and os.path.realpath(path) == os.path.realpath(other)


def file_in_the_way(path: str) -> str | None:
    """The file that stops a folder being made at ``path``: ``path`` itself or its nearest
    existing parent, when that is a file (absolute); None when the folder can be made (or
    exists). Checked before the work, the mkdir after it would fail with a bare errno."""
    probe = nearest_existing(path)
    return None if os.path.isdir(probe) else probe


def nearest_existing(path: str) -> str:
    """``path`` or its nearest parent that exists (absolute): what a mkdir of ``path`` meets."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


# A full disk, a quota, a read-only file system, no permission, a file past the file system's
# or the process's size limit (FAT32's 4 GiB, `ulimit -f`; Python ignores SIGXFSZ): the
# OSError of a write, often naming no file. Other errnos (EBADF, EMFILE, EINVAL, ...) are
# bugs, not the user's to mend.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                  errno.EFBIG)


def storage_error(error: Exception, path: str) -> OSError | None:
    """A write that failed for the file system, said in an error's text only (TensorFlow's
    file errors carry the text, not the errno), as the OSError Python would have raised,
    naming ``path``; None for any other error (re-raise that one)."""
    text = str(getattr(error, "message", None) or error)
    for number in STORAGE_ERRNOS:
        if os.strerror(number) in text:
            return OSError(number, os.strerror(number), path)
    return None


# The folders this process holds (their descriptors). A child forked meanwhile (the
# converter's pool replaces a worker that died by forking a new one) gets copies of them, and
# a copy holds the lock as long as the child lives, even after this process is killed: every
# forked child closes its copies at once.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for handle in _HELD:
        with contextlib.suppress(OSError):
            os.close(handle)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def held(folder: str) -> bool:
    """Whether this process holds ``folder``'s lock (``folder_held``; never on a file system
    that cannot lock a folder)."""
    with contextlib.suppress(OSError):
        here = os.stat(folder)
        return any(os.path.samestat(os.fstat(handle), here) for handle in _HELD)
    return False


def in_use(folder: str) -> bool:
    """Whether another process holds ``folder``'s lock (``folder_held``): a training or a
    conversion is writing into it now. False where folders cannot be locked."""
    return _locked_by_another(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def file_in_use(path: str) -> bool:
    """Whether another process holds the lock of the file ``path`` (``open_locked``). False
    when it does not exist, or where files cannot be locked."""
    return _locked_by_another(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO: no wait


def _locked_by_another(path: str, open_flags: int) -> bool:
    if fcntl is None:
        return False
    try:
        handle = os.open(path, open_flags)
    except OSError:
        return False
    try:
        # Shared and let go at once: a run starting in that instant could be refused as if
        # the path were in use, never the other way round.
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # cannot lock here (NFS): unknown, said as not in use
        return False
    finally:
        os.close(handle)
    return False


def open_locked(path: str, refusal: str) -> int:
    """A descriptor of the file ``path`` (made if missing), open for reading and writing and
    holding its exclusive lock until it is closed (the kernel lets go when the process ends,
    however it ends). Where files cannot be locked (NFS), it is returned unlocked.

    Raises:
      ValueError: ``refusal``, when another process holds the lock.
    """
    for _ in range(3):
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            return handle
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise ValueError(refusal) from None
        except OSError:  # as _lock: the run goes on unlocked rather than not at all
            return handle
        # The holder may have renamed or removed the file just before letting go: the lock
        # is then on a file no longer at ``path``.
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(handle), os.stat(path)):
                return handle
        os.close(handle)
    raise ValueError(refusal)


def _lock(folder: str, what: str) -> int | None:
    """A descriptor of ``folder`` holding its exclusive lock (None: the file system cannot
    lock a folder)."""
    handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise ValueError(f"{folder}: another {what} is writing into this folder (it is "
                         "locked); wait for it to end, or give another folder") from None
    except OSError:
        # A file system that cannot lock a folder: NFS emulates flock with POSIX locks, whose
        # exclusive kind needs a file open for writing (EBADF on a folder); others say ENOLCK
        # or EOPNOTSUPP. The run goes on unlocked, as before locks existed, rather than not
        # at all.
        os.close(handle)
        return None
    return handle


@contextlib.contextmanager
def folder_held(folder: str, what: str):
    """Makes ``folder`` if missing and holds an exclusive lock on it for the block, so that a
    second ``what`` (a training, a conversion) into the same folder is refused at its start:
    two at once overwrote each other's checkpoints, or deleted each other's staging folders,
    and both said they had succeeded or failed with tracebacks. The lock is the folder's own
    (flock on it: no lock file to leave behind), and the kernel drops it when the process
    ends, however it ends. A folder made here and still empty at the end (a failed run) is
    removed, before the lock is let go.

    Raises:
      ValueError: another process holds the folder (the message names it and ``what``).
    """
    folder = os.path.abspath(folder)
    created, handle = False, None
    for _ in range(3):
        created = created or not os.path.exists(folder)
        os.makedirs(folder, exist_ok=True)
        if fcntl is None:
            break
        handle = _lock(folder, what)
        if handle is None:
            break
        # The lock is on the folder that was opened: if a run that made it removed it (empty,
        # as it failed) just before letting go, the path now names another folder, or none.
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(handle), os.stat(folder)):
                break
        os.close(handle)
        handle = None
    else:
        raise ValueError(f"{folder}: the folder was removed and made again by other runs "
                         f"while this {what} started; try again")
    if handle is not None:
        _HELD.add(handle)
    try:
        yield folder
    finally:
        if created and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
        if handle is not None:
            _HELD.discard(handle)
            os.close(handle)
