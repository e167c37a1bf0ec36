"""A host's CRL files: each path holds the newest CRL this host has, whether it published it or copied it
from the database; a file is only ever replaced, by rename, by one with a higher CRL number.

The file's mtime is the CRL's thisUpdate, with the CRL number in the nanoseconds: Last-Modified and the
ETag that aiohttp derives from mtime and size are then the same on every host, and differ between two
issues made in the same second.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from pathlib import Path

from ca_core import crl as crl_core


def set_stamp(path: Path, this_update: dt.datetime, number: int) -> None:
    stamp = int(this_update.timestamp()) * 1_000_000_000 + number % 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def number_of(path: Path) -> int | None:
    """The CRL number of the file at ``path`` (None when there is none or it is not a CRL)."""
    try:
        with open(path, "rb") as f:
            return crl_core.read_info(lambda offset, size: os.pread(f.fileno(), size, offset)).number
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Between the processes of one host: one replacement at a time in a folder."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def install(tmp: Path, final: Path, number: int) -> bool:
    """Rename the complete, synced CRL file ``tmp`` to ``final`` unless ``final`` already holds a CRL
    numbered ``number`` or higher (then ``tmp`` is dropped): what a host serves never goes back.
    Returns whether it was installed."""
    with _folder_lock(final.parent):
        current = number_of(final)
        if current is not None and current >= number:
            os.unlink(tmp)
            return False
        os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return True
