"""``ggmk build --kernel``: what each device handler costs on the GPU, without a GPU.

For every handler a probe kernel that calls it once is compiled to PTX with numba-cuda (libNVVM)
and assembled for ``sm_90`` with ``ptxas -v``; the report gives its registers, local-memory
(spill) bytes and shared memory. Handlers above the register limit (default 32) are compiled
no-inline into the persistent kernel (so their register pressure stays in their own frame), and
the whole kernel is then assembled the same way. Any spill fails the build unless allowed::

    from ggmk.device.build import build_report
    rep = build_report([phys], reg_limit=32)       # raises BuildError on a spill
    print(rep.table())

Toolchain: ``ptxas`` from ``$CUDA_HOME/bin``, ``/usr/local/cuda*/bin``, ``PATH`` or the
``nvidia-cuda-nvcc`` wheel, and libNVVM as numba-cuda finds it. NVRTC is not needed: when it is
absent the compute capability is forced (numba-cuda only asks NVRTC which ones it supports).
The report must run in a process where the CUDA simulator is off.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from ggmk.device import codegen, layout
from ggmk.errors import GgmkError


class BuildError(GgmkError):
    """The kernel build failed (spill, or no toolchain); the message says what to do."""


class ToolchainMissing(BuildError):
    pass


INSTALL_HINT = ("install the CUDA toolkit (ptxas and libnvvm; set CUDA_HOME) or the pip "
                "packages 'nvidia-cuda-nvcc-cu12' and 'numba-cuda' (pip install 'ggmk[gpu]')")


def find_ptxas() -> str:
    cands = []
    if os.environ.get("CUDA_HOME"):
        cands.append(os.path.join(os.environ["CUDA_HOME"], "bin", "ptxas"))
    w = shutil.which("ptxas")
    if w:
        cands.append(w)
    cands += sorted(glob.glob("/usr/local/cuda*/bin/ptxas"), reverse=True)
    try:
        import nvidia  # noqa: F401  (pip CUDA wheels)
        for p in nvidia.__path__:
            cands += glob.glob(os.path.join(p, "cuda_nvcc", "bin", "ptxas"))
            cands += glob.glob(os.path.join(p, "cu*", "bin", "ptxas"))
    except ImportError:
        pass
    for c in cands:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise ToolchainMissing(f"ptxas not found; {INSTALL_HINT}")


def _cuda_home_guess() -> str | None:
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for d in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if glob.glob(os.path.join(d, "lib*", "libnvvm.so*")) or \
                glob.glob(os.path.join(d, "nvvm", "lib64", "libnvvm.so*")):
            return d
    return None


def prepare_numba_cuda(cc=(9, 0)):
    """Import the real numba.cuda ready to emit PTX on a machine without a GPU or NVRTC."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise BuildError("the kernel build report needs the real numba-cuda: run it in a "
                         "process without NUMBA_ENABLE_CUDASIM=1")
    home = _cuda_home_guess()
    if home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = home
    try:
        from numba import cuda  # noqa: F401
        from numba.cuda import config as ccfg
        from numba.cuda import cuda_paths as cp
    except ImportError as e:
        raise ToolchainMissing(f"numba-cuda is not importable ({e}); {INSTALL_HINT}") from e
    if not hasattr(cuda, "compile_ptx"):
        raise BuildError("numba.cuda is the simulator in this process; run the build report "
                         "in a process without NUMBA_ENABLE_CUDASIM=1")
    if not cuda.is_available():
        # compiling device functions asks the current device for its compute capability;
        # with no GPU, answer with the architecture we build for
        import types as _t
        import numba.cuda.dispatcher as _disp
        _disp.get_current_device = lambda: _t.SimpleNamespace(compute_capability=cc)
    try:
        cp._get_nvrtc_path()
    except Exception:
        # NVRTC is only asked for the list of supported architectures: force ours instead,
        # and resolve the other paths (libNVVM, libdevice) without it
        ccfg.FORCE_CUDA_CC = cc
        if not hasattr(cp.get_cuda_paths, "_cached_result"):
            def safe(f):
                try:
                    return f()
                except Exception:
                    return cp._env_path_tuple("missing", None)
            cp.get_cuda_paths._cached_result = {
                "nvrtc": cp._env_path_tuple("missing", None),
                "nvvm": safe(cp._get_nvvm_path), "libdevice": safe(cp._get_libdevice_path),
                "cudalib_dir": safe(cp._get_cudalib_dir),
                "static_cudalib_dir": safe(cp._get_static_cudalib_dir),
                "include_dir": safe(cp._get_include_dir)}
    return cuda


