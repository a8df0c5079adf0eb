"""Files written whole or not at all, and folders checked before they are written (no
TensorFlow here: programs import this before their flags are parsed)."""

from __future__ import annotations

import contextlib
import os


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
