"""Files the storage engine reads and writes: ``FileHandle`` (a file opened once, buffered and
O_DIRECT descriptors), the per-submission shared reference (``_FileRef``), read_batch's staged
opening of many paths (``_FastFiles``) and the path checks made before anything is opened."""
from __future__ import annotations

import errno as E
import fcntl
import os
import resource
import stat as _stat
import threading

import numpy as np

from ggmk.storage import fast as _fast
from ggmk.storage import gds as _gds
from ggmk.storage.buffers import ALIGN

_HAS_O_DIRECT = hasattr(os, "O_DIRECT")


def _not_a_file(mode: int) -> str | None:
    """What a file of this ``st_mode`` is, if storage must not use it (None: a regular file,
    a block device, or a directory, which fails with EISDIR on its first read as before)."""
    for test, what in ((_stat.S_ISFIFO, "a FIFO (named pipe)"), (_stat.S_ISSOCK, "a socket"),
                       (_stat.S_ISCHR, "a character device")):
        if test(mode):
            return what
    return None


def _open_file(path: str, flags: int, same: tuple | None = None) -> tuple[int, tuple]:
    """``os.open`` that never blocks on what is not a file: opened non-blocking (a FIFO's
    open would otherwise wait for a writer for ever), then refused with ESPIPE (kind
    ``bad_request``) unless it is a regular file, a block device or a directory; ``same``:
    the (st_dev, st_ino) it must be (a second descriptor of a file already open: refused if
    the path was replaced in between). Returns (fd, (st_dev, st_ino))."""
    fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
    try:
        st = os.fstat(fd)
        what = _not_a_file(st.st_mode)
        if what is not None:
            raise OSError(E.ESPIPE, f"not a regular file: {path} is {what}; storage reads and "
                                    f"writes regular files and block devices", path)
        ident = (st.st_dev, st.st_ino)
        if same is not None and ident != same:
            raise OSError(E.ESTALE, f"{path} was replaced while it was being opened", path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, ident


def _size_of(fd: int) -> int:
    """The size of an open file: ``st_size``, or a block device's size (its st_size is 0)."""
    st = os.fstat(fd)
    if _stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


def _path_size(path) -> int:
    """The size of the file at ``path`` (a block device's too, whose st_size is 0)."""
    st = os.stat(path)
    if not _stat.S_ISBLK(st.st_mode):
        return st.st_size
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return _size_of(fd)
    finally:
        os.close(fd)


class FileHandle:
    """An open file for storage I/O: a buffered descriptor and, where the file system accepts
    it, an ``O_DIRECT`` one (``direct_refused`` says why not). Reuse one across many requests
    (a batch of 4 KiB reads); a request naming a path opens and closes its own.

    Only regular files and block devices: a FIFO, a socket or a character device is refused
    at once with OSError ESPIPE (opened non-blocking, so a FIFO never blocks the open)."""

    def __init__(self, path, *, write: bool = False, create: bool = False,
                 o_direct: bool | str = "auto"):
        self.path = os.fspath(path)
        self.writable = write
        flags = os.O_CLOEXEC | (os.O_RDWR if write else os.O_RDONLY)
        self.fd, ident = _open_file(self.path, flags | (os.O_CREAT if create else 0))
        self.fd_direct = None
        self.direct_refused = None
        if o_direct is False:
            self.direct_refused = "disabled"
        elif not _HAS_O_DIRECT:
            self.direct_refused = "no_o_direct"
        else:
            try:
                self.fd_direct, _ = _open_file(self.path, flags | os.O_DIRECT, ident)
            except OSError as e:
                if e.errno in (E.EINVAL, E.EOPNOTSUPP):
                    self.direct_refused = "fs_refuses_o_direct"     # tmpfs, some FUSE, ...
                else:
                    os.close(self.fd)
                    raise
        self._gds = None
        self._gds_error = None
        self._lock = threading.Lock()
        self.closed = False
        self._users = 0                 # I/Os queued or running on it (see _acquire)
        self._fds_open = True

    def size(self) -> int:
        if not self._fds_open:
            raise OSError(E.EBADF, f"{self.path}: the FileHandle is closed")
        return _size_of(self.fd)

    def _acquire(self) -> bool:
        """One more I/O uses the descriptors (False if the handle is closed): until the
        matching :meth:`_release`, ``close`` defers closing them, so that a queued read never
        uses a descriptor number that a file opened meanwhile has been given."""
        with self._lock:
            if self.closed:
                return False
            self._users += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0 and self.closed and self._fds_open
            if last:
                self._fds_open = False
        if last:
            self._close_fds()

    def gds(self):
        with self._lock:
            if self._gds is None and self._gds_error is None:
                try:
                    self._gds = _gds.CuFile(self.fd_direct, self.path, self.writable)
                except Exception as e:  # noqa: BLE001
                    self._gds_error = e
            if self._gds is None:
                raise OSError(E.EOPNOTSUPP, f"GPUDirect Storage: {self._gds_error!r}")
            return self._gds

    def close(self) -> None:
        """Close the file. I/Os already queued or running on it still use it; its descriptors
        are closed when the last of them finishes (new requests on it fail with EBADF)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            now = self._users == 0 and self._fds_open
            if now:
                self._fds_open = False
        if now:
            self._close_fds()

    def _close_fds(self) -> None:
        if self._gds is not None:
            self._gds.close()
        for fd in (self.fd, self.fd_direct):
            if fd is not None:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"FileHandle({self.path!r}, write={self.writable}, "
                f"o_direct={self.fd_direct is not None})")


class _FileRef:
    """A file shared by the requests of one submission: opened once (in a worker), closed when
    the last of them finishes; a FileHandle passed in is never closed here."""

    def __init__(self, file, write: bool, create: bool, o_direct):
        self.given = isinstance(file, FileHandle)
        self.fh = file if self.given else None
        self.path = file.path if self.given else os.fspath(file)
        self.write, self.create, self.o_direct = write, create, o_direct
        self.users = 0
        self.error: OSError | None = None
        self._lock = threading.Lock()

    def get(self) -> FileHandle:
        with self._lock:
            if self.fh is None and self.error is None:
                try:
                    self.fh = FileHandle(self.path, write=self.write, create=self.create,
                                         o_direct=self.o_direct)
                except OSError as e:
                    self.error = e
            if self.error is not None:
                raise self.error
            return self.fh

    def acquire(self) -> bool:
        """One more request uses the file; False if it is a FileHandle already closed (its
        descriptors then stay in use until the last request releases it)."""
        if self.given and not self.fh._acquire():
            return False
        with self._lock:
            self.users += 1
        return True

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0 and not self.given and self.fh is not None:
                self.fh.close()
                self.fh = None
        if self.given:
            self.fh._release()


class _FastFiles:
    """The files of one :meth:`Storage.read_batch`, per entry of its ``file`` list: paths
    opened here (closed when their stage ends), a caller's FileHandles held (released when the
    batch ends); ``fd_d``/``fd_b`` the O_DIRECT / buffered descriptors (-1: none), ``size``
    the file's size, ``open_err``/``open_msg`` why it did not open, ``closed`` a caller's
    handle already closed, ``why`` (an index into ``why_reasons``) why O_DIRECT is not used.

    Stages: only the entries some read uses are opened, at most ``per_stage`` paths at once
    (each takes two descriptors): stage k opens the paths ranked [k * per_stage, (k + 1) *
    per_stage) among them (FileHandles are stage 0). ``order`` lists the reads stage by stage,
    ``bounds`` where each stage starts in it. ``release()`` gives back whatever is still open
    or held (a batch that ends, or one never started)."""

    def __init__(self, storage, files: list, paths: list, fids, per_stage: int):
        k = len(files)
        self.o_direct = storage.o_direct
        self.files, self.paths, self.fids = files, paths, fids
        self.fd_d = np.full(k, -1, np.int32)
        self.fd_b = np.full(k, -1, np.int32)
        self.size = np.zeros(k, np.int64)
        self.open_err = np.zeros(k, np.int32)
        self.open_msg: list = [None] * k
        self.closed = np.zeros(k, bool)
        self.why = np.zeros(k, np.int8)
        self.why_reasons: list = [None, "unaligned"]
        self.owned = False                 # handed to a FastBatch, which releases them
        self._closes: dict = {}            # entry -> close() of the path opened for it
        self._holds: list = []             # _release of each caller's FileHandle held
        used = np.zeros(k, bool)
        used[fids] = True
        self.used = used
        need = used & np.array([not isinstance(f, FileHandle) for f in files], bool)
        self.stage_of = np.where(need, (np.cumsum(need) - 1) // max(1, per_stage), 0)
        stage = self.stage_of[fids]
        nstages = int(stage.max()) + 1 if len(stage) else 1
        self.order = np.argsort(stage, kind="stable").astype(np.int64)
        self.bounds = np.searchsorted(stage[self.order], np.arange(nstages + 1)).tolist()

    def open_stage(self, k: int, batch=None) -> None:
        """Close stage k - 1's paths and open stage k's (stage 0: also hold the caller's
        FileHandles); with ``batch`` (a later stage, on a pool thread), plan its reads."""
        for e in [e for e in self._closes if self.stage_of[e] == k - 1]:
            self._closes.pop(e)()
        held: dict = {}
        for e in np.flatnonzero(self.used & (self.stage_of == k)).tolist():
            f = self.files[e]
            if isinstance(f, FileHandle):
                if id(f) not in held:
                    held[id(f)] = f._acquire()
                    if held[id(f)]:
                        self._holds.append(f._release)
                if not held[id(f)]:
                    self.open_err[e] = E.EBADF          # closed: refused, never read
                    self.closed[e] = True
                    continue
                fh = f
            else:
                try:
                    fh = FileHandle(self.paths[e], o_direct=self.o_direct)
                except OSError as ex:
                    self.open_err[e] = ex.errno or E.EIO
                    self.open_msg[e] = ex.strerror
                    continue
                self._closes[e] = fh.close
            try:
                self.size[e] = _size_of(fh.fd)
            except OSError as ex:
                self.open_err[e] = ex.errno or E.EIO
                self.open_msg[e] = f"fstat: {ex.strerror}"
                continue
            self.fd_b[e] = fh.fd
            if fh.fd_direct is not None and self.o_direct is not False:
                self.fd_d[e] = fh.fd_direct
            elif self.o_direct is not False:
                self.why_reasons.append(fh.direct_refused or "no_o_direct")
                self.why[e] = len(self.why_reasons) - 1
        if batch is not None:
            sel = self.order[self.bounds[k]:self.bounds[k + 1]]
            batch._plan(sel, *self.plan(sel, batch.offsets, batch.lengths,
                                        batch.dest.address(0) + batch.dest_offsets))

    def plan(self, sel, offs, lens, addr):
        """For the reads ``sel`` (indexes) whose files are open: (why refused: an _R_ code
        or 0, O_DIRECT fd or -1, buffered fd, why not O_DIRECT: an index into why_reasons,
        how many bytes O_DIRECT may land straight in the destination)."""
        f = self.fids[sel]
        o, ln, a = offs[sel], lens[sel], addr[sel]
        code = np.zeros(len(sel), np.int8)
        code[self.closed[f]] = _fast._R_CLOSED
        code[(code == 0) & (self.open_err[f] != 0)] = _fast._R_OPEN
        fdd = self.fd_d[f]
        aligned = (o % ALIGN == 0) & (ln % ALIGN == 0) & (a % ALIGN == 0)
        why = np.where(fdd < 0, self.why[f], np.where(aligned, 0, 1)).astype(np.int8)
        fdd = np.where(why == 0, fdd, -1).astype(np.int32)
        if self.o_direct is True:
            code[(code == 0) & (why != 0)] = _fast._R_NODIRECT
        # O_DIRECT straight into the destination only over the whole blocks before the end of
        # the file: the block that holds the end would be written whole (zeros past the end)
        caps = np.clip((self.size[f] - np.maximum(o, 0)) // ALIGN * ALIGN, 0,
                       np.maximum(ln, 0))
        return code, fdd, self.fd_b[f], why, np.where(fdd >= 0, caps, ln)

    def release(self) -> None:
        closes, self._closes = list(self._closes.values()), {}
        holds, self._holds = self._holds, []
        for rel in closes + holds:
            try:
                rel()
            except OSError:
                pass


def _files_per_stage() -> int:
    """How many paths one read_batch opens at once (two descriptors each): an eighth of the
    soft descriptor limit, so a batch over thousands of files never runs out (EMFILE)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 20
    return max(4, min(4096, soft // 8))


def _checked_path(f, name: str):
    """The path of ``f`` (a FileHandle or a path), or TypeError / ValueError naming ``name``
    and the value: checked before anything is opened."""
    if isinstance(f, FileHandle):
        return f.path
    try:
        p = os.fspath(f)
    except TypeError:
        raise TypeError(f"{name}: expected a path or FileHandle, got {type(f).__name__} "
                        f"{f!r}") from None
    if ("\0" if isinstance(p, str) else b"\0") in p:
        raise ValueError(f"{name}: the path {p!r} contains a NUL byte (no file name can)")
    return p
