"""The ``cuda`` target's rules for a resident kernel, checked without a GPU where they can be
(issue 13 part 1): a non-blocking stream, host views that are plain NumPy arrays, no plain
(non-volatile) device reads of host-written words, and a block count capped at what the device
keeps resident. The GPU-only checks carry the ``cuda`` marker."""
import ast
import re
from pathlib import Path

import numpy as np
import pytest

from ggmk.device import layout
from ggmk.device.targets import cuda as T
from ggmk.errors import DeviceError

SRC = Path(T.__file__).resolve().parents[1] / "kernel_src.py"


def test_stream_options_are_non_blocking():
    assert T.stream_options().nonblocking is True


def test_make_stream_creates_a_non_blocking_stream_and_wraps_its_handle():
    calls = {}

    class FakeStream:
        handle = 0xBEEF

    class FakeDevice:
        def __init__(self, dev_id):
            calls["id"] = dev_id

        def set_current(self):
            calls["current"] = True

        def create_stream(self, obj=None, options=None):
            calls["options"] = options
            return FakeStream()

    owner, wrapped = T.make_stream(3, device_cls=FakeDevice, wrap=lambda h: ("numba", h))
    assert calls["id"] == 3 and calls["current"]
    assert calls["options"].nonblocking is True
    assert isinstance(owner, FakeStream) and wrapped == ("numba", 0xBEEF)


def test_cuda_target_never_uses_numbas_blocking_stream_or_stream_0_copies():
    """Every call in the cuda target: no ``cuda.stream()`` (CU_STREAM_DEFAULT), every
    transfer/allocation names the session's stream, no ``copy_to_host`` (stream 0 by default),
    no ``mapped_array(portable=, wc=)``, no ``cuda.core.experimental``."""
    tree = ast.parse(Path(T.__file__).read_text())
    transfers = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module != "cuda.core.experimental"
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        kws = {k.arg: k.value for k in node.keywords}
        assert name != "copy_to_host", node.lineno
        if name == "stream" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "cuda":
            raise AssertionError(f"line {node.lineno}: cuda.stream() blocks on stream 0")
        if name in ("to_device", "device_array", "mapped_array"):
            transfers += 1
            assert "stream" in kws and ast.unparse(kws["stream"]) == "self.stream", node.lineno
            assert "portable" not in kws and "wc" not in kws, node.lineno
    assert transfers == 3


def test_host_view_is_a_numpy_array_over_the_same_memory():
    class Mapped(np.ndarray):
        """Stands in for numba's MappedNDArray, whose .view() returns a device array."""
        def view(self, *a, **k):
            raise AssertionError("host_view must not call .view() on a mapped array")

    m = np.arange(16, dtype=np.int64).view(Mapped)
    h = T.host_view(m)
    assert type(h) is np.ndarray and np.shares_memory(h, np.asarray(m))
    h[3] = 99
    assert int(np.asarray(m)[3]) == 99


def test_resident_block_limit_and_refusal():
    assert T.resident_block_limit(2, 132) == 264
    assert T.resident_block_limit(0, 132) == 0
    T.check_blocks(264, 264, "H200")                           # at the limit: fine
    with pytest.raises(DeviceError) as ei:
        T.check_blocks(300, T.resident_block_limit(2, 132), "H200 (132 SMs)")
    msg = str(ei.value)
    assert "blocks=300" in msg and "264" in msg and "H200" in msg


def _subscript_loads_of(tree, array_name, words):
    """Plain ``M[... C_X ...]`` reads (not through vload) of the given ctl words."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                and isinstance(node.value, ast.Name) and node.value.id == array_name:
            names = {n.id for n in ast.walk(node.slice) if isinstance(n, ast.Name)}
            hit = names & set(words)
            if hit:
                bad.append((node.lineno, sorted(hit)))
    return bad


def test_host_written_words_are_read_with_volatile_loads():
    """(e) Words the host writes while the kernel runs are read with vload (ld.volatile on
    cuda) everywhere in the kernel source, never with a plain load the compiler may hoist."""
    host_written = ["C_STOP", "C_RX_TAIL", "C_TX_HEAD", "C_DOORBELL"]
    tree = ast.parse(SRC.read_text())
    assert _subscript_loads_of(tree, "M", host_written) == []
    # ... and the host never writes a word the device writes (one writer per mapped word)
    host_src = (SRC.parent / "host.py").read_text()
    for word in ("C_RX_HEAD", "C_STARTED", "C_EXITED", "C_TICK", "C_PARKED", "C_TX_HELD"):
        assert not re.search(rf"\[layout\.{word}\]\s*=[^=]", host_src), word


def test_tx_ctl_word_layout_has_one_line_each():
    words = [v for k, v in vars(layout).items() if k.startswith("C_") and isinstance(v, int)]
    assert len(words) == len(set(words)) and max(words) < layout.NCTL
    assert all(w % 8 == 0 for w in words)


@pytest.mark.cuda
def test_cuda_session_stream_is_non_blocking_on_the_gpu():
    owner, s = T.make_stream()
    try:
        assert owner.is_nonblocking
    finally:
        owner.close()


@pytest.mark.cuda
def test_cuda_refuses_more_blocks_than_can_be_resident():
    import ggmk.device as gd
    from ggmk.device import api as g
    m = gd.Module("toomany")

    @m.handler(1)
    def h(ctx, task):
        g.emit_host(ctx, 2, 0, 0)
        return 0
    with pytest.raises(DeviceError, match=r"blocks=100000 requested"):
        gd.DeviceKernel([m], target="cuda", workers=100000).start()
