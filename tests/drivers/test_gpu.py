"""gpu_drv on the ``cpu`` backend (every test runs without a GPU): config, discovery, memory,
payload pools, command batches and fences on real threads, context destroy accounting, the
persistent kernel's launch and reset on the device kernel's ``cpu`` target, displays. The
``cuda`` backend's tests carry the ``cuda`` marker and skip without a usable GPU."""
from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import ggmk.device as gd
from ggmk.device import api as g
from ggmk.drivers import gpu
from ggmk.drivers.gpu import (Call, CommandError, ContextDestroyed, Copy, Fill, FenceTimeout,
                              GpuAllocError, GpuConfig, GpuConfigError, GpuDriver, GpuDriverError,
                              Nop, PoolExhausted, Read, Write)
from ggmk.task import ALLOC_FAIL


@pytest.fixture
def drv():
    d = GpuDriver(backend="cpu", memory_reservation="1M", command_timeout_ms=5000, display=None)
    yield d
    d.close(timeout=1)


@pytest.fixture
def ctx(drv):
    return drv.create_context()


# ------------------------------------------------------------------------------------ config

def test_config_defaults_and_ghostnv_aliases():
    c = GpuConfig.make()
    assert c.memory_reservation == 256 << 20 and c.command_timeout == 5.0
    c = GpuConfig.make({"gpu_memory_size": "2G"}, gpu_command_timeout_ms=250,
                       gpu_enable_display=False, payload_slot_size="8K", payload_slots=4)
    assert (c.memory_reservation, c.command_timeout_ms, c.enable_display) == (2 << 30, 250.0, False)
    assert c.payload_slot_size == 8192 and gpu.parse_size("x", "512MiB") == 512 << 20


@pytest.mark.parametrize("options, option, words", [
    ({"memory_reservation": -1}, "memory_reservation", "at least 4096"),
    ({"memory_reservation": "lots"}, "memory_reservation", "number of bytes"),
    ({"memory_reservation": True}, "memory_reservation", "number of bytes"),
    ({"memory_reservation": 1.5}, "memory_reservation", "number of bytes"),
    ({"command_timeout_ms": 0}, "command_timeout_ms", "> 0"),
    ({"command_timeout_ms": -5}, "command_timeout_ms", "> 0"),
    ({"command_timeout_ms": math.nan}, "command_timeout_ms", "finite"),
    ({"command_timeout_ms": math.inf}, "command_timeout_ms", "finite"),
    ({"command_timeout_ms": "5s"}, "command_timeout_ms", "milliseconds"),
    ({"payload_slots": 0}, "payload_slots", ">= 1"),
    ({"payload_slots": 2.5}, "payload_slots", "integer"),
    ({"payload_slot_size": 12}, "payload_slot_size", "multiple of 8"),
    ({"payload_slots": 1024, "payload_slot_size": 4096, "memory_reservation": "1M"},
     "payload_slots", "does not fit in memory_reservation"),
    ({"enable_compute": "yes"}, "enable_compute", "True or False"),
    ({"enable_display": 1}, "enable_display", "True or False"),
    ({"backend": "gpu"}, "backend", "auto, cpu, cuda"),
    ({"device": -1}, "device", ">= 0"),
    ({"gpu_memroy_size": 1}, "gpu_memroy_size", "unknown option"),
])
def test_bad_config_values_are_named(options, option, words):
    with pytest.raises(GpuConfigError) as ei:
        GpuDriver(display=None, **options)
    e = ei.value
    assert e.option == option and f"{option}=" in str(e) and words in str(e), str(e)
    assert isinstance(e, ValueError)


def _discovery(ngpus: int):
    from ggmk.drivers.gpu.discovery import Discovery, GpuInfo
    return Discovery(gpus=[GpuInfo(index=i, name=f"NVIDIA H200 #{i}") for i in range(ngpus)],
                     virtio_gpus=[], nvml={}, notes=[])


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_a_device_index_discovery_did_not_find_is_refused_on_the_cpu_backend_too(backend):
    """(With no GPU found, or backend='cpu', any index fell back to the cpu backend silently.)"""
    from ggmk.drivers.gpu import cuda
    if cuda.available(0)[0]:
        pytest.skip("a GPU is usable here: auto takes cuda, which checks the index itself")
    for ngpus, device, found in ((0, 5, "0 found"), (0, 1, "0 found"),
                                 (1, 1, "1 found: 0: NVIDIA H200 #0")):
        with pytest.raises(GpuConfigError) as ei:
            GpuDriver(backend=backend, device=device, discovery=_discovery(ngpus), display=None)
        e = ei.value
        assert (e.option, e.value) == ("device", device)
        assert str(e) == f"gpu_drv config: device={device}: no such GPU ({found})"
    for ngpus in (0, 1):            # device 0, the default: the first GPU, or none
        with GpuDriver(backend=backend, discovery=_discovery(ngpus), display=None) as d:
            assert d.backend.name == "cpu" and d.config.device == 0