_PTXAS_FUNC = re.compile(r"Compiling entry function '([^']+)'|Function properties for (\S+)")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def ptxas_stats(ptx: str, arch="sm_90", ptxas=None, maxrregcount=None) -> dict:
    """{function: {registers, spill_stores, spill_loads, stack, smem, entry}} from
    ``ptxas -v`` (``maxrregcount`` caps registers per thread, as a launch bound would)."""
    ptxas = ptxas or find_ptxas()
    extra = [f"-maxrregcount={maxrregcount}"] if maxrregcount else []
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        p = subprocess.run([ptxas, f"-arch={arch}", "-v", *extra, src, "-o",
                            os.path.join(d, "k.cubin")],
                           capture_output=True, text=True)
    if p.returncode != 0:
        raise BuildError(f"ptxas failed:\n{p.stderr[-3000:]}")
    out: dict = {}
    cur = None
    for line in (p.stdout + p.stderr).splitlines():
        m = _PTXAS_FUNC.search(line)
        if m:
            cur = m.group(1) or m.group(2)
            out.setdefault(cur, {"registers": 0, "spill_stores": 0, "spill_loads": 0,
                                 "stack": 0, "smem": 0, "entry": False})
            if m.group(1):
                out[cur]["entry"] = True
            continue
        if cur is None:
            continue
        m = _STACK.search(line)
        if m:
            out[cur].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                            spill_loads=int(m.group(3)))
        m = _USED.search(line)
        if m:
            out[cur]["registers"] = int(m.group(1))
            m = _SMEM.search(line)
            if m:
                out[cur]["smem"] = int(m.group(1))
    return out


@dataclass
class HandlerCost:
    module: str
    name: str
    type: int
    granularity: str
    registers: int
    spill_bytes: int
    stack_bytes: int
    shared_bytes: int
    noinline: bool

    def row(self) -> str:
        return (f"{self.module + '.' + self.name:32} {self.type:>8} {self.granularity:7} "
                f"{self.registers:>5} {self.spill_bytes:>6} {self.shared_bytes:>7}"
                f"  {'noinline' if self.noinline else ''}")


@dataclass
class Report:
    arch: str
    reg_limit: int
    handlers: list = field(default_factory=list)
    kernel: dict = field(default_factory=dict)

    @property
    def spills(self) -> list:
        bad = [h for h in self.handlers if h.spill_bytes]
        return bad + ([self.kernel] if self.kernel.get("spill_bytes") else [])

    def table(self) -> str:
        L = [f"{'handler':32} {'type':>8} {'gran':7} {'regs':>5} {'spill':>6} {'smem':>7}"]
        L += [h.row() for h in self.handlers]
        k = self.kernel
        if k:
            L.append(f"{'(persistent kernel)':32} {'':>8} {'':7} {k['registers']:>5} "
                     f"{k['spill_bytes']:>6} {k['smem']:>7}")
        return "\n".join(L)

    def as_dict(self) -> dict:
        return {"arch": self.arch, "reg_limit": self.reg_limit,
                "handlers": [vars(h) for h in self.handlers], "kernel": self.kernel}


def _probe_source(i, h, plan) -> str:
    if h.granularity == "scalar":
        call = f"r = h_{i}(ctx, D[0:W])"
        pre = ""
    else:
        pre = "    sm = cuda.shared.array(SMEM_WORDS, int64)\n"
        call = f"r = h_{i}(ctx, D[0:W], cuda.threadIdx.x % 32, 32, sm, D[2])"
    return (f"def probe_{i}(D, M, A):\n    S = (D, M, A)\n{pre}"
            f"    ctx = (S, D[3], D[4], D[0], D[1])\n    {call}\n    D[5] = r\n")


def compute_capability(arch: str) -> tuple[int, int]:
    """``sm_90`` -> (9, 0), ``sm_100`` -> (10, 0): the last digit is the minor version."""
    m = re.fullmatch(r"sm_([1-9][0-9]*)([0-9])", str(arch))
    if m is None:
        raise ValueError(f"arch={arch!r}: allowed sm_ and the compute capability's digits "
                         f"(sm_80, sm_90, sm_100)")
    return int(m.group(1)), int(m.group(2))


