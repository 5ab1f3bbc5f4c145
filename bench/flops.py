"""The cost of a provider's algorithm, counted without a GPU: matrix-product FLOPs and bytes moved, forward + backward.

What the benchmarks divide their times by (achieved TFLOP/s and GB/s, the roofline bound) and what the tests compare
between providers ("the fused kernel does not do more work than the efficient reference"). Counted, not assumed:

  * torch ops: ``torch.utils.flop_counter.FlopCounterMode`` for the matrix products, and every other aten op's
    inputs plus outputs as its bytes (eager runs each op as its own kernel; views move nothing). The reference runs
    on fake tensors (``fake=True``), so the published shapes cost no compute here.
  * Triton kernels: each launch is recorded instead of run (bench/aot.py's ``record``, with the wrappers on their GPU
    paths, so the tiles and splits are the ones a GPU gets), and its ``tl.dot`` FLOPs follow from the grid, the tile
    constexprs and the loop bounds: ``DOT_FLOPS`` has one formula per kernel, written from the kernel's loops, and
    counts padded tiles as the hardware executes them. A kernel with a ``tl.dot`` and no formula is an error. Its
    bytes are the tensors it is passed, each once, one tensor passed as two arguments (an auto-covariance's A and
    B) once too (a lower bound: GEMM operand tiles are re-read through L2).
Custom ops (fusedssl::) are counted through their Triton launches, not as aten ops.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _split_steps(k: int, k_split: int, splits: int, block: int) -> int:
    """K steps summed over the ``splits`` programs of one output tile, each looping over [s k_split, (s+1) k_split)
    clipped to k, ``block`` at a time."""
    return sum(_cdiv(max(0, min(k, (s + 1) * k_split) - s * k_split), block) for s in range(splits))


def _gemm(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


# One formula per Triton kernel with a tl.dot: a (arguments by name, constexprs included), g (the grid, 3-padded).
DOT_FLOPS: dict[str, Callable[[dict, tuple], int]] = {
    # one D x D tile per (i, j), K = N split over g[2]
    "_cov_loss_fwd_kernel": lambda a, g: g[0] * g[1] * _split_steps(a["N"], a["K_SPLIT"], g[2], a["BLOCK_K"])
    * _gemm(a["BLOCK_I"], a["BLOCK_J"], a["BLOCK_K"]),
    # (rows, columns) tiles of x @ G, K = D
    "_cov_loss_bwd_kernel": lambda a, g: g[0] * g[1] * _cdiv(a["D"], a["BLOCK_K"])
    * _gemm(a["BLOCK_M"], a["BLOCK_C"], a["BLOCK_K"]),
    # one upper-triangle N x N tile per g[0], K = D split over g[1]; two Grams unless AUTO
    "_gram_fwd_kernel": lambda a, g: g[0] * _split_steps(a["D"], a["K_SPLIT"], g[1], a["BLOCK_K"])
    * (1 if a["AUTO"] else 2) * _gemm(a["BLOCK_N"], a["BLOCK_N"], a["BLOCK_K"]),
    # (rows, columns) tiles of G @ X, K = N
    "_gram_bwd_kernel": lambda a, g: g[0] * g[1] * _cdiv(a["N"], a["BLOCK_K"])
    * _gemm(a["BLOCK_M"], a["BLOCK_C"], a["BLOCK_K"]),
    # (M, N) tiles of A @ B, K = K
    "_mm_shift_kernel": lambda a, g: g[0] * g[1] * _cdiv(a["K"], a["BLOCK_K"])
    * _gemm(a["BLOCK_M"], a["BLOCK_N"], a["BLOCK_K"]),
}


@dataclass
class Cost:
    """Matrix-product FLOPs and bytes moved of one call (forward + backward when the call includes it)."""

    flops: int = 0
    bytes: int = 0
    launches: int = 0  # Triton kernels launched

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.launches + other.launches)


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(y) for y in x)
    return 0


class _BytesMode(TorchDispatchMode):
    """Inputs plus outputs of every aten op that is not a view, outside the fusedssl:: custom ops."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "aten" and not func.is_view:
            self.bytes += _nbytes(list(args)) + _nbytes(list((kwargs or {}).values())) + _nbytes(out)
        return out


