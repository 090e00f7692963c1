"""Crash-safe files of a run directory.

Every file is replaced atomically: written to a temporary file in the same directory, flushed and
fsync'ed, renamed over the old one with ``os.replace``, and the directory fsync'ed so the rename
itself survives a power loss. A crash at any moment leaves either the old or the new file, plus at
most a stray temporary (``.<name>.tmp-<pid>``) that :func:`remove_stale_temporaries` cleans up.
"""
from __future__ import annotations

import glob
import os
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "fsync_dir", "remove_stale_temporaries"]

_TMP_MARK = ".tmp-"


def fsync_dir(path: str) -> None:
    """fsync a directory (makes a rename in it durable; a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` with what ``write(file)`` writes, atomically (see the module docstring).

    If ``write`` raises, the temporary is removed and ``path`` is untouched.
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def remove_stale_temporaries(directory: str, names) -> None:
    """Delete temporaries of ``names`` that a killed process left in ``directory``."""
    for name in names:
        for tmp in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}{_TMP_MARK}*")):
            try:
                os.remove(tmp)
            except OSError:
                pass
