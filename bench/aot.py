"""``fusedssl bench aot``: compile every GPU kernel ahead of time for a real target, without a GPU, and check its
resources: the CI gate for defects that only a GPU compile shows (spills, shared memory, compile errors).

Triton: every public op with a Triton provider runs forward and backward on CPU tensors at the published shapes
(``SCENARIOS``) while ``_triton.gpu_paths()`` makes the wrappers pick the launch configurations they pick on a GPU and
``JITFunction.run`` records each launch instead of running it. Each recorded launch is then compiled through the
kernel's own JIT path (``warmup``: Triton's own argument specialisation) against a stand-in driver whose target is
``GPUTarget("cuda", arch, 32)``, into an empty cache, so ptxas runs for every configuration and its ``-v`` log gives
registers, spills and stack. Shared memory is the compiled kernel's own figure.
CUDA C++: every csrc/*.cu through ``nvcc -Xptxas -v`` for the same architecture, with torch's half-precision flags.

A failure is: a compile error (any scenario), a spill or stack frame in any kernel at a published ("realistic")
shape, shared memory over the architecture's per-block opt-in limit, a grid over CUDA's limits, a half-precision GEMM
that does not reach the tensor cores (no wgmma on sm_90, no mma on sm_80), a CUDA kernel that spills or has a stack
frame, or a @triton.jit kernel that no scenario launched. Edge scenarios (odd sizes, strided and mixed inputs) must
compile; their spills are listed but allowed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Per-block shared memory a kernel may opt into (CUDA programming guide, compute capabilities table).
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}
# PTX of tensor-core matrix products: warp-level mma on every architecture, plus warpgroup wgmma on Hopper and tcgen05
# on Blackwell (Triton picks mma.sync for dots too small for the wider instructions).
TENSOR_CORE_PTX = ("mma.sync", "wgmma", "tcgen05")
GRID_LIMIT = (2**31 - 1, 65535, 65535)
# torch's COMMON_NVCC_FLAGS for extensions (the .cu files are compiled with them by setup.py)
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]


@dataclass
class Result:
    """One compiled kernel configuration (or one CUDA kernel) and what the compile said about it."""

    kernel: str
    scenario: str
    realistic: bool
    arch: int
    config: str = ""
    launches: int = 1
    registers: int = -1
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    shared: int = 0
    grid: tuple = ()
    tensor_cores: bool | None = None  # for GEMM kernels with half-precision operands
    fp_fusion: bool | None = None  # Triton launches: whether FMA contraction was asked for (kernels._triton.LAUNCH)
    error: str = ""
    problems: list[str] = field(default_factory=list)


_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def _parse_ptxas(log: str) -> tuple[int, int, int, int]:
    """(registers, spill stores, spill loads, stack) of the last function in a ptxas -v log."""
    regs = [int(x) for x in _REGS.findall(log)]
    spills = _PTXAS.findall(log)
    stack, st, ld = (int(x) for x in spills[-1]) if spills else (0, 0, 0)
    return (regs[-1] if regs else -1), st, ld, stack


# ------------------------------------------------------------------------------------------ Triton: the scenarios


def _grad_inputs(shape, dtype, n_views, layout="contiguous"):
    import torch

    out = []
    for _ in range(n_views):
        if layout == "column-major":
            x = torch.randn(shape[1], shape[0]).T.to(dtype)
        elif layout == "strided":
            x = torch.randn(shape[0], 2 * shape[1])[:, ::2].to(dtype)
        else:
            x = torch.randn(*shape).to(dtype)
        out.append(x.requires_grad_())
    return out


def _backward(loss, xs):
    import torch

    torch.autograd.grad(loss, [x for x in xs if x.requires_grad])


def _op_scenarios(n: int, d: int, dtype, layout: str = "contiguous") -> dict[str, Callable[[], None]]:
    """Every Triton provider, forward and backward, at one (N, D), dtype and layout."""
    from fusedssl import kernels

    def pair(fn):
        def run():
            za, zb = _grad_inputs((n, d), dtype, 2, layout)
            _backward(fn(za, zb), [za, zb])
        return run

    def one(fn):
        def run():
            (z,) = _grad_inputs((n, d), dtype, 1, layout)
            _backward(fn(z), [z])
        return run

    def four(fn):
        def run():
            xs = _grad_inputs((n, d), dtype, 4, layout)
            _backward(fn(*xs), xs[:2])
        return run

    kw = {"backend": "triton", "check_finite": False}
    return {
        "barlow_twins_loss": pair(lambda a, b: kernels.barlow_twins_loss(a, b, **kw)),
        "barlow_twins_loss[hsic,tsai]": pair(lambda a, b: kernels.barlow_twins_loss(
            a, b, lam=1 / 128, normalize="tsai", off_diagonal_target=-1.0, **kw)),
        "vicreg_covariance": one(lambda z: kernels.vicreg_covariance(z, **kw)),
        "frossl_loss": pair(lambda a, b: kernels.frossl_loss([a, b], **kw)),
        "frossl_loss[legacy]": pair(lambda a, b: kernels.frossl_loss([a, b], variant="legacy", **kw)),
        "log_frobenius": one(lambda z: kernels.log_frobenius(z, **kw)),
        "matrix_ssl_loss": four(lambda *x: kernels.matrix_ssl_loss(*x, **kw)),
        "kernel_ssl_loss": four(lambda *x: kernels.kernel_ssl_loss(*x, **kw)),
        **{f"col_normalize[{m}]": one(lambda z, m=m: kernels.col_normalize(z, m, **kw).float().square().sum())
           for m in ("bn", "std", "l2", "center", "std_l2")},
        "row_normalize": one(lambda z: kernels.row_normalize(z, **kw).float().square().sum()),
    }


# (ops, shapes) at the published shapes: Barlow Twins / VICReg per GPU (256) and gathered over 8 GPUs (2048) at the
# 8192 projector; FroSSL on both sides of N = D; Matrix-SSL / Kernel-SSL at m 256 and 1024, D 2048.
PUBLISHED = [
    (("barlow_twins_loss", "vicreg_covariance"), [(256, 8192), (2048, 8192)]),
    # the D x D side: a gathered batch over a narrow projector (N > D, few tiles, a long K split over programs)
    (("barlow_twins_loss", "vicreg_covariance"), [(4096, 512)]),
    (("barlow_twins_loss[hsic,tsai]",), [(2048, 8192)]),
    (("frossl_loss", "frossl_loss[legacy]", "log_frobenius"), [(256, 2048), (2048, 1024)]),
    (("matrix_ssl_loss",), [(256, 2048), (1024, 2048)]),
    (("kernel_ssl_loss",), [(1024, 2048)]),
    (("col_normalize[bn]", "col_normalize[std]", "col_normalize[l2]", "col_normalize[center]",
      "col_normalize[std_l2]", "row_normalize"), [(256, 8192)]),
]
EDGE_SHAPES = [(8, 16), (33, 48), (2, 3)]


@dataclass
class Scenario:
    name: str
    realistic: bool
    run: Callable[[], None]
    tf32: bool = False


def suite_scenarios() -> Iterator[Scenario]:
    """The Triton launches of the GPU record (bench/suite.py): its reduced verify grid and its kernel benchmarks, so
    a cache compiled from them (``--cache``) holds every specialisation the record needs."""
    import torch

    from . import bench_covariance, bench_frobenius, flops, verify
    from .suite import RECORD_KERNEL_SHAPES, RECORD_SHAPES

    def run_verify():
        verify.run(device=torch.device("cpu"), backends=("triton",), dtypes=("bfloat16", "float32"),
                   shapes=RECORD_SHAPES, seed=0, out=io.StringIO())

    # verify deliberately feeds odd sizes and strided views: an edge scenario (compile errors fail, spills are listed)
    yield Scenario("verify record grid", False, run_verify)
    for stage, ops in (("kernels:covariance", bench_covariance.OPS), ("kernels:frobenius", bench_frobenius.OPS)):
        for n, d in RECORD_KERNEL_SHAPES[stage]:
            for op in ops:  # bf16, the benchmarks' dtype on a GPU; forward alone and forward + backward
                fn, count, grads = flops.objectives("triton")[op]
                for backward in (False, True):
                    yield Scenario(f"bench {op} {n}x{d}", True,
                                   flops.fwd_bwd(fn, [(n, d)] * count, torch.bfloat16, grads, backward))
    for m, d in [(1024, 2048), (256, 2048)]:
        yield Scenario(f"bench matrix_log {m}x{d}", True, _op_scenarios(m, d, torch.float32)["matrix_ssl_loss"])


def scenarios(quick: bool = False) -> Iterator[Scenario]:
    """The published shapes in bf16, fp16 and fp32 (fp32 with TF32 off and on), then the edge cases."""
    import torch

    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16, torch.float32)
    for ops, shapes in PUBLISHED:
        for n, d in shapes[:1] if quick else shapes:
            for dt in dtypes:
                for tf32 in (False, True) if dt == torch.float32 else (False,):
                    table = _op_scenarios(n, d, dt)
                    for op in ops:
                        yield Scenario(f"{op} {n}x{d} {str(dt)[6:]}{' tf32' if tf32 else ''}", True, table[op], tf32)
    if quick:
        return
    for n, d in EDGE_SHAPES:
        for op, run in _op_scenarios(n, d, torch.bfloat16).items():
            yield Scenario(f"{op} {n}x{d} bfloat16", False, run)
    for layout in ("column-major", "strided"):
        for op, run in _op_scenarios(64, 96, torch.float32, layout).items():
            yield Scenario(f"{op} 64x96 float32 {layout}", False, run)
    for op, run in _op_scenarios(64, 96, torch.float64).items():
        yield Scenario(f"{op} 64x96 float64", False, run)

    def mixed():
        from fusedssl import kernels

        za = torch.randn(64, 96, dtype=torch.bfloat16, requires_grad=True)
        zb = torch.randn(64, 96, requires_grad=True)
        _backward(kernels.barlow_twins_loss(za, zb, backend="triton", check_finite=False), [za, zb])

    yield Scenario("barlow_twins_loss 64x96 bfloat16 + float32 views", False, mixed)

    def default_fp64():
        before = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            _op_scenarios(64, 96, torch.float32)["matrix_ssl_loss"]()
        finally:
            torch.set_default_dtype(before)

    yield Scenario("matrix_ssl_loss 64x96 float32, default dtype float64", False, default_fp64)


# ------------------------------------------------------------------------------------------ Triton: record, compile


@dataclass
class Launch:
    fn: object
    args: tuple
    kwargs: dict
    grid: tuple
    scenario: str
    realistic: bool


@contextlib.contextmanager
def _tf32(on: bool) -> Iterator[None]:
    import torch

    m = torch.backends.cuda.matmul
    before = m.fp32_precision
    m.fp32_precision = "tf32" if on else before
    try:
        yield
    finally:
        m.fp32_precision = before


def record(scens: list[Scenario]) -> tuple[list[Launch], list[Result]]:
    """Run the scenarios with every Triton launch recorded, not run; wrapper crashes become failed Results."""
    from fusedssl.kernels import _triton
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    current: list[Scenario] = []
    real_run = JITFunction.run

    def fake_run(self, *args, grid, warmup, **kwargs):
        s = current[0]
        g = tuple(grid) if not callable(grid) else grid
        launches.append(Launch(self, args, kwargs, g, s.name, s.realistic))
        return None

    failed = []
    JITFunction.run = fake_run
    try:
        with _triton.gpu_paths():
            for s in scens:
                current[:] = [s]
                try:
                    with _tf32(s.tf32):
                        s.run()
                except Exception as e:  # noqa: BLE001 - a wrapper that crashes on its GPU path is a finding
                    failed.append(Result("(wrapper)", s.name, s.realistic, 0, error=f"{type(e).__name__}: {e}"))
    finally:
        JITFunction.run = real_run
    return launches, failed


class _TargetDriver:
    """The part of Triton's driver interface that compiling needs, for a GPU that is not there."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def is_active(self):
        return True


