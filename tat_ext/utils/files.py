"""Crash-safe output files.

Every file is replaced atomically: written to a temporary file in the same directory
(``.<name>.tmp-<random>``), flushed and fsync'ed, given its mode, renamed over the old one with
``os.replace``, and the directory fsync'ed so the rename itself survives a power loss. A crash at
any moment leaves either the old or the new file, plus at most a stray temporary that
:func:`remove_stale_temporaries` cleans up. When the write fails (e.g. the disk is full) the
temporary is removed and the old file is untouched.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Any, BinaryIO, Callable, Iterable, Optional

from tat_ext.errors import UserError

__all__ = ["atomic_write", "check_writable_file", "ensure_writable_dir", "fsync_dir", "remove_stale_temporaries",
           "write_json_atomic", "write_text_atomic"]

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


class _RecordingWriter:
    """A binary file that remembers the OSError of a failed write: serializers such as
    ``torch.save`` turn it into their own error ("unexpected pos ..."), which names neither the
    file nor the cause."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self._file.flush()

    def __getattr__(self, name: str) -> Any:  # tell, seek, fileno, ...: the file's own
        return getattr(self._file, name)


def atomic_write(path: str, write_fn: Callable[[BinaryIO], None], *, mode: int = 0o644) -> None:
    """Replace ``path`` with what ``write_fn(file)`` writes to a binary file, atomically (see
    the module docstring); the file gets permission bits ``mode``.

    Raises:
        OSError: the file could not be written (the OS error of the failed write, also when
            ``write_fn`` reported it as another exception); ``path`` is untouched then.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}{_TMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            try:
                write_fn(writer)
            except Exception:
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def write_text_atomic(path: str, text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` (UTF-8), atomically."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data), mode=mode)


def write_json_atomic(path: str, payload: Any, *, indent: Optional[int] = 1) -> None:
    """Replace ``path`` with ``payload`` as JSON (NaN and infinities allowed), atomically."""
    write_text_atomic(path, json.dumps(payload, indent=indent, allow_nan=True) + "\n")


def remove_stale_temporaries(directory: str, names: Iterable[str]) -> None:
    """Delete temporaries of ``names`` that a killed process left in ``directory``."""
    for name in names:
        for tmp in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}{_TMP_MARK}*")):
            try:
                os.remove(tmp)
            except OSError:
                pass


def ensure_writable_dir(path: str, argument: str = "--out") -> str:
    """Create the directory ``path`` if needed and prove it writable now, before any long work
    starts; returns its absolute path.

    Raises:
        UserError: it cannot be created (e.g. it lies under a file) or written (named by ``argument``).
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(argument, f"cannot write to {path!r}: {error.strerror or error}") from None
    return os.path.abspath(path)


def check_writable_file(path: str, argument: str) -> str:
    """The file's folder must exist and be writable (the file itself is written atomically later);
    returns its absolute path.

    Raises:
        UserError: ``path`` is a directory, or its folder is missing or not writable.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(argument, f"{path!r} is a directory, expected a file path")
    if not os.path.isdir(folder):
        raise UserError(argument, f"cannot write {path!r}: folder {folder!r} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(argument, f"cannot write {path!r}: {error.strerror or error}") from None
    return os.path.abspath(path)
