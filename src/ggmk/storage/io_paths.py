"""The storage engine's per-I/O paths (a mixin of :class:`ggmk.storage.engine.Storage`): one
I/O started and planned (direct, bounce, buffered or GPUDirect; its regions and holes),
reading (pread, chunked and sequential reads, bounce copies, cuFile) and writing."""
from __future__ import annotations

import errno as E
import os

import numpy as np

from ggmk.storage import fast as _fast
from ggmk.storage import gds as _gds
from ggmk.storage.buffers import (ALIGN, DONE, INLINE_COPY, BouncePool, ThreadCopy, align_down,
                                  align_up)
from ggmk.storage.dest import Destination
from ggmk.storage.errors import StorageError
from ggmk.storage.files import FileHandle, _size_of
from ggmk.storage.requests import _Cancelled, _Io
from ggmk.storage.states import BLOCK_SIZE, BlockState as BS, IoState as S


class IoPaths:
    """One I/O's read and write paths (mixed into ``Storage``)."""

    # ------------------------------------------------------------------ one I/O
    def _start(self, io: _Io) -> None:
        if not io.cell.to_if((S.READY,), S.IN_PROGRESS):     # cancelled while queued
            self._finalize(io)
            return
        io.started = True
        self.stats_.start()
        try:
            fh = io.fref.get()
            segs = self._plan_read(io, fh) if io.op == "read" else self._plan_write(io, fh)
        except OSError as e:
            io.fail(io.make_os_error(e, "open" if io.fref.fh is None else ""))
            segs = []
        except StorageError as e:
            io.fail(e)
            segs = []
        if not segs:
            self._finalize(io)
            return
        io.segs_left = len(segs)
        if len(segs) > 1:
            with self._cond:
                for s in reversed(segs[1:]):
                    self._work.appendleft(("seg", io, s))
                self._cond.notify_all()
        self._run_seg(io, segs[0])

    def _run_seg(self, io: _Io, seg) -> None:
        try:
            io.check()
            fh = io.fref.fh
            if io.op == "read":
                self._read_seg(io, fh, seg)
            else:
                self._write_seg(io, fh, seg)
        except _Cancelled:
            pass
        except StorageError as e:
            io.fail(e)
        except OSError as e:
            io.fail(io.make_os_error(e, f"at file offset {getattr(e, 'ggmk_pos', '?')}"))
        except Exception as e:  # noqa: BLE001
            io.fail(io.make_error("io", f"{type(e).__name__}: {e}"))
        with io.lock:
            io.segs_left -= 1
            last = io.segs_left == 0
        if last:
            self._finalize(io)

    def _engine_for(self, dest: Destination):
        """(copy engine, bounce pool) for a destination / source."""
        if dest.host_addressable:
            return INLINE_COPY, self._pool
        with self._elock:
            if dest.target == "cuda":
                if self._cuda_copy is None:
                    self._cuda_copy = _gds.CudaCopy()
                    self._pinned_pool = BouncePool(self.bounce_size, self.bounce_count,
                                                   alloc=_gds.pinned_alloc)
                return self._cuda_copy, self._pinned_pool
            if self._thread_copy is None:
                self._thread_copy = ThreadCopy()
            return self._thread_copy, self._pool

    def _choose_direct(self, io: _Io, fh: FileHandle, want: bool, reason: str | None = None):
        """Use O_DIRECT for this I/O? Records the fallback (counted) when it cannot."""
        if self.o_direct is False:
            return False
        if fh.fd_direct is not None and want:
            return True
        why = reason or fh.direct_refused or "unaligned"
        if self.o_direct is True:
            raise io.make_error("bad_request", f"O_DIRECT required but not possible ({why})")
        io.result.fallback = why
        self.stats_.fallback(why)
        return False

    def _gds_ok(self, io: _Io, fh: FileHandle) -> bool:
        """GPUDirect Storage for this CUDA I/O? (else the bounce path; a failure to register
        the file is counted as a fallback, not hidden)."""
        if not self.gds_mode or not _gds.available()[0]:
            return False
        try:
            fh.gds()
            return True
        except OSError:
            if self.gds_mode is True:
                raise
            self.stats_.fallback("gds_register_failed")
            io.result.fallback = "gds_register_failed"
            return False

    def _plan_read(self, io: _Io, fh: FileHandle) -> list:
        r = io.result
        size = fh.size()
        off, end = io.offset, io.offset + io.length
        limit = min(end, size)
        io.limit = limit
        io.blocks.move_all(BS.INIT)
        if limit <= off:
            return []                                   # at or past EOF: a short read of 0
        regions = self._regions(io, fh, off, limit)
        dest = io.dest
        if dest.kind == "device" and dest.target == "cuda" and self._gds_ok(io, fh):
            r.io_path = "gds"
            io.direct = fh.fd_direct is not None
        elif dest.host_addressable:
            io.direct = self._choose_direct(io, fh, True)
            if io.direct:
                congruent = (dest.address(io.dest_off) - off) % ALIGN == 0
                r.io_path = "direct" if congruent else "bounce"
            else:
                r.io_path = "buffered"
        else:
            io.direct = self._choose_direct(io, fh, True)
            r.io_path = "bounce"
        r.o_direct = io.direct
        io.engine, io.pool = self._engine_for(dest)
        if r.io_path == "direct":
            return [regions]          # one segment: the fast pool reads its chunks in parallel
        return self._segments(io, regions)

    def _regions(self, io: _Io, fh: FileHandle, off: int, limit: int) -> list:
        r = io.result
        if not self.sparse:
            out = [(off, limit, "data")]
        else:
            out, pos = [], off
            try:
                while pos < limit:
                    try:
                        d = os.lseek(fh.fd, pos, os.SEEK_DATA)
                    except OSError as e:
                        if e.errno != E.ENXIO:
                            raise
                        # no data after pos: a hole to the end of the file, which may have
                        # been cut since it was sized (truncated: a short read, not zeros)
                        d = limit = io.limit = min(limit, max(pos, _size_of(fh.fd)))
                    d = min(d, limit)
                    if d > pos:
                        out.append((pos, d, "hole"))
                    if d >= limit:
                        break
                    h = min(os.lseek(fh.fd, d, os.SEEK_HOLE), limit)
                    out.append((d, h, "data"))
                    pos = h
            except OSError as e:
                if e.errno not in (E.EINVAL, E.EOPNOTSUPP, E.ENOTSUP, E.ESPIPE):
                    raise
                out = [(off, limit, "data")]      # no hole support: dense read
                r.dense_fallback = True
        for a, b, kind in out:
            if kind == "hole":
                r.holes += 1
                r.hole_bytes += b - a
            else:
                r.data_regions += 1
        if len(r.regions) < 4096:
            r.regions = [(a, b - a, k) for a, b, k in out[:4096]]
        return out

    def _segments(self, io: _Io, regions) -> list:
        """Split regions into segments of about ``segment_size`` bytes, cut at the I/O's block
        boundaries (so no two segments share a destination block)."""
        size = self.segment_size
        segs, cur, cur_n = [], [], 0
        for a, b, kind in regions:
            pos = a
            while pos < b:
                cut = min(b, pos + (size - cur_n))
                full = cut < b
                if full:              # round the cut up to a block boundary of the I/O
                    rel = cut - io.offset
                    cut = min(b, io.offset + -(-rel // BLOCK_SIZE) * BLOCK_SIZE)
                cur.append((pos, cut, kind))
                cur_n += cut - pos
                pos = cut
                if full or cur_n >= size:
                    segs.append(cur)
                    cur, cur_n = [], 0
        if cur:
            segs.append(cur)
        return segs

    # ------------------------------------------------------------------ reading
    def _hook(self, io: _Io, pos: int) -> None:
        if self.chunk_hook is not None:
            self.chunk_hook(io.index, pos)
        io.check()

    def _read_seg(self, io: _Io, fh: FileHandle, seg) -> None:
        fences = []
        holes = []
        first, last = io.blk(seg[0][0]), io.blk_up(seg[-1][1])
        try:
            if io.result.io_path == "direct":
                self._read_seq(io, fh, seg, fences, holes)
                return
            for a, b, kind in seg:
                if kind == "hole":
                    fences.append((io.engine.zero(io.dest, io.dest_off + a - io.offset, b - a),
                                   a, b))
                    holes.append((io.blk_up(a), io.blk(b) if b < io.limit else io.blk_up(b)))
                    continue
                path = io.result.io_path
                if path == "gds":
                    self._read_gds(io, fh, a, b)
                elif path == "buffered" and io.dest.host_addressable:
                    self._read_into(io, fh, False, a, b)
                else:
                    self._read_bounce(io, fh, io.direct, a, b, fences)
                if io.short_at is not None:
                    break
        finally:
            err = None
            for f, a, b in fences:               # (copy or zero fill, the file range it lands)
                try:
                    f.wait()
                except BaseException as e:  # noqa: BLE001
                    err = err or e
                else:
                    io.wrote(a, b)
            bl = io.blocks
            if err is not None:
                bl.advance(first, last, BS.DMA_START, BS.DMA_ERROR)
                io.fail(io.make_error("io", f"copy to {io.dest.describe()} failed: {err!r}"))
            else:
                bl.advance(first, last, BS.DMA_START, BS.DONE)
                for h0, h1 in holes:
                    bl.advance(h0, h1, BS.INIT, BS.DONE)

    def _pread(self, io: _Io, fh: FileHandle, direct: bool, buf: np.ndarray, pos: int) -> int:
        fd = fh.fd_direct if direct else fh.fd
        try:
            return os.preadv(fd, [buf], pos)
        except OSError as e:
            if direct and e.errno == E.EINVAL:     # the fs refused this alignment after all
                if io.result.fallback is None:
                    io.result.fallback = "read_einval"
                    self.stats_.fallback("read_einval")
                return os.preadv(fh.fd, [buf], pos)
            e.ggmk_pos = pos
            raise

    def _queue_blocks(self, io: _Io, a: int, b: int) -> None:
        bl = io.blocks
        f, l_ = io.blk(a), io.blk_up(b)
        bl.advance(f, l_, BS.INIT, BS.QUEUED)
        bl.advance(f, l_, BS.QUEUED, BS.DMA_START)

    def _read_chunks(self, io: _Io, a: int, b: int, read) -> None:
        """[a, b) in chunks of ``direct_chunk``: ``read(pos, n)`` returns the bytes read; a
        short one ends the I/O (end of file) and is recorded; the hook runs between chunks."""
        pos = a
        while pos < b:
            n = min(self.direct_chunk, b - pos)
            self._queue_blocks(io, pos, pos + n)
            got = read(pos, n)
            io.wrote(pos, pos + got)
            pos += got
            if got < n:
                io.mark_short(pos)
                return
            self._hook(io, pos)

    def _read_into(self, io: _Io, fh: FileHandle, direct: bool, a: int, b: int) -> None:
        """Reads straight into a host destination (no copy)."""
        base = io.dest_off - io.offset
        self._read_chunks(io, a, b, lambda pos, n: self._pread(
            io, fh, direct, io.dest.view(base + pos, n), pos))

    def _read_seq(self, io: _Io, fh: FileHandle, seg, fences, holes) -> None:
        """The ``direct`` path (host memory whose address agrees with the file offset modulo
        4096): the aligned part of every data region is cut into ``seq_chunk`` chunks that the
        fast pool reads with O_DIRECT straight into the destination, ``seq_depth`` at once
        (:class:`~ggmk.storage.fast.ChunkJob`); meanwhile this thread zero-fills the holes
        and reads the unaligned head and tail (under 4 KiB each) through a bounce buffer.
        Results per chunk: the lowest failing chunk fails the I/O (naming its file offset),
        the lowest short one ends it (end of file)."""
        base = np.uint64(io.dest.address(io.dest_off))   # the address of file offset io.offset
        edges, offs, lens = [], [], []
        step = self.seq_chunk
        for a, b, kind in seg:
            if kind == "hole":
                continue
            ha = min(align_up(a), b)
            mb = max(ha, align_down(b))
            if a < ha:
                edges.append((a, ha))
            if ha < mb:
                starts = np.arange(ha, mb, step, dtype=np.int64)
                offs.append(starts)
                lens.append(np.minimum(starts + step, mb) - starts)
            if mb < b:
                edges.append((mb, b))
        offs = np.concatenate(offs) if offs else np.zeros(0, np.int64)
        lens = np.concatenate(lens) if lens else np.zeros(0, np.int64)
        bl = io.blocks
        chunks = list(zip(offs.tolist(), (offs + lens).tolist()))
        for c0, c1 in chunks:
            bl.advance(io.blk(c0), io.blk_up(c1), BS.INIT, BS.QUEUED)
        io.cancel_flag = np.zeros(1, np.int32)
        io.check()                               # cancelled before the flag existed
        # offsets from the I/O's start, never negative (an address less the file offset could
        # be, past 2**47, and not fit a uint64)
        job = _fast.ChunkJob(fh.fd_direct, fh.fd, offs, lens,
                             base + (offs - io.offset).astype(np.uint64), io.cancel_flag)
        if len(chunks) and not self._fast.dispatch(job, self.seq_depth):
            # close() ran from a callback with this read still queued: this worker finishes
            # the queue, so it reads the chunks itself rather than start the pool again
            job._work()
        edge_error: BaseException | None = None
        try:
            for a, b, kind in seg:               # holes and edges while the chunks run
                if kind == "hole":
                    fences.append((io.engine.zero(io.dest, io.dest_off + a - io.offset, b - a),
                                   a, b))
                    holes.append((io.blk_up(a), io.blk(b) if b < io.limit else io.blk_up(b)))
            for a, b in edges:
                if io.check_quiet():
                    break
                self._read_bounce(io, fh, True, a, b, fences)
        except BaseException as e:  # noqa: BLE001 - raised after the chunks are accounted
            edge_error = e
            io.cancel_flag[0] = 1
        # then read the chunks no pool thread took yet here: the pool's threads may all be in
        # callbacks that wait for this very read (fast_threads=1, a read from on_done)
        job._work()
        job.wait()
        got, err = job.got.tolist(), job.err.tolist()
        first_err = first_short = None
        for k, (c0, c1) in enumerate(chunks):
            e = err[k]
            if e < 0:
                continue                         # not started (cancelled / after a failure)
            io.wrote(c0, c0 + got[k])            # a failed chunk's bytes before the error too
            f, l_ = io.blk(c0), io.blk_up(c1)
            bl.advance(f, l_, BS.QUEUED, BS.DMA_START)
            if e == 0:
                bl.advance(f, io.blk_up(c0 + got[k]), BS.DMA_START, BS.DONE)
                if got[k] < c1 - c0 and first_short is None:
                    first_short = c0 + got[k]
            elif first_err is None:
                first_err = k
            bl.advance(f, l_, BS.DMA_START, BS.DMA_ERROR)
        if job.fell_back.any() and io.result.fallback is None:
            io.result.fallback = "read_einval"
            self.stats_.fallback("read_einval")
        if job.callback_error is not None:
            raise io.make_error("io", f"internal error in the chunk reader: "
                                      f"{job.callback_error!r}")
        if edge_error is not None and (first_err is None or isinstance(edge_error, _Cancelled)):
            raise edge_error
        if first_err is not None:
            e, c0 = err[first_err], chunks[first_err][0]
            ex = OSError(e, os.strerror(e))
            raise io.make_os_error(ex, f"pread of [{c0}, {chunks[first_err][1]}) at file "
                                       f"offset {c0 + got[first_err]}")
        if first_short is not None:
            io.mark_short(first_short)
        io.check()
        if chunks and chunks[-1][1] < io.limit and io.short_at is None:
            self._hook(io, chunks[-1][1])

    def _read_bounce(self, io: _Io, fh: FileHandle, direct: bool, a: int, b: int,
                     fences) -> None:
        """The pipelined path: read a chunk into a free bounce buffer, start its copy to the
        destination, go on reading into the next buffer while the copy runs."""
        pool, eng = io.pool, io.engine
        pos = a
        end_read = align_up(b) if direct else b
        while pos < b:
            i, buf = pool.acquire()
            fence = DONE
            try:
                start = align_down(pos) if direct else pos
                skip = pos - start
                want = min(len(buf), end_read - start)
                self._queue_blocks(io, pos, min(b, start + want))
                got = self._pread(io, fh, direct, buf[:want], start)
                useful = max(0, min(got - skip, b - pos))
                if useful:
                    fence = eng.to_dest(io.dest, io.dest_off + pos - io.offset,
                                        buf[skip:skip + useful])
                    fences.append((fence, pos, pos + useful))
            finally:
                pool.release(i, fence)
            pos += useful
            if pos < b and got < want:
                io.mark_short(pos)
                return
            if pos < b:
                self._hook(io, pos)

    def _read_gds(self, io: _Io, fh: FileHandle, a: int, b: int) -> None:
        g = fh.gds()
        base = io.dest_off - io.offset
        self._read_chunks(io, a, b, lambda pos, n: g.read(io.dest, base + pos, n, pos))

    # ------------------------------------------------------------------ writing
    def _plan_write(self, io: _Io, fh: FileHandle) -> list:
        r = io.result
        src = io.dest
        io.blocks.move_all(BS.INIT)
        if io.length == 0:
            return []
        aligned = io.offset % ALIGN == 0 and io.length % ALIGN == 0
        if src.kind == "device" and src.target == "cuda" and self._gds_ok(io, fh):
            r.io_path = "gds"
        elif src.host_addressable:
            aligned = aligned and src.address(io.dest_off) % ALIGN == 0
            io.direct = self._choose_direct(io, fh, aligned,
                                            None if fh.fd_direct is None else "unaligned")
            r.io_path = "direct" if io.direct else "buffered"
        else:
            io.direct = self._choose_direct(io, fh, aligned,
                                            None if fh.fd_direct is None else "unaligned")
            r.io_path = "bounce"
        r.o_direct = io.direct
        io.engine, io.pool = self._engine_for(src)
        return self._segments(io, [(io.offset, io.offset + io.length, "data")])

    def _pwrite_all(self, io: _Io, fh: FileHandle, buf: np.ndarray, pos: int) -> None:
        fd = fh.fd_direct if io.direct else fh.fd
        done = 0
        while done < len(buf):
            try:
                n = os.pwritev(fd, [buf[done:]], pos + done)
            except OSError as e:
                if io.direct and e.errno == E.EINVAL:
                    io.direct = False
                    io.result.fallback = "write_einval"
                    self.stats_.fallback("write_einval")
                    fd = fh.fd
                    continue
                e.ggmk_pos = pos + done
                io.wrote(pos, pos + done)        # what a short write put there before
                raise
            if n == 0:
                err = OSError(E.EIO, "write returned 0 bytes")
                err.ggmk_pos = pos + done
                io.wrote(pos, pos + done)
                raise err
            done += n
        io.wrote(pos, pos + done)

    def _gds_write_all(self, io: _Io, fh: FileHandle, soff: int, n: int, pos: int) -> None:
        """cuFile may write fewer bytes than asked (it returns the count): write the rest."""
        done = 0
        while done < n:
            got = fh.gds().write(io.dest, soff + done, n - done, pos + done)
            io.wrote(pos + done, pos + done + got)
            if got <= 0:
                err = OSError(E.EIO, "GPUDirect write returned 0 bytes")
                err.ggmk_pos = pos + done
                raise err
            done += got

    def _write_seg(self, io: _Io, fh: FileHandle, seg) -> None:
        first, last = io.blk(seg[0][0]), io.blk_up(seg[-1][1])
        bl = io.blocks
        ok = False
        try:
            for a, b, _ in seg:
                pos = a
                while pos < b:
                    n = min(self.direct_chunk, b - pos)
                    self._queue_blocks(io, pos, pos + n)
                    soff = io.dest_off + pos - io.offset
                    if io.result.io_path == "gds":
                        self._gds_write_all(io, fh, soff, n, pos)
                    elif io.dest.host_addressable:
                        self._pwrite_all(io, fh, io.dest.view(soff, n), pos)
                    else:
                        n = min(n, io.pool.size)
                        i, buf = io.pool.acquire()
                        try:
                            io.engine.from_src(io.dest, soff, buf[:n]).wait()
                            self._pwrite_all(io, fh, buf[:n], pos)
                        finally:
                            io.pool.release(i)
                    pos += n
                    if pos < io.limit:
                        self._hook(io, pos)
            ok = True
        finally:
            bl.advance(first, last, BS.DMA_START, BS.DONE if ok else BS.DMA_ERROR)