def _dot_dtypes(launch: Launch) -> set[str]:
    import torch

    return {str(a.dtype) for a in launch.args if isinstance(a, torch.Tensor) and a.dtype != torch.float32}


def compile_launches(launches: list[Launch], arch: int) -> list[Result]:
    """Compile each distinct launch for sm_<arch>; one Result per compiled configuration (launches counted)."""
    import triton
    from triton.runtime import driver

    previous = driver._active  # None without a GPU: reset_active() would then look for a real driver and fail
    driver.set_active(_TargetDriver(arch))
    # each JIT function keeps its compiled kernels per device in memory, and the stand-in driver calls every target
    # device 0: without this, a second architecture in one process got the first one's kernels, never compiled
    for fn in {id(ln.fn): ln.fn for ln in launches}.values():
        fn.device_caches.clear()
    triton.knobs.nvidia.dump_ptxas_log = True
    by_kernel: dict[int, Result] = {}
    out: list[Result] = []
    try:
        for ln in launches:
            name = ln.fn.fn.__name__
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    k = ln.fn.warmup(*ln.args, grid=ln.grid, **ln.kwargs)
            except Exception as e:  # noqa: BLE001 - the compile error is the finding
                msg = str(e).strip().splitlines()
                out.append(Result(name, ln.scenario, ln.realistic, arch, error=" | ".join(msg[-3:])[:600]))
                continue
            prev = by_kernel.get(id(k))
            if prev is not None:  # the same specialisation: compiled once, launched again
                prev.launches += 1
                prev.realistic |= ln.realistic
                prev.grid = max(prev.grid, tuple(ln.grid))
                continue
            regs, st, ld, stack = _parse_ptxas(buf.getvalue())
            consts = {kk: v for kk, v in ln.kwargs.items() if kk.isupper()}
            r = Result(name, ln.scenario, ln.realistic, arch, config=json.dumps(consts, default=str),
                       registers=regs, spill_stores=st, spill_loads=ld, stack=stack,
                       shared=int(getattr(k.metadata, "shared", 0)), grid=tuple(ln.grid),
                       fp_fusion=ln.kwargs.get("enable_fp_fusion") is True)
            if "tl.dot" in ln.fn.src and _dot_dtypes(ln) & {"torch.bfloat16", "torch.float16"}:
                r.tensor_cores = any(op in k.asm.get("ptx", "") for op in TENSOR_CORE_PTX)
            by_kernel[id(k)] = r
            out.append(r)
    finally:
        driver._active = previous
    return out