def build_report(modules, *, reg_limit: int = 32, allow_spill: bool = False, types=None,
                 arch: str = "sm_90", whole_kernel: bool = True, maxrregcount: int | None = None,
                 **config) -> Report:
    """Compile every handler (and the persistent kernel) for ``arch`` and report its costs.
    Raises :class:`BuildError` on a local-memory spill unless ``allow_spill``."""
    cc = compute_capability(arch)
    cuda = prepare_numba_cuda(cc)
    from numba.cuda import types as ct
    from ggmk.device.targets import get_target
    cuda_target = get_target("cuda")
    ptxas = find_ptxas()
    modules = list(modules)
    handlers = codegen.resolve_handlers(modules, types)
    chans = codegen.resolve_channels(modules, handlers, types)
    base = dict(cuda_target.DEFAULTS)
    base["blocks"] = config.pop("workers", None) or 132
    base.update(config)
    cfg = layout.DeviceConfig(**base).validate()
    plan = layout.plan(cfg, len(handlers), codegen.smem_words(handlers, cfg.threads),
                       len(chans), sum(len(c.subs) for c in chans))
    sig = (ct.int64[::1], ct.int64[::1], ct.uint8[::1])
    rep = Report(arch, reg_limit)
    built = codegen.build(handlers, plan, cuda_target, chans=chans)
    ns = built.ns
    costly = []
    for i, h in enumerate(handlers):
        exec(compile(_probe_source(i, h, plan), f"<probe {h.name}>", "exec"), ns)
        ptx, _ = cuda.compile_ptx(ns[f"probe_{i}"], sig, cc=cc)
        st = next(s for s in ptxas_stats(ptx, arch, ptxas, maxrregcount).values()
                  if s["entry"])
        hc = HandlerCost(h.module.name, h.name, int(h.type), h.granularity, st["registers"],
                         st["spill_stores"] + st["spill_loads"], st["stack"],
                         max(st["smem"], h.shared_bytes), st["registers"] > reg_limit)
        if hc.noinline:
            costly.append(i)
        rep.handlers.append(hc)
    if whole_kernel:
        kbuilt = codegen.build(handlers, plan, cuda_target, noinline=tuple(costly),
                               chans=chans)
        ptx = kernel_ptx(kbuilt, sig, cc)
        stats = ptxas_stats(ptx, arch, ptxas, maxrregcount)
        entry = next(s for s in stats.values() if s["entry"])
        rep.kernel = {"registers": entry["registers"], "smem": entry["smem"],
                      "spill_bytes": sum(s["spill_stores"] + s["spill_loads"]
                                         for s in stats.values()),
                      "functions": len(stats), "noinline": [handlers[i].name for i in costly]}
    if rep.spills and not allow_spill:
        names = [getattr(h, "name", "persistent kernel") for h in rep.spills]
        raise BuildError(f"local-memory spill in {names} (registers > what {arch} can keep); "
                         f"simplify the handler or build with allow_spill=True\n{rep.table()}")
    return rep


def kernel_ptx(built, sig, cc) -> str:
    """PTX of the persistent kernel with the no-inline marks applied: a first compile makes the
    handlers' device functions, they are marked, and the second compile links the marked ones
    (the dispatchers reuse their compiled overloads)."""
    from numba import cuda
    ptx, _ = cuda.compile_ptx(built.ns["kernel_body"], sig, cc=cc)
    if mark_noinline(built):
        ptx, _ = cuda.compile_ptx(built.ns["kernel_body"], sig, cc=cc)
    return ptx


def mark_noinline(built) -> int:
    """Add LLVM ``noinline`` to the compiled no-inline handlers. Returns how many were marked."""
    n = 0
    for i in getattr(built, "noinline", ()):
        disp = built.ns[f"h_{i}"]
        for cres in getattr(disp, "overloads", {}).values():
            mod = cres.library._module
            fn = mod.globals.get(cres.fndesc.mangled_name)
            if fn is not None:
                fn.attributes.discard("alwaysinline")
                fn.attributes.add("noinline")
                n += 1
    return n
