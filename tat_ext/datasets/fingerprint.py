"""Fingerprints that say whether two runs saw the same data, wherever it lies.

A folder's fingerprint is its file count and a SHA-256 of the sorted list of (path relative to
the folder, size in bytes): moving or renaming the folder keeps it, adding, removing, renaming or
resizing a file changes it (reading every byte of an image folder would take minutes; a file
rewritten with the same size is not noticed). A single file (an npz) and in-memory arrays are
fingerprinted by a SHA-256 of their bytes.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable

import numpy as np

__all__ = ["of_arrays", "of_file", "of_files"]

_HEX = 16  # digits of the digest kept (64 bits: enough to tell data sets apart)


def of_files(root: str, paths: Iterable[str]) -> str:
    """``"<count> files, sha256 <hex>"`` of ``paths`` (inside ``root``), order-independent."""
    entries = sorted((os.path.relpath(p, root).replace(os.sep, "/"), os.path.getsize(p)) for p in paths)
    digest = hashlib.sha256()
    for rel, size in entries:
        digest.update(f"{rel}\0{size}\n".encode())
    return f"{len(entries)} files, sha256 {digest.hexdigest()[:_HEX]}"


def of_file(path: str) -> str:
    """``"sha256 <hex>"`` of the bytes of ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256 {digest.hexdigest()[:_HEX]}"


def of_arrays(*arrays: np.ndarray) -> str:
    """``"sha256 <hex>"`` of the arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return f"sha256 {digest.hexdigest()[:_HEX]}"
