"""Storage errors: each names the operation, the file and the byte range, and has a ``kind``."""
from __future__ import annotations

import errno as _errno
import os

from ggmk.errors import GgmkError
from ggmk.task import ALLOC_FAIL

__all__ = ["StorageError", "KINDS", "kind_of_errno", "from_oserror"]

#: error kinds, the keys of ``stats()["errors"]``
KINDS = ("not_found", "permission", "dest_too_small", "alloc_fail", "no_space", "file_too_large",
         "cancelled", "bad_request", "io")

_ERRNO_KIND = {
    _errno.ENOENT: "not_found", _errno.ENOTDIR: "not_found", _errno.EISDIR: "bad_request",
    _errno.EACCES: "permission", _errno.EPERM: "permission", _errno.EROFS: "permission",
    _errno.ENOSPC: "no_space", _errno.EDQUOT: "no_space", _errno.EFBIG: "file_too_large",
    _errno.ECANCELED: "cancelled", _errno.EBADF: "bad_request",
    _errno.ESPIPE: "bad_request",       # not a file (a FIFO, a socket): FileHandle refuses it
}


def kind_of_errno(e: int | None) -> str:
    return _ERRNO_KIND.get(e, "io")


class StorageError(GgmkError):
    """A storage operation failed. ``kind`` is one of :data:`KINDS`; ``op`` is ``read`` or
    ``write``; ``path``, ``offset``, ``length`` the request; ``errno`` the OS error number (or
    None); ``code`` a ggmk code where one applies (``ALLOC_FAIL`` for an arena that is full);
    ``written`` (a write or read that failed or was cancelled after it started): how many
    bytes from ``offset`` on reached the file (a write) or landed in the destination (a read)
    before it stopped (the message names every byte range that did), else None."""

    def __init__(self, kind: str, op: str, path, offset: int, length: int, detail: str,
                 errno: int | None = None, code: int | None = None,
                 written: int | None = None):
        self.kind = kind
        self.detail = detail
        self.written = written
        self.op = op
        self.path = os.fspath(path) if path is not None else None
        self.offset = int(offset)
        self.length = int(length)
        self.errno = errno
        self.code = ALLOC_FAIL if kind == "alloc_fail" and code is None else code
        super().__init__(f"{kind}: {op} {self.path} [{self.offset}, {self.offset + self.length}) "
                         f"({self.length} bytes): {detail}")


def from_oserror(e: OSError, op: str, path, offset: int, length: int, what: str = "") -> StorageError:
    k = kind_of_errno(e.errno)
    detail = f"{what}: " if what else ""
    detail += f"[Errno {e.errno}] {e.strerror or os.strerror(e.errno or 0)}"
    return StorageError(k, op, path, offset, length, detail, errno=e.errno)
