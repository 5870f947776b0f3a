"""Storage (NVFS) benchmark with same-run peers. Prints one JSON line.

    .venv/bin/python bench/storage.py [--size 1G] [--dir DIR] [--random 20000] [--workers 4]
                                      [--fast-threads 16] [--seq-chunk 4M] [--seq-depth 16]
                                      [--repeat 3]

Every figure is the median of ``--repeat`` runs, the file's pages dropped before each.

On a file of ``--size`` bytes (default 1 GiB; free disk is checked first: dense + sparse file
need about 2x that) in a temp dir under ``--dir``:

* ``host_read_GBps``: ``Storage.read`` of the whole file into host memory the storage
  allocated (``HostDest.alloc``: page-aligned, huge pages where THP allows), O_DIRECT straight
  into the destination (path ``direct``; the page cache is bypassed): the range is cut into
  ``--seq-chunk`` chunks, ``--seq-depth`` of them in flight on the fast pool's threads.
* ``device_cpu_read_GBps``: the same into device memory of the ``cpu`` target (path
  ``bounce``: O_DIRECT into bounce buffers, copies by the copy engine, overlapped).
* ``random4k_reads_per_s``: ``--random`` 4 KiB reads at random aligned offsets, one batch on
  the fast path (``Storage.read_batch``: NumPy arrays in, reads in a native nogil loop on
  ``--fast-threads`` threads, O_DIRECT); the loop is compiled/loaded before timing.
  ``random4k_submit_reads_per_s``: the same offsets through the general ``submit`` path (one
  ``ReadRequest`` per I/O), for comparison.
* ``sparse90_GBps``: a file of the same size that is 90% holes (1 MiB of data every 10 MiB),
  read whole into the storage-allocated memory (logical bytes per second; holes not read:
  their whole pages are dropped with ``MADV_DONTNEED`` and read back as zeros, the data
  regions go through the sequential chunked path), verified byte for byte after the run.
  ``sparse90_user_array_GBps``: the same into a caller's NumPy array (holes zeroed with a
  memset, which costs CPU time on a loaded box); ``sparse90_user_array_vs_dense`` its ratio.
* peers (same run; the file's pages are dropped from the page cache with
  ``posix_fadvise(DONTNEED)`` before each): ``numpy.fromfile``, ``readinto`` of an unbuffered
  file, a ``ThreadPoolExecutor`` of ``os.preadv`` (8 MiB pieces, ``--workers`` threads; and
  4 KiB random reads, with ``--workers`` threads and with as many threads as the fast path
  has), KvikIO where installed, and ``dd iflag=direct bs=8M`` (raw figure, median of
  ``--repeat`` runs too).
* ratios: ``seq_read_vs_best_peer`` (host read / best sequential peer, dd excluded),
  ``random4k_vs_threadpool`` (vs the ``--workers`` pool; ``random4k_vs_threadpool_same_threads``
  vs the pool with ``--fast-threads`` threads), ``sparse90_vs_dense`` (sparse / dense host
  read throughput).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from ggmk.storage import DeviceDest, HostDest, ReadRequest, Storage  # noqa: E402
from ggmk.storage.buffers import aligned_empty  # noqa: E402

MB = 1 << 20


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)i?B?", s.strip(), re.I)
    if not m:
        raise SystemExit(f"--size {s!r}: expected e.g. 1G, 256M")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]


def drop_cache(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_dense(path, size: int) -> None:
    block = np.random.default_rng(0).integers(0, 256, 16 * MB, dtype=np.uint8)
    with open(path, "wb") as f:
        left, k = size, 0
        while left:
            n = min(left, len(block))
            f.write(np.roll(block, k)[:n].tobytes())
            left -= n
            k += 1
        f.flush()
        os.fsync(f.fileno())


def write_sparse(path, size: int) -> int:
    """10% data: 1 MiB of data at the start of every 10 MiB; returns the data bytes."""
    block = np.random.default_rng(1).integers(0, 256, MB, dtype=np.uint8).tobytes()
    data = 0
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 10 * MB):
            n = min(MB, size - off)
            f.seek(off)
            f.write(block[:n])
            data += n
        f.flush()
        os.fsync(f.fileno())
    return data


REPEAT = 3


def timed(fn, path=None):
    """Median of ``--repeat`` runs (the page cache dropped before each): on a shared box a
    single run mostly measures the neighbours. The same for our figures and the peers'."""
    ts, out = [], None
    for _ in range(REPEAT):
        if path is not None:
            drop_cache(path)
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--random", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--fast-threads", type=int, default=16)
    ap.add_argument("--seq-chunk", default="4M")
    ap.add_argument("--seq-depth", type=int, default=16)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per figure (median reported; ours and the peers alike)")
    a = ap.parse_args()
    global REPEAT
    REPEAT = max(1, a.repeat)
    size = parse_size(a.size) // MB * MB
    base = a.dir or os.environ.get("TMPDIR") or "/var/tmp"
    free = shutil.disk_usage(base).free
    if free < 2 * size + 256 * MB:
        raise SystemExit(f"not enough free disk in {base}: {free / 2**30:.1f} GiB free, need "
                         f"{(2 * size + 256 * MB) / 2**30:.1f} GiB; use --size to shrink")
    tmp = tempfile.mkdtemp(prefix="ggmk-bench-storage-", dir=base)
    out: dict = {"bench": "storage", "size_bytes": size, "dir": tmp, "workers": a.workers,
                 "fast_threads": a.fast_threads, "random": a.random, "repeat": REPEAT,
                 "seq_chunk": parse_size(a.seq_chunk), "seq_depth": a.seq_depth,
                 "load_before": os.getloadavg()}
    try:
        dense = os.path.join(tmp, "dense.bin")
        sparse = os.path.join(tmp, "sparse90.bin")
        write_dense(dense, size)
        sparse_data = write_sparse(sparse, size)
        out["sparse_data_fraction"] = round(sparse_data / size, 3)
        gb = size / 1e9
        with Storage(workers=a.workers, bounce_size=4 * MB, bounce_count=8,
                     segment_size=64 * MB, direct_chunk=8 * MB,
                     fast_threads=a.fast_threads, seq_chunk=parse_size(a.seq_chunk),
                     seq_depth=a.seq_depth) as st:
            st.warm_up()                                   # native loop loaded, threads up
            # ours: host memory, O_DIRECT straight in
            dst = HostDest.alloc(size)
            dst.view()[::4096] = 1                         # fault the pages in first
            dt, r = timed(lambda: st.read(dense, 0, size, dest=dst), dense)
            out["host_read_GBps"] = round(gb / dt, 3)
            out["host_read_path"] = r.io_path
            out["o_direct"] = r.o_direct
            # ours: device memory of the cpu target (pipelined bounce path)
            dev = DeviceDest.alloc(size, target="cpu")
            dev.view()[::4096] = 1
            dt, r = timed(lambda: st.read(dense, 0, size, dest=dev), dense)
            out["device_cpu_read_GBps"] = round(gb / dt, 3)
            out["device_cpu_read_path"] = r.io_path
            ok = np.array_equal(dev.view()[:MB], dst.view()[:MB])
            del dev
            # ours: random 4 KiB reads, one batch on the fast path
            rng = np.random.default_rng(2)
            offs_a = rng.integers(0, size // 4096, a.random) * 4096
            offs = offs_a.tolist()
            buf = HostDest.alloc(a.random * 4096)
            buf.view()[::4096] = 1
            with st.open(dense) as fh:
                st.read_batch(fh, offs_a[:16], 4096, dest=buf)          # compile / load loop
                dt, b = timed(lambda: st.read_batch(fh, offs_a, 4096, dest=buf), dense)
                b.raise_for_error()
                assert b.count(0) == a.random and b.direct.all()
                want = np.fromfile(dense, np.uint8, 4096, offset=int(offs_a[-1]))
                assert np.array_equal(b.data(a.random - 1), want)
                out["random4k_reads_per_s"] = round(a.random / dt)
                out["random4k_p50_us_le"] = st.stats()["latency"]["p50_us_le"]
                reqs = [ReadRequest(fh, o, 4096, dest=buf, dest_offset=i * 4096)
                        for i, o in enumerate(offs)]
                dt, res = timed(lambda: st.submit(reqs).wait(600), dense)
            assert all(x.status == "ok" for x in res)
            out["random4k_submit_reads_per_s"] = round(a.random / dt)
            # ours: 90% sparse
            dt, r = timed(lambda: st.read(sparse, 0, size, dest=dst), sparse)
            out["sparse90_GBps"] = round(gb / dt, 3)
            out["sparse90_holes"] = r.holes
            sparse_ok = True
            with open(sparse, "rb") as f:
                for off in range(0, size, 64 * MB):
                    want = np.frombuffer(f.read(64 * MB), np.uint8)
                    sparse_ok &= bool(np.array_equal(dst.view(off, len(want)), want))
            out["sparse90_matches_file"] = sparse_ok
            mine = aligned_empty(size)                     # a caller's (aligned) array:
            mine[::4096] = 1                               # faulted in, holes memset
            dt, r = timed(lambda: st.read(sparse, 0, size, dest=mine), sparse)
            out["sparse90_user_array_GBps"] = round(gb / dt, 3)
            del mine
            s = st.stats()
            out["stats"] = {k: s[k] for k in ("paths", "o_direct", "sparse", "errors", "latency",
                                              "batches")}
            out["stats"]["errors"] = s["errors"]["total"]
            out["stats"]["latency"] = {k: s["latency"][k] for k in ("count", "mean_us",
                                                                     "p50_us_le", "p99_us_le")}
            out["stats"]["batches"] = {k: s["batches"][k] for k in ("count", "max", "queued")}
        out["device_matches_host"] = bool(ok)
        del dst
        # peers
        peers = {}
        dt, _ = timed(lambda: np.fromfile(dense, np.uint8), dense)
        peers["numpy_fromfile_GBps"] = round(gb / dt, 3)
        pb = aligned_empty(size)

        def readinto():
            with open(dense, "rb", buffering=0) as f:
                n = 0
                mv = memoryview(pb)
                while n < size:
                    k = f.readinto(mv[n:])
                    if not k:
                        break
                    n += k
        dt, _ = timed(readinto, dense)
        peers["readinto_GBps"] = round(gb / dt, 3)
        fd = os.open(dense, os.O_RDONLY)
        with ThreadPoolExecutor(a.workers) as ex:
            def tp_seq():
                list(ex.map(lambda o: os.preadv(fd, [pb[o:o + 8 * MB]], o),
                            range(0, size, 8 * MB)))
            dt, _ = timed(tp_seq, dense)
            peers["threadpool_preadv_GBps"] = round(gb / dt, 3)
            rb = np.empty(a.random * 4096, np.uint8)
            rb[::4096] = 1                                  # faulted in, like ours

            def tp_rand():
                list(ex.map(lambda i: os.preadv(fd, [rb[i * 4096:(i + 1) * 4096]], offs[i]),
                            range(a.random)))
            dt, _ = timed(tp_rand, dense)
            peers["threadpool_random4k_reads_per_s"] = round(a.random / dt)
        with ThreadPoolExecutor(a.fast_threads) as ex:
            dt, _ = timed(tp_rand, dense)
            peers["threadpool_same_threads_random4k_reads_per_s"] = round(a.random / dt)
        os.close(fd)
        try:
            import kvikio
            f = kvikio.CuFile(dense, "r")
            dt, _ = timed(lambda: f.read(pb), dense)
            f.close()
            peers["kvikio_GBps"] = round(gb / dt, 3)
        except ImportError:
            peers["kvikio_GBps"] = None
        del pb
        out["peers"] = peers
        dds = []
        for _ in range(REPEAT):
            drop_cache(dense)
            p = subprocess.run(["dd", f"if={dense}", "of=/dev/null", "bs=8M", "iflag=direct"],
                               capture_output=True, text=True)
            m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", p.stderr)
            if m:
                dds.append(int(m.group(1)) / float(m.group(2)) / 1e9)
        out["dd_iflag_direct_GBps"] = round(float(np.median(dds)), 3) if dds else None
        seq_peers = [v for k, v in peers.items() if k.endswith("GBps") and v]
        out["seq_read_vs_best_peer"] = round(out["host_read_GBps"] / max(seq_peers), 3)
        out["random4k_vs_threadpool"] = round(
            out["random4k_reads_per_s"] / peers["threadpool_random4k_reads_per_s"], 3)
        out["random4k_vs_threadpool_same_threads"] = round(
            out["random4k_reads_per_s"]
            / peers["threadpool_same_threads_random4k_reads_per_s"], 3)
        out["sparse90_vs_dense"] = round(out["sparse90_GBps"] / out["host_read_GBps"], 3)
        out["sparse90_user_array_vs_dense"] = round(
            out["sparse90_user_array_GBps"] / out["host_read_GBps"], 3)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