def triton_kernels() -> set[str]:
    """Every @triton.jit kernel in fusedssl.kernels (each must be exercised by some scenario). Kernels are named
    ``_<op>_kernel`` (style.md); other @triton.jit functions are device helpers inlined into them."""
    import importlib
    import pkgutil

    import fusedssl.kernels as pkg
    from triton.runtime.jit import JITFunction

    names = set()
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"fusedssl.kernels.{mod.name}")
        names |= {v.fn.__name__ for v in vars(m).values()
                  if isinstance(v, JITFunction) and v.fn.__name__.endswith("_kernel")}
    return names


# ------------------------------------------------------------------------------------------ CUDA C++


def cuda_resources(arch: int, nvcc: str | None = None) -> list[Result]:
    """nvcc -Xptxas -v of every csrc/*.cu for sm_<arch>: one Result per kernel."""
    nvcc = nvcc or shutil.which("nvcc")
    out: list[Result] = []
    for cu in sorted((ROOT / "csrc").glob("*.cu")):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [nvcc, *NVCC_FLAGS, f"-arch=sm_{arch}", "-Xptxas", "-v", "-c", str(cu), "-o",
                   str(Path(tmp) / "k.o")]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "csrc")
        if proc.returncode:
            out.append(Result(cu.name, cu.name, True, arch, error=proc.stderr.strip()[-600:]))
            continue
        # ptxas prints, per function: "Compiling entry function 'X'", "Function properties for X", the
        # stack/spill line, then "Used N registers, ... M bytes smem"
        for block in proc.stderr.split("Function properties for ")[1:]:
            fname = block.splitlines()[0].strip()
            regs, st, ld, stack = _parse_ptxas(block)
            smem = re.search(r"(\d+) bytes smem", block)
            if regs < 0:  # a device function's properties, not a kernel's
                continue
            out.append(Result(_demangle(fname), cu.name, True, arch, registers=regs, spill_stores=st,
                              spill_loads=ld, stack=stack, shared=int(smem.group(1)) if smem else 0))
    return out


