"""Helpers for the storage tests (punch holes, probe O_DIRECT, write files)."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

import numpy as np

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch_hole(path, offset: int, length: int) -> None:
    """fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) on [offset, offset + length)."""
    fd = os.open(path, os.O_RDWR)
    try:
        if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


def odirect_ok(d) -> bool:
    p = os.path.join(d, ".odirect-probe")
    with open(p, "wb") as f:
        f.write(b"\0" * 4096)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
        os.close(fd)
        return True
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    finally:
        os.unlink(p)



def make_file(path, data: np.ndarray) -> str:
    data.tofile(path)
    return str(path)