def has_dot(fn) -> bool:
    """Whether a @triton.jit kernel (compiled or interpreted) multiplies with tl.dot."""
    return "tl.dot" in (getattr(fn, "src", None) or inspect.getsource(fn.fn))


def launch_cost(fn, args: tuple, kwargs: dict, grid) -> Cost:
    """The cost of one Triton launch from its JIT function, arguments and grid."""
    name = fn.fn.__name__
    named = dict(zip(fn.arg_names, args, strict=False)) | kwargs
    g = tuple(grid) + (1,) * (3 - len(tuple(grid)))
    formula = DOT_FLOPS.get(name)
    if formula is None and has_dot(fn):
        raise KeyError(f"bench/flops.py: {name} has a tl.dot but no DOT_FLOPS formula; add one from its loops")
    flops = formula(named, g) if formula else 0
    tensors = {(v.data_ptr(), v.numel(), v.dtype): v for v in named.values() if isinstance(v, torch.Tensor)}
    return Cost(flops, sum(_nbytes(v) for v in tensors.values()), 1)


def count(call: Callable[[], object], fake: bool = False) -> Cost:
    """The cost of ``call()``: its torch ops counted as they dispatch, its Triton launches recorded (not run) on the
    wrappers' GPU paths. ``call`` runs the forward and, if wanted, the backward itself, creating its inputs: with
    ``fake`` they are fake tensors (shapes only; for torch-only calls, since a Triton kernel needs real pointers)."""
    from fusedssl.kernels import _triton
    from torch._subclasses.fake_tensor import FakeTensorMode
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    triton_cost = Cost()
    real_runs = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}  # TRITON_INTERPRET=1 makes the latter

    def fake_run(self, *args, grid, warmup, **kwargs):
        nonlocal triton_cost
        triton_cost = triton_cost + launch_cost(self, args, kwargs, grid)

    flops, nbytes = FlopCounterMode(display=False), _BytesMode()
    for cls in real_runs:
        cls.run = fake_run
    try:
        # the fake mode below the counting modes: they see each op before it is faked
        with FakeTensorMode() if fake else contextlib.nullcontext(), _triton.gpu_paths(), flops, nbytes:
            call()
    finally:
        for cls, run in real_runs.items():
            cls.run = run
    return triton_cost + Cost(flops.get_total_flops(), nbytes.bytes, 0)


def fwd_bwd(op: Callable[..., torch.Tensor], shapes: list[tuple[int, ...]], dtype: torch.dtype,
            grads: int | None = None, backward: bool = True, device: str | torch.device = "cpu"
            ) -> Callable[[], None]:
    """A call running ``op`` on fresh inputs of ``shapes`` and (``backward``) its backward to the first ``grads``
    inputs (all by default): what ``count`` takes."""

    def call():
        xs = [torch.randn(*s, dtype=dtype, device=device).requires_grad_(backward) for s in shapes]
        if not backward:
            with torch.no_grad():
                op(*xs)
            return
        out = op(*xs)
        torch.autograd.grad(out, xs[: len(xs) if grads is None else grads], grad_outputs=upstream(out))

    return call


def upstream(out: torch.Tensor) -> torch.Tensor | None:
    """The gradient fed to a backward: none for a loss, ones for an op with a tensor output (a normalisation)."""
    return None if out.dim() == 0 else torch.ones_like(out)


