"""Files written whole or not at all, and folders checked before they are written (no
TensorFlow here: programs import this before their flags are parsed)."""

from __future__ import annotations

import contextlib
import os

try:
    import fcntl
except ImportError:  # not on Windows: folders are then not locked
    fcntl = None


@contextlib.contextmanager
def written_atomically(path: str):
    """Yields a temporary name next to ``path``, moved over it when the block succeeds and
    removed when it fails (Ctrl-C included): readers never see a half-written file, and a
    failed run leaves no .tmp file behind. An OSError about the temporary name names ``path``
    instead: that is the name the user gave."""
    tmp = f"{path}.tmp-{os.getpid()}"
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


def file_in_the_way(path: str) -> str | None:
    """The file that stops a folder being made at ``path``: ``path`` itself or its nearest
    existing parent, when that is a file (absolute); None when the folder can be made (or
    exists). Checked before the work, the mkdir after it would fail with a bare errno."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return None if os.path.isdir(probe) else probe


@contextlib.contextmanager
def folder_held(folder: str, what: str):
    """Makes ``folder`` if missing and holds an exclusive lock on it for the block, so that a
    second ``what`` (a training, a conversion) into the same folder is refused at its start:
    two at once overwrote each other's checkpoints, or deleted each other's staging folders,
    and both said they had succeeded or failed with tracebacks. The lock is the folder's own
    (flock on it: no lock file to leave behind), and the kernel drops it when the process
    ends, however it ends. A folder made here and still empty at the end (a failed run) is
    removed.

    Raises:
      ValueError: another process holds the folder (the message names it and ``what``).
    """
    folder = os.path.abspath(folder)
    created = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"{folder}: another {what} is writing into this folder "
                                 "(it is locked); wait for it to end, or give another "
                                 "folder") from None
            except OSError:
                # A file system that cannot lock a folder: NFS emulates flock with POSIX
                # locks, whose exclusive kind needs a file open for writing (EBADF on a
                # folder); others say ENOLCK or EOPNOTSUPP. The run goes on unlocked, as
                # before locks existed, rather than not at all.
                pass
        yield folder
    finally:
        os.close(handle)
        if created and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
