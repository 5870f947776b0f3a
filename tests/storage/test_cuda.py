"""GPU paths: GPUDirect Storage (cuFile / KvikIO) and the pinned bounce path into CUDA memory.
Skipped without a GPU (``cuda`` marker)."""
from __future__ import annotations

import numpy as np
import pytest
from storage_helpers import make_file, punch_hole

from ggmk.storage import DeviceDest, Storage, gds_available

pytestmark = pytest.mark.cuda


@pytest.fixture
def cuda_dest():
    return lambda n: DeviceDest.alloc(n, target="cuda")


@pytest.mark.parametrize("gds", [False, "auto"])
def test_cuda_reads(disk_dir, rng, cuda_dest, gds):
    data = rng.integers(0, 256, (3 << 20) + 123, dtype=np.uint8)
    p = make_file(disk_dir / "c.bin", data)
    punch_hole(p, 1 << 20, 256 << 10)
    data[1 << 20:(1 << 20) + (256 << 10)] = 0
    with Storage(gds=gds, bounce_size=256 << 10, bounce_count=4) as st:
        d = cuda_dest(len(data) - 7)
        r = st.read(p, 7, len(data) - 7, dest=d)
        want = "gds" if gds and gds_available()[0] else "bounce"
        assert r.io_path == want, (r, gds_available())
        assert np.array_equal(d.to_host(), data[7:])
        assert r.holes == 1
        src = cuda_dest(1 << 20)
        src.write_from_host(0, data[:1 << 20], None)
        w = st.write(disk_dir / "out.bin", 0, src)
        assert w.io_path == want
        assert np.array_equal(np.fromfile(disk_dir / "out.bin", np.uint8), data[:1 << 20])