def test_reservation_larger_than_the_device_is_named():
    with pytest.raises(GpuConfigError, match="memory_reservation=.*exceeds the memory of host CPU"):
        GpuDriver(backend="cpu", memory_reservation="1024T", display=None)


def test_cuda_backend_requested_without_gpu_is_a_clear_error():
    from ggmk.drivers.gpu import cuda
    if cuda.available(0)[0]:
        pytest.skip("a GPU is usable here")
    with pytest.raises(GpuDriverError, match="backend 'cuda' requested but not usable"):
        GpuDriver(backend="cuda", display=None)


# ------------------------------------------------------------------------------------ discovery

def _fake_sysfs(tmp_path, *, with_gpu=True):
    root = tmp_path / "devices"
    root.mkdir()
    if with_gpu:
        d = root / "0000:41:00.0"
        d.mkdir()
        for k, v in {"vendor": "0x10de", "device": "0x2335", "class": "0x030200",
                     "revision": "0xa1", "current_link_speed": "16.0 GT/s PCIe",
                     "current_link_width": "8", "max_link_speed": "32.0 GT/s PCIe",
                     "max_link_width": "16"}.items():
            (d / k).write_text(v + "\n")
    mod = tmp_path / "module" / "nvidia"
    mod.mkdir(parents=True)
    (mod / "version").write_text("550.54.15\n")
    return root, tmp_path / "module"


def test_discovery_from_pci_sysfs_without_nvml(tmp_path):
    root, modroot = _fake_sysfs(tmp_path)
    d = gpu.discover(str(root), nvml=None, module_root=str(modroot), proc_root=str(tmp_path))
    (g,) = d.gpus
    assert (g.pci_bus_id, g.vendor_id, g.device_id) == ("0000:41:00.0", 0x10DE, 0x2335)
    assert g.name == "NVIDIA H200 SXM 141GB"
    assert g.link == {"speed_gts": 16.0, "width": 8, "max_speed_gts": 32.0, "max_width": 16}
    assert g.driver_version == "550.54.15"
    assert g.sources == {"pci_bus_id": "pci", "vendor_id": "pci", "device_id": "pci",
                         "name": "pci", "link": "pci", "driver_version": "sysfs"}
    assert g.memory_total is None and any("memory unknown" in n for n in g.notes)
    assert d.nvml["used"] is False and "disabled" in d.nvml["why_not"]


def test_discovery_notes_a_gpu_that_does_not_respond(tmp_path):
    # config space reading all ones (a GPU fallen off the bus): sysfs's cached ids still say
    # GPU, so it is listed, but not as if it were fine
    root, modroot = _fake_sysfs(tmp_path)
    (root / "0000:41:00.0" / "config").write_bytes(b"\xff" * 256)
    d = gpu.discover(str(root), nvml=None, module_root=str(modroot), proc_root=str(tmp_path))
    (g,) = d.gpus
    assert any(n.startswith("not responding") for n in g.notes), g.notes


def _fake_nvml(fail_init=False):
    """An NVML-shaped object for the merge logic (this machine has no NVML)."""
    calls = []

    def init():
        calls.append("init")
        if fail_init:
            raise RuntimeError("Driver Not Loaded")

    def not_supported(h):
        raise RuntimeError("Not Supported")
    return calls, SimpleNamespace(
        nvmlInit=init, nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"560.28.03", nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: ("h", i),
        nvmlDeviceGetName=lambda h: "NVIDIA H200",
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=b"00000000:41:00.0",
                                                       pciDeviceId=0x233510DE),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=141 << 30, free=140 << 30),
        nvmlDeviceGetUUID=lambda h: "GPU-1234",
        nvmlDeviceGetCurrPcieLinkGeneration=lambda h: 5,
        nvmlDeviceGetCurrPcieLinkWidth=lambda h: 16,
        nvmlDeviceGetMaxPcieLinkGeneration=lambda h: 5,
        nvmlDeviceGetMaxPcieLinkWidth=not_supported)