def objectives(backend: str) -> dict[str, tuple[Callable[..., torch.Tensor], int, int | None]]:
    """The fused ops by the names bench/aot.py's PUBLISHED uses: (op on ``backend``, inputs, inputs that take
    gradients (None: all)). Matrix-SSL / Kernel-SSL: two online views and two (constant) teacher views; the
    normalisations return a tensor (their backward is fed ``upstream``)."""
    from fusedssl import kernels

    kw = {"backend": backend, "check_finite": False}
    return {
        "barlow_twins_loss": (lambda a, b: kernels.barlow_twins_loss(a, b, **kw), 2, None),
        "barlow_twins_loss[hsic,tsai]": (lambda a, b: kernels.barlow_twins_loss(
            a, b, lam=1 / 128, normalize="tsai", off_diagonal_target=-1.0, **kw), 2, None),
        "vicreg_covariance": (lambda z: kernels.vicreg_covariance(z, **kw), 1, None),
        "frossl_loss": (lambda a, b: kernels.frossl_loss([a, b], **kw), 2, None),
        "frossl_loss[legacy]": (lambda a, b: kernels.frossl_loss([a, b], variant="legacy", **kw), 2, None),
        "log_frobenius": (lambda z: kernels.log_frobenius(z, **kw), 1, None),
        "matrix_ssl_loss": (lambda *x: kernels.matrix_ssl_loss(*x, **kw), 4, 2),
        "kernel_ssl_loss": (lambda *x: kernels.kernel_ssl_loss(*x, **kw), 4, 2),
        **{f"col_normalize[{m}]": (lambda z, m=m: kernels.col_normalize(z, m, **kw), 1, None)
           for m in ("bn", "std", "l2", "center", "std_l2")},
        "row_normalize": (lambda z: kernels.row_normalize(z, **kw), 1, None),
    }


def objective_cost(name: str, backend: str, n: int, d: int, dtype: torch.dtype, backward: bool = True,
                   op: Callable[..., torch.Tensor] | None = None, device: str | torch.device = "cpu") -> Cost:
    """Forward (+ backward) cost of one objective at (N, D): the torch provider counted on fake tensors, a kernel
    provider through its recorded launches (CPU tensors, nothing computed on the GPU path). ``op``: another torch
    formulation of the same objective (the original code's), counted like the torch provider, or, where it indexes
    with data-dependent shapes (boolean masks) that fake tensors cannot follow, by running it on ``device``."""
    from torch._subclasses.fake_tensor import DynamicOutputShapeException

    fn, inputs, grads = objectives(backend)[name]
    if backend != "torch" and op is None:
        return count(fwd_bwd(fn, [(n, d)] * inputs, dtype, grads, backward))
    try:
        return count(fwd_bwd(op or fn, [(n, d)] * inputs, dtype, grads, backward), fake=True)
    except DynamicOutputShapeException:
        return count(fwd_bwd(op or fn, [(n, d)] * inputs, dtype, grads, backward, device))


def main(argv: list[str] | None = None) -> int:
    """``fusedssl bench flops``: the counted FLOPs and bytes, forward + backward, of the eager reference and the Triton
    provider of every objective at the published shapes (bench/aot.py), and their ratio; no GPU needed."""
    import argparse

    from . import aot, harness

    p = argparse.ArgumentParser(prog="fusedssl bench flops", description=main.__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="results folder (a <device>/flops.csv inside)")
    args = p.parse_args(argv)
    stamp = harness.env(torch.device("cpu"))
    stamp["device"] = "counted"  # a property of the algorithms, not of this machine
    rows = []
    print(f"{'op':32s} {'N x D':>11s} {'eager GFLOP':>12s} {'triton GFLOP':>13s} {'ratio':>6s} {'eager MB':>9s} "
          f"{'triton MB':>10s}")
    for ops, shapes in aot.PUBLISHED:
        for op in ops:
            for n, d in shapes:
                dtype = torch.float32 if "ssl" in op else torch.bfloat16  # the Matrix-SSL chain is fp32
                ref = objective_cost(op, "torch", n, d, torch.float32)
                fused = objective_cost(op, "triton", n, d, dtype)
                for name, c, dt in (("eager", ref, torch.float32), ("triton", fused, dtype)):
                    base = dict(op=op, provider=name, mode="fwd+bwd", n=n, d=d, dtype=str(dt)[6:], **stamp)
                    rows += [{**base, "metric": "flops", "value": f"{c.flops:.6g}", "unit": "FLOP"},
                             {**base, "metric": "bytes", "value": f"{c.bytes:.6g}", "unit": "B"}]
                ratio = fused.flops / ref.flops if ref.flops else float("nan")
                print(f"{op:32s} {f'{n}x{d}':>11s} {ref.flops / 1e9:12.3f} {fused.flops / 1e9:13.3f} {ratio:6.3f} "
                      f"{ref.bytes / 1e6:9.1f} {fused.bytes / 1e6:10.1f}")
    harness.finish(args.out, stamp, "flops", rows)
    return 0
