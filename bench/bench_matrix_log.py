"""Benchmark of the Matrix-SSL loss: the original code's formulation vs fusedssl's references.

Providers: ``original`` (dense m x m centring matrix rebuilt per call, order-4 series by explicit matrix powers, as
yifanzhang-pro/Matrix-SSL does), ``eager`` (the efficient reference: trace identities, Gram side when m < D),
``compile`` (torch.compile of it), ``triton`` (the Triton GEMM chain; GPU only: the interpreter's timings mean
nothing) and ``exact`` (log|det| + eigh with the Daleckii-Krein backward). All fp32, the
full loss of one step (four calls: two uniformity, two alignment), forward + backward. Each row set carries the
FLOPs and bytes of that provider's own algorithm (bench/flops.py; the Triton provider's counted, not timed, on a
CPU); the table gives times and speedups over ``original``.
"""

from __future__ import annotations

import argparse

import torch
from fusedssl import kernels

from . import harness, originals

GPU_GRID = [(1024, 2048), (1024, 512), (256, 2048), (4096, 1024)]
CPU_GRID = [(256, 128), (256, 512), (128, 1024)]


def providers(device: torch.device) -> dict:
    def loss(backend, exact=False):
        return lambda o1, o2, t1, t2: kernels.matrix_ssl_loss(o1, o2, t1, t2, exact=exact, backend=backend,
                                                              check_finite=False)

    out = {"original": lambda o1, o2, t1, t2: originals.matrix_ssl(o1, o2, t1, t2), "eager": loss("torch"),
           "compile": torch.compile(loss("torch"))}
    if device.type == "cuda":
        out["triton"] = loss("triton")
    out["exact"] = loss("torch", exact=True)
    return out


def _cost_rows(base: dict, name: str, fn, m: int, d: int, p50: float | None, device: torch.device) -> list[dict]:
    """FLOPs and bytes of the provider's own algorithm (bench/flops.py; compile: the eager FLOPs, bytes unknown),
    with the achieved rates when it was timed."""
    from . import flops

    backend = "triton" if name == "triton" else "torch"
    orig = fn if name in ("original", "exact") else None
    c = flops.objective_cost("matrix_ssl_loss", backend, m, d, torch.float32, op=orig, device=device)
    return harness.cost_rows(base, c.flops, None if name == "compile" else c.bytes, p50)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench matrix_log", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results")
    p.add_argument("--shapes", default=None, help="m x D list like 256x512 (default: the device's grid)")
    p.add_argument("--providers", default=None, help="comma list of original, eager, compile, triton, exact")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = ([tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")] if args.shapes
            else (GPU_GRID if device.type == "cuda" else CPU_GRID))
    provs = providers(device)
    if args.providers:
        provs = {k: v for k, v in provs.items() if k in args.providers.split(",")}
    stamp = harness.env(device)
    rows, table = [], {}
    for m, d in grid:
        inputs = [[torch.randn(m, d, device=device, requires_grad=(i < 2)) for i in range(4)] for _ in range(3)]
        for name, fn in provs.items():
            def run(i, fn=fn, inputs=inputs):
                o1, o2, t1, t2 = inputs[i % 3]
                return torch.autograd.grad(fn(o1, o2, t1, t2), (o1, o2))
            (p20, p50, p80) = harness.time_fn(run, device=device, warmup=2, reps=5)
            table[(m, d, name)] = p50
            base = dict(op="matrix_ssl_loss", provider=name, mode="fwd+bwd", n=m, d=d, dtype="float32", **stamp)
            rows += harness.ms_rows(base, p20, p50, p80)
            rows += _cost_rows(base, name, fn, m, d, p50, device)
        if "triton" not in provs and device.type == "cpu" and "triton" in (args.providers or "triton"):
            base = dict(op="matrix_ssl_loss", provider="triton", mode="fwd+bwd", n=m, d=d, dtype="float32", **stamp)
            rows += _cost_rows(base, "triton", None, m, d, None, device)
    print(f"matrix_ssl_loss (4 calls, fwd+bwd, fp32) on {stamp['device']}, torch {stamp['torch']}; "
          "median ms (speedup vs original)")
    print(f"{'m x D':>11s} " + " ".join(f"{n:>18s}" for n in provs))
    for m, d in grid:
        orig = table.get((m, d, "original"))
        cells = [f"{table[(m, d, n)]:9.2f} ({orig / table[(m, d, n)]:5.1f}x)" if orig else f"{table[(m, d, n)]:9.2f}"
                 for n in provs]
        print(f"{f'{m}x{d}':>11s} " + " ".join(cells))
    harness.finish(args.out, stamp, "matrix_log", rows)
    return 0