def _demangle(name: str) -> str:
    """``col_stats_vec_kernel<float>`` from the mangled name (c++filt where it exists)."""
    try:
        name = subprocess.run(["c++filt", name], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return name
    name = re.sub(r"fusedssl::\(anonymous namespace\)::", "", name)
    return re.sub(r"\(.*\)$", "", name).replace("void ", "")


# ------------------------------------------------------------------------------------------ the verdict


def judge(results: list[Result], arch: int, expected_kernels: set[str] | None = None) -> list[str]:
    """Fill each Result's problems; return every failure as a line."""
    fails = []
    for r in results:
        if r.error:
            r.problems.append(f"compile error: {r.error}")
        elif r.registers < 0:
            r.problems.append("no ptxas report (a kernel compiled earlier was reused): resources unknown")
        if r.realistic and (r.spill_stores or r.spill_loads):
            r.problems.append(f"spills {r.spill_stores} B stores / {r.spill_loads} B loads")
        if r.realistic and r.stack:
            r.problems.append(f"{r.stack} B stack frame")
        if r.shared > SMEM_LIMIT.get(arch, 227 * 1024):
            r.problems.append(f"{r.shared} B shared memory > {SMEM_LIMIT.get(arch)} B")
        if r.grid and any(g > lim for g, lim in zip(r.grid, GRID_LIMIT, strict=False)):
            r.problems.append(f"grid {r.grid} over CUDA's limits")
        if r.realistic and r.tensor_cores is False:
            r.problems.append("half-precision GEMM without tensor-core instructions")
        if r.fp_fusion is False:
            r.problems.append("launched without kernels._triton.LAUNCH: FMA contraction left to the Triton version")
        fails += [f"sm_{arch} {r.kernel} [{r.scenario}] {p}" for p in r.problems]
    if expected_kernels is not None:
        seen = {r.kernel for r in results}
        fails += [f"sm_{arch} {k}: no scenario launched it" for k in sorted(expected_kernels - seen)]
    return fails


def run(arch: int, *, triton_part: bool = True, cuda_part: bool = True, quick: bool = False, suite: bool = False,
        out=None) -> tuple[list[Result], list[str]]:
    out = out or sys.stdout
    results, fails = [], []
    if triton_part:
        t0 = time.time()
        scens = list(suite_scenarios() if suite else scenarios(quick))
        launches, crashed = record(scens)
        compiled = compile_launches(launches, arch)
        tr = crashed + compiled
        fails += judge(tr, arch, None if quick or suite else triton_kernels())
        print(f"triton sm_{arch}: {len(scens)} scenarios, {len(launches)} launches, {len(compiled)} compiled "
              f"configurations in {time.time() - t0:.0f} s", file=out)
        results += tr
    if cuda_part:
        if shutil.which("nvcc") is None:
            print("cuda: nvcc is not on PATH; the CUDA C++ part is skipped", file=out)
        else:
            cu = cuda_resources(arch)
            fails += judge(cu, arch)
            results += cu
    print(f"{'kernel':24s} {'launches':>8s} {'regs':>5s} {'spill st/ld':>12s} {'stack':>6s} {'smem':>7s} "
          f"{'tensor cores':>12s}  first scenario", file=out)
    for r in results:
        tc = "" if r.tensor_cores is None else ("yes" if r.tensor_cores else "NO")
        flag = "  <- " + "; ".join(r.problems) if r.problems else ""
        print(f"{r.kernel:24s} {r.launches:8d} {r.registers:5d} {r.spill_stores:5d}/{r.spill_loads:<6d} "
              f"{r.stack:6d} {r.shared:7d} {tc:>12s}  {r.scenario}{flag}", file=out)
    return results, fails


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench aot", description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, action="append", help="compute capability x 10 (default: 90; repeatable)")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    p.add_argument("--no-cuda", action="store_true", help="skip csrc/")
    p.add_argument("--quick", action="store_true", help="bf16 at one published shape per op (no edge cases)")
    p.add_argument("--json", default=None, help="write every result (and the failures) to this file")
    p.add_argument("--suite", action="store_true", help="the launches of the GPU record (bench all) instead")
    p.add_argument("--cache", default=None,
                   help="keep the compiled kernels in this Triton cache folder (for bench/gpu_suite.sh to bring "
                        "along: it must be compiled with the GPU machine's triton version); must be empty")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    if args.cache and Path(args.cache).exists() and any(Path(args.cache).iterdir()):
        p.error(f"--cache {args.cache}: the folder is not empty (ptxas must run for every configuration)")
    allr, allf = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # an empty cache: ptxas runs (and reports) for every configuration
        os.environ["TRITON_CACHE_DIR"] = args.cache or tmp
        t0 = time.time()
        for arch in args.arch or [90]:
            res, fails = run(arch, triton_part=not args.no_triton, cuda_part=not args.no_cuda, quick=args.quick,
                             suite=args.suite)
            allr += res
            allf += fails
        if args.cache:
            size = sum(f.stat().st_size for f in Path(args.cache).rglob("*") if f.is_file())
            print(f"cache {args.cache}: {size / 2**20:.1f} MiB, compiled in {time.time() - t0:.0f} s (the cold "
                  "compile time a run that brings it along saves)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in allr], "failures": allf}, indent=1))
    for f in allf:
        print(f"FAIL {f}")
    print(f"{len(allr)} kernel configurations, {len(allf)} failures")
    return 1 if allf else 0


if __name__ == "__main__":
    sys.exit(main())