def test_discovery_nvml_facts_win_and_say_so(tmp_path):
    root, modroot = _fake_sysfs(tmp_path)
    calls, nvml = _fake_nvml()
    d = gpu.discover(str(root), nvml=nvml, module_root=str(modroot))
    (g,) = d.gpus
    assert calls == ["init", "shutdown"]
    assert g.name == "NVIDIA H200" and g.sources["name"] == "nvml"
    assert g.memory_total == 141 << 30 and g.sources["memory_total"] == "nvml"
    assert g.driver_version == "560.28.03" and g.sources["driver_version"] == "nvml"
    assert g.link["speed_gts"] == 32.0 and g.link["max_width"] is None
    assert g.pci_bus_id == "0000:41:00.0" and g.uuid == "GPU-1234"
    assert any("max_width" in n and "Not Supported" in n for n in g.notes)   # one fact lost


def test_discovery_nvml_failing_falls_back_to_pci(tmp_path):
    root, modroot = _fake_sysfs(tmp_path)
    _, nvml = _fake_nvml(fail_init=True)
    d = gpu.discover(str(root), nvml=nvml, module_root=str(modroot))
    (g,) = d.gpus
    assert g.sources["name"] == "pci" and g.sources["driver_version"] == "sysfs"
    assert "nvmlInit failed" in d.nvml["why_not"] and "Driver Not Loaded" in d.nvml["why_not"]


