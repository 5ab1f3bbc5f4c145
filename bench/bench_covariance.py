"""Benchmark of the covariance family (Barlow Twins loss): eager reference vs torch.compile(reference) vs Triton vs
the CUDA C++ provider (csrc/).

FLOPs per methods.md §16.4: forward 2 N D^2 (the cross-covariance GEMM), backward 4 N D^2 (two GEMMs), so TFLOP/s
counts only the GEMM work; bytes are not modelled yet. The Triton provider is timed only on a GPU: in the CPU
interpreter its timing means nothing, and the run says so instead of writing a number.
"""

from __future__ import annotations

import argparse

import torch
from fusedssl import kernels

from . import harness

GPU_GRID = [(n, d) for n in (128, 256, 1024, 4096) for d in (256, 1024, 2048, 8192)]
CPU_GRID = [(128, 256), (256, 512)]
MODES = ("fwd", "bwd", "fwd+bwd")


def _flops(mode: str, n: int, d: int) -> float:
    return {"fwd": 2 * n * d * d, "bwd": 4 * n * d * d, "fwd+bwd": 6 * n * d * d}[mode]


def providers(device: torch.device) -> tuple[dict, list[str]]:
    ref = lambda a, b: kernels.barlow_twins_loss(a, b, backend="torch", check_finite=False)  # noqa: E731
    out = {"eager": ref, "compile": torch.compile(ref)}
    notes = []
    if device.type == "cuda":
        out["triton"] = lambda a, b: kernels.barlow_twins_loss(a, b, backend="triton", check_finite=False)
    else:
        notes.append("triton: not timed on CPU (the interpreter's timing is meaningless); run on a GPU")
    try:
        kernels._backend.resolve("barlow_twins_loss", "cuda", device)
        out["cuda"] = lambda a, b: kernels.barlow_twins_loss(a, b, backend="cuda", check_finite=False)
    except kernels.BackendUnavailable as e:
        notes.append(f"cuda: not timed ({e})")
    return out, notes


def measure(fn, mode: str, n: int, d: int, dtype: torch.dtype, device: torch.device, sets: int = 4):
    """(p20, p50, p80) ms and peak MiB of one provider in one mode, over rotating input sets."""
    inputs = [(torch.randn(n, d, device=device, dtype=dtype, requires_grad=True),
               torch.randn(n, d, device=device, dtype=dtype, requires_grad=True)) for _ in range(sets)]

    def prepare(i):
        a, b = inputs[i % sets]
        return (fn(a, b), a, b) if mode == "bwd" else (a, b)  # bwd: a fresh forward graph, not timed

    def run(x):
        if mode == "fwd":
            with torch.no_grad():
                return fn(*x)
        if mode == "bwd":
            loss, a, b = x
            return torch.autograd.grad(loss, (a, b))
        a, b = x
        return torch.autograd.grad(fn(a, b), (a, b))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    q = harness.time_fn(run, device=device, prepare=prepare)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return q, peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench kernels", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="results folder (a <device>/covariance.csv inside)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="input dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--shapes", default=None, help="N x D list like 128x256,256x512 (default: the device's grid)")
    p.add_argument("--providers", default=None,
                   help="comma list of eager, compile, triton, cuda (default: all that run)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    grid = ([tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")] if args.shapes
            else (GPU_GRID if device.type == "cuda" else CPU_GRID))
    stamp = harness.env(device)
    provs, notes = providers(device)
    if args.providers:
        wanted = args.providers.split(",")
        unknown = [w for w in wanted if w not in ("eager", "compile", "triton", "cuda")]
        if unknown:
            p.error(f"--providers: unknown {', '.join(unknown)} (choose from eager, compile, triton, cuda)")
        provs = {k: v for k, v in provs.items() if k in wanted}
    rows, table = [], {}
    for n, d in grid:
        for mode in MODES:
            for name, fn in provs.items():
                try:
                    (p20, p50, p80), peak = measure(fn, mode, n, d, dtype, device)
                except torch.OutOfMemoryError:
                    notes.append(f"{name} {mode} {n}x{d}: out of memory")
                    continue
                table[(n, d, mode, name)] = p50
                base = dict(op="barlow_twins_loss", provider=name, mode=mode, n=n, d=d,
                            dtype=str(dtype).replace("torch.", ""), **stamp)
                for metric, value, unit in (("p20", p20, "ms"), ("p50", p50, "ms"), ("p80", p80, "ms"),
                                            ("tflops", _flops(mode, n, d) / p50 / 1e9, "TFLOP/s"),
                                            ("peak_mem", peak, "MiB")):
                    rows.append({**base, "metric": metric, "value": f"{value:.6g}", "unit": unit})
    names = list(provs)
    print(f"barlow_twins_loss on {stamp['device']}, {dtype}, torch {stamp['torch']}, triton {stamp['triton']}; "
          f"median ms (speedup vs eager)")
    print(f"{'N x D':>12s} {'mode':8s} " + " ".join(f"{n:>18s}" for n in names))
    for n, d in grid:
        for mode in MODES:
            eager = table.get((n, d, mode, "eager"))
            cells = []
            for name in names:
                t = table.get((n, d, mode, name))
                cells.append(f"{'-':>18s}" if t is None else f"{t:9.3f} ({eager / t:5.2f}x)")
            print(f"{f'{n}x{d}':>12s} {mode:8s} " + " ".join(cells))
    harness.finish(args.out, stamp, "covariance", rows, notes)
    return 0