def test_discovery_nvml_only_device_and_procfs_version(tmp_path):
    root, _ = _fake_sysfs(tmp_path, with_gpu=False)
    (tmp_path / "proc" / "driver" / "nvidia").mkdir(parents=True)
    (tmp_path / "proc" / "driver" / "nvidia" / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n")
    d = gpu.discover(str(root), nvml=None, module_root=str(tmp_path / "none"),
                     proc_root=str(tmp_path / "proc"))
    assert d.gpus == []
    assert gpu.discovery.os_driver_version(str(tmp_path / "none"), str(tmp_path / "proc")) == (
        "535.104.05", "procfs")
    _, nvml = _fake_nvml()
    d = gpu.discover(str(root), nvml=nvml)
    (g,) = d.gpus
    assert g.pci_bus_id == "0000:41:00.0" and g.sources["pci_bus_id"] == "nvml"
    assert any("not found in PCI sysfs" in n for n in g.notes)


def test_driver_on_this_machine_reports_sources(drv):
    info = drv.info()
    assert info["backend"] == "cpu" and info["kernel_target"] == "cpu"
    assert info["device"]["sources"]["name"] == "procfs"
    assert info["displays"] == [] and info["config"]["memory_reservation"] == 1 << 20
    text = gpu.format_info(info)
    assert text.startswith("gpu_drv:") and "backend: cpu" in text


# ------------------------------------------------------------------------------------ protocol

def test_cpu_and_cuda_implement_the_backend_protocol():
    from ggmk.drivers.gpu import cpu, cuda
    assert issubclass(cpu.CpuBackend, gpu.Backend) and issubclass(cuda.CudaBackend, gpu.Backend)
    assert issubclass(cpu.CpuContext, gpu.BackendContext)
    assert issubclass(cuda.CudaContext, gpu.BackendContext)
    # nothing abstract left: both are instantiable classes of the same surface
    assert not cpu.CpuContext.__abstractmethods__ and not cuda.CudaContext.__abstractmethods__
    assert not cpu.CpuBackend.__abstractmethods__ and not cuda.CudaBackend.__abstractmethods__


def test_cuda_backend_never_imports_cuda_core_experimental():
    import ast
    import inspect
    from ggmk.drivers.gpu import cuda
    tree = ast.parse(inspect.getsource(cuda))
    mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "cuda.core" in mods and not any("experimental" in (m or "") for m in mods)
    assert "StreamOptions(nonblocking=True)" in inspect.getsource(cuda)


def test_package_docstring_example_runs(capsys):
    src = gpu.__doc__.split("backend where there is no GPU)::")[1]
    code = "\n".join(line[4:] for line in src.splitlines())
    exec(compile(code, "gpu-docstring", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["b'hello' 7", "2048", "0"]


# ------------------------------------------------------------------------------------ memory

def test_alloc_map_free_and_reservation(drv, ctx):
    a = ctx.alloc(4096)
    h = ctx.alloc(1000, kind="host")
    assert a.address % 256 == 0 and a.nbytes == 4096 and h.kind == "host"
    v = ctx.map(a)
    v[:4] = [1, 2, 3, 4]
    assert ctx.map(a) is v and a.mapped
    with pytest.raises(GpuDriverError, match="still mapped"):
        ctx.free(a)
    ctx.unmap(a)
    with pytest.raises(GpuDriverError, match="is not mapped"):
        ctx.unmap(a)
    assert drv.stats()["bytes_in_use"] == 5096 and drv.stats()["allocations"] == 2
    with pytest.raises(GpuAllocError) as ei:
        ctx.alloc(1 << 20)
    assert ei.value.code == ALLOC_FAIL and str(ei.value).startswith("ALLOC_FAIL:")
    assert "5096 of 1048576 B in use" in str(ei.value) and "memory_reservation" in str(ei.value)
    assert drv.stats()["alloc_fail"] == 1
    ctx.free(a)
    with pytest.raises(GpuDriverError, match="double free"):
        ctx.free(a)
    with pytest.raises(GpuDriverError, match="use after free"):
        ctx.map(a)
    other = drv.create_context()
    with pytest.raises(GpuDriverError, match=f"belongs to context {ctx.id}"):
        other.free(h)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(GpuDriverError, match="nbytes"):
            ctx.alloc(bad)
    with pytest.raises(GpuDriverError, match="kind='vram'"):
        ctx.alloc(8, kind="vram")
    assert drv.stats()["bytes_in_use"] == 1000


# ------------------------------------------------------------------------------------ commands

def test_batch_runs_in_order_and_fence_signals(ctx):
    a, b = ctx.alloc(64), ctx.alloc(64)
    out = np.zeros(8, np.int64)
    f = ctx.submit([Fill(a, 0xAB), Write(a, np.arange(4, dtype=np.int64), offset=8),
                    Copy(b, a, nbytes=40), 0x1, 0x2, Nop(), Read(b, out)])
    assert ctx.wait(f, timeout=10) is f and f.done() and f.error is None
    assert out[1:5].tolist() == [0, 1, 2, 3]
    assert out[0] == np.frombuffer(b"\xab" * 8, np.int64)[0]
    assert ctx.wait(ctx.submit([]), timeout=10).value == f.value + 1    # empty batch: a fence


def test_bad_commands_are_named_and_nothing_is_queued(ctx):
    a = ctx.alloc(16)
    for cmds, words in [([Nop(), Fill(a, 1, offset=8, nbytes=16)], "command 1 (Fill)"),
                        ([Write(a, b"x" * 17)], "bytes [0, 17) are outside"),
                        ([0x7], "unknown GhostNV opcode 0x7"),
                        (["NOP"], "is not a gpu_drv command"),
                        ([Fill(a, 256)], "must be a byte"),
                        ([Read(a, np.zeros(4, np.uint8)[::2])], "C-contiguous"),
                        ([Call(42)], "not callable"),
                        ([Write(a, 12)], "data must be bytes")]:
        with pytest.raises(GpuDriverError, match=words.replace("[", r"\[").replace(")", r"\)")
                           .replace("(", r"\(")):
            ctx.submit(cmds)
    assert ctx.stats()["fences_submitted"] == 0
    with pytest.raises(GpuDriverError, match="list of commands"):
        ctx.submit(Nop())


def test_fence_wait_timeout_names_the_fence(drv, ctx):
    gate = threading.Event()
    started = threading.Event()
    f1 = ctx.submit([Call(started.set), Call(gate.wait, (30,))])
    f2 = ctx.submit([Nop()])
    assert started.wait(10)
    t0 = time.monotonic()
    with pytest.raises(FenceTimeout) as ei:
        ctx.wait(f1, timeout=0.05)
    assert 0.04 <= time.monotonic() - t0 < 5
    assert isinstance(ei.value, TimeoutError) and ei.value.fence is f1
    assert f"fence 1 of context {ctx.id}" in str(ei.value) and "0.05 s" in str(ei.value)
    assert not f1.done() and not f2.done()            # in order: f2 waits behind f1
    with pytest.raises(FenceTimeout, match=f"fence 2 of context {ctx.id}"):
        f2.wait(0)
    gate.set()
    assert f2.wait(10).done() and f1.done()


def test_default_wait_timeout_is_command_timeout_ms():
    with GpuDriver(backend="cpu", command_timeout_ms=30, display=None) as d:
        ctx = d.create_context()
        gate = threading.Event()
        f = ctx.submit([Call(gate.wait, (30,))])
        t0 = time.monotonic()
        with pytest.raises(FenceTimeout, match="within 0.03 s"):
            f.wait()
        assert time.monotonic() - t0 < 5
        gate.set()
        f.wait(10)
        with pytest.raises(GpuDriverError, match="timeout=-1"):
            f.wait(-1)


def test_failing_command_fails_its_fence_only(ctx):
    def boom():
        raise ValueError("bad payload")
    a = ctx.alloc(8)
    f1 = ctx.submit([Fill(a, 1), Call(boom), Fill(a, 2)])
    f2 = ctx.submit([Fill(a, 3, nbytes=1)])
    with pytest.raises(CommandError) as ei:
        f1.wait(10)
    e = ei.value
    assert e.index == 1 and e.fence is f1 and isinstance(e.__cause__, ValueError)
    assert f"fence 1 of context {ctx.id}: command 1 (Call" in str(e) and "bad payload" in str(e)
    f2.wait(10)
    assert ctx.map(a).tolist() == [3, 1, 1, 1, 1, 1, 1, 1]   # Fill(a, 2) never ran


def test_batches_from_many_threads_run_on_the_context_worker(ctx):
    a = ctx.alloc(8 * 64)
    seen, lock = [], threading.Lock()

    def record(i):
        with lock:
            seen.append((i, threading.current_thread().name))
    fences, errors = [], []

    def producer(t):
        try:
            for k in range(16):
                i = t * 16 + k
                fences.append(ctx.submit([Write(a, np.array([i], np.int64), offset=8 * i),
                                          Call(record, (i,))]))
        except BaseException as e:       # surfaced below
            errors.append(e)
    threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for f in fences:
        f.wait(10)
    assert sorted(f.value for f in fences) == list(range(1, 65))
    assert sorted(i for i, _ in seen) == list(range(64))
    assert {name for _, name in seen} == {f"gpu_drv-ctx{ctx.id}-cpu"}
    assert ctx.map(a).view(np.int64).tolist() == list(range(64))
    # per producer, its batches ran in the order it submitted them
    order = [i for i, _ in seen]
    for t in range(4):
        mine = [i for i in order if i // 16 == t]
        assert mine == sorted(mine)


# ------------------------------------------------------------------------------------ pools

def test_payload_pool_exhaustion_and_free(drv, ctx):
    pool = ctx.payload_pool(slots=4, slot_size=64)
    assert ctx.payload_pool(slots=4, slot_size=64) is pool
    slots = [pool.alloc() for _ in range(4)]
    assert [s.offset for s in slots] == [0, 64, 128, 192]
    assert len({s.address for s in slots}) == 4
    with pytest.raises(PoolExhausted) as ei:
        pool.alloc()
    assert ei.value.code == ALLOC_FAIL and isinstance(ei.value, GpuAllocError)
    assert "payload pool 'payload'" in str(ei.value) and "4/4 slots of 64 B in use" in str(ei.value)
    pool.free(slots[2])
    again = pool.alloc()
    assert again.index == 2
    with pytest.raises(GpuDriverError, match="double free"):
        pool.free(slots[2])
    with pytest.raises(GpuAllocError, match="does not fit a 64 B slot"):
        pool.alloc(65)
    st = pool.stats()
    assert st["in_use"] == 4 and st["alloc_fail"] == 2 and st["high_watermark"] == 4
    with pytest.raises(GpuDriverError, match="destroy the pool"):
        ctx.free(pool.mem)
    with pytest.raises(GpuDriverError, match="already has pool"):
        ctx.payload_pool(slots=8, slot_size=64)
    with pytest.raises(GpuConfigError, match="payload_slot_size=12"):
        ctx.payload_pool(slots=1, slot_size=12, name="odd")
    for s in slots[:2] + slots[3:] + [again]:
        pool.free(s)
    assert pool.in_use == 0 and pool.available == 4


def test_payload_pool_put_and_concurrent_alloc(ctx):
    pool = ctx.payload_pool(slots=32, slot_size=16)
    s = pool.put(b"from the CPU")
    s.fence.wait(10)
    out = np.zeros(12, np.uint8)
    ctx.submit([Read(pool.mem, out, offset=s.offset)]).wait(10)
    assert bytes(out) == b"from the CPU" and s.nbytes == 12
    pool.free(s)
    held, errors = [], []

    def churn():
        try:
            for _ in range(200):
                sl = pool.alloc()
                held.append(sl.index)
                held.remove(sl.index)        # a slot is never handed out twice at once
                pool.free(sl)
        except BaseException as e:
            errors.append(e)
    ts = [threading.Thread(target=churn) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors and pool.in_use == 0 and pool.stats()["allocs"] == 801


# ------------------------------------------------------------------------------------ destroy

def test_context_destroy_frees_everything(drv):
    ctx = drv.create_context()
    keep = drv.create_context()
    k = keep.alloc(100)
    a, b = ctx.alloc(1000), ctx.alloc(2000, kind="host")
    ctx.map(b)
    pool = ctx.payload_pool(slots=8, slot_size=32)
    pool.alloc()
    f = ctx.submit([Fill(a, 5)])
    assert drv.stats()["bytes_in_use"] == 100 + 1000 + 2000 + 256
    report = ctx.destroy()
    assert report == {"context": ctx.id, "freed_allocations": 3, "freed_bytes": 3256, "pools": 1,
                      "fences_waited": report["fences_waited"], "fences_cancelled": 0,
                      "fences_running": 0, "stopped": True}
    assert f.done() and a.freed and b.freed and pool.mem.freed and pool.destroyed
    st = drv.stats()
    assert st["bytes_in_use"] == 100 and st["allocations"] == 1 and st["contexts"] == 1
    assert not ctx._b.thread.is_alive()                 # the worker was joined
    for call in (lambda: ctx.alloc(8), lambda: ctx.submit([Nop()]), lambda: ctx.map(a),
                 lambda: ctx.payload_pool()):
        with pytest.raises(ContextDestroyed, match=f"context {ctx.id} was destroyed"):
            call()
    with pytest.raises(GpuDriverError, match="destroyed"):
        pool.alloc()
    assert ctx.destroy() == report                      # idempotent
    keep.free(k)
    assert drv.stats()["bytes_in_use"] == 0


def test_context_destroy_with_a_stuck_batch_cancels_the_rest(drv, wait_until):
    ctx = drv.create_context()
    gate, started = threading.Event(), threading.Event()
    ctx.alloc(64)
    stuck = ctx.submit([Call(started.set), Call(gate.wait, (30,))])
    queued = [ctx.submit([Nop()]) for _ in range(3)]
    assert started.wait(10)
    t0 = time.monotonic()
    report = ctx.destroy(timeout=0.1)
    assert time.monotonic() - t0 < 5
    assert report["fences_cancelled"] == 3 and report["fences_running"] == 1
    assert report["freed_bytes"] == 64 and report["stopped"] is False
    assert drv.stats()["bytes_in_use"] == 0
    for f in queued:
        assert f.done()
        with pytest.raises(ContextDestroyed, match="before this batch ran"):
            f.wait(1)
    assert not stuck.done()
    gate.set()
    assert wait_until(lambda: not ctx._b.thread.is_alive(), 10)
    assert stuck.done() and stuck.error is None


def test_driver_close_destroys_contexts():
    d = GpuDriver(backend="cpu", display=None)
    c1, c2 = d.create_context(), d.create_context()
    c1.alloc(10)
    c2.payload_pool(slots=2, slot_size=8)
    d.close()
    assert not c1.alive and not c2.alive and d.stats()["bytes_in_use"] == 0
    with pytest.raises(GpuDriverError, match="closed"):
        d.create_context()


# ------------------------------------------------------------------------------------ kernel

# a device module at module level: the kernel build reads a handler's globals (``g``)
probe = gd.Module("gpu_drv_probe")


@probe.handler(4301)
def triple(ctx, task):
    g.emit_host(ctx, 4302, g.meta0(task) * 3, g.meta1(task))
    return 0


def _probe_module():
    return probe


def _roundtrip(k, tag):
    from ggmk import task as taskmod
    k.push(taskmod.make(4, type=4301, meta0=np.arange(4), meta1=tag))
    out = k.pull_until(4, timeout=60)
    assert set(out["type"].tolist()) == {4302} and set(out["meta1"].tolist()) == {tag}
    return sorted(out["meta0"].tolist())


def test_kernel_launch_and_reset_run_a_module_on_the_cpu_target(drv):
    with pytest.raises(GpuDriverError, match="no kernel was launched"):
        drv.reset()
    m = _probe_module()
    k1 = drv.launch([m], workers=1)
    assert k1.target_name == "cpu" and k1.alive() and drv.kernel is k1
    assert _roundtrip(k1, 1) == [0, 3, 6, 9]
    with pytest.raises(GpuDriverError, match="already running"):
        drv.launch([m])
    k2 = drv.reset(timeout=30)
    assert k2 is not k1 and not k1.alive() and k2.alive() and drv.kernel is k2
    assert drv.last_reset == {"stopped_cleanly": True, "error": None}
    assert _roundtrip(k2, 2) == [0, 3, 6, 9]              # same module, fresh kernel
    assert k2.config.blocks == 1                          # same options
    st = drv.stats()["kernel"]
    assert st == {"running": True, "target": "cpu", "launches": 1, "resets": 1}
    drv.stop_kernel()
    assert not k2.alive() and drv.stats()["kernel"]["running"] is False
    k3 = drv.launch([m], workers=1)                       # launch again after a stop
    assert _roundtrip(k3, 3) == [0, 3, 6, 9]


def test_compute_disabled_refuses_launch():
    with GpuDriver(backend="cpu", enable_compute=False, display=None) as d:
        with pytest.raises(GpuDriverError, match="enable_compute=False"):
            d.launch([_probe_module()])


# ------------------------------------------------------------------------------------ displays

def test_no_virtio_gpu_means_no_displays(drv):
    assert drv.displays() == []
    with pytest.raises(GpuDriverError, match="no display to set"):
        drv.set_mode(0, "640x480")
    with GpuDriver(backend="cpu", enable_display=False) as d:
        assert d.displays() == [] and "enable_display=False" in d.display_note


@pytest.mark.qemu
def test_displays_and_mode_set_through_virtio(tmp_path):
    from ggmk.drivers.virtio.backend import BackendNotFound, find_backend
    try:
        find_backend()
    except BackendNotFound:
        pytest.skip("QEMU's vhost-user-gpu is not installed")
    from ggmk.modules.display import DisplayModule
    disp = DisplayModule.open([(800, 600)], workdir=tmp_path)
    with GpuDriver(backend="cpu", display=disp) as d:
        (info,) = d.displays()
        assert str(info.mode) == "800x600"
        d.set_mode(0, "640x480")
        assert str(d.displays()[0].mode) == "640x480"
    disp.close()


# ------------------------------------------------------------------------------------ cuda

@pytest.mark.cuda
def test_cuda_backend_memory_commands_and_fences():
    with GpuDriver(backend="cuda", display=None, memory_reservation="64M") as d:
        assert d.backend.name == "cuda" and d.device.get("pci_bus_id")
        ctx = d.create_context()
        assert ctx._b.stream.is_nonblocking
        a, b = ctx.alloc(1 << 20), ctx.alloc(4096, kind="host")
        out = np.zeros(16, np.uint8)
        f = ctx.submit([Fill(a, 9), Write(a, b"cuda!", offset=3), Copy(b, a, nbytes=4096),
                        Read(a, out)])
        f.wait(30)
        assert bytes(out[3:8]) == b"cuda!" and out[0] == 9
        assert bytes(ctx.map(b)[3:8]) == b"cuda!"
        ctx.unmap(b)
        v = ctx.map(a)
        v[:2] = [1, 2]
        ctx.unmap(a)
        ctx.submit([Read(a, out)]).wait(30)
        assert out[:3].tolist() == [1, 2, 9]
        pool = ctx.payload_pool(slots=4, slot_size=64)
        s = pool.put(b"payload")
        s.fence.wait(30)
        with pytest.raises(GpuDriverError, match="cpu backend only"):
            ctx.submit([Call(print)])
        report = ctx.destroy()
        assert report["freed_bytes"] == (1 << 20) + 4096 + 256
        assert d.stats()["bytes_in_use"] == 0


@pytest.mark.cuda
def test_cuda_backend_launch_and_reset():
    with GpuDriver(backend="cuda", display=None) as d:
        m = _probe_module()
        k1 = d.launch([m], workers=2)
        assert k1.target_name == "cuda" and _roundtrip(k1, 1) == [0, 3, 6, 9]
        k2 = d.reset()
        assert not k1.alive() and _roundtrip(k2, 2) == [0, 3, 6, 9]
