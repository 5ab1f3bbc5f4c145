"""Benchmark harness: timing discipline, environment stamp, long-format CSV.

Timing: warm-up calls are excluded; each repetition uses the next of several pre-generated input sets (rotating
inputs, so caches do not flatter and no input is all zeros); CUDA events around each call on a GPU, perf_counter
after a synchronise elsewhere; median with p20/p80. Every row carries the device, versions, git SHA and date, and
rows are appended to a long-format CSV (one measurement per row), replacing earlier rows with the same key.
"""

from __future__ import annotations

import csv
import datetime
import functools
import platform
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

FIELDS = ["op", "provider", "mode", "n", "d", "dtype", "metric", "value", "unit", "device", "torch", "triton",
          "fusedssl", "git", "date"]
KEY = ("op", "provider", "mode", "n", "d", "dtype", "metric", "device", "torch", "triton", "fusedssl", "git")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def env(device: torch.device) -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "none"

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        sha = "none"
    return {"device": device_name(device), "torch": torch.__version__, "triton": version("triton"),
            "fusedssl": version("fusedssl"), "git": sha, "date": datetime.date.today().isoformat()}


def time_fn(fn: Callable[[object], object], *, device: torch.device, prepare: Callable[[int], object] | None = None,
            warmup: int = 3, reps: int = 10) -> tuple[float, float, float]:
    """(p20, p50, p80) milliseconds of ``fn(prepare(i))`` (``fn(i)`` without ``prepare``), i = the repetition.

    ``prepare`` runs outside the timed region (e.g. the forward pass whose backward is being timed).
    """
    prepare = prepare or (lambda i: i)
    for i in range(warmup):
        fn(prepare(i))
    times = []
    for i in range(reps):
        x = prepare(warmup + i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append(1000 * (time.perf_counter() - t0))
    q = torch.tensor(times).quantile(torch.tensor([0.2, 0.5, 0.8])).tolist()
    return q[0], q[1], q[2]


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append rows; a row with the same KEY as an existing one replaces it (re-runs do not duplicate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    new_keys = {tuple(str(r[k]) for k in KEY) for r in rows}
    kept = [r for r in old if tuple(r[k] for k in KEY) not in new_keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(kept + rows)


def ms_rows(meta: dict, p20: float, p50: float, p80: float) -> list[dict]:
    """The three rows (p20, p50, p80, in ms) of one timed measurement described by ``meta`` (the other FIELDS)."""
    return [{**meta, "metric": m, "value": f"{v:.6g}", "unit": "ms"} for m, v in (("p20", p20), ("p50", p50),
                                                                                  ("p80", p80))]


def finish(out: str | Path, stamp: dict, name: str, rows: list[dict], notes: list[str] = ()) -> Path:
    """Append ``rows`` to ``<out>/<device>/<name>.csv``, print the notes and where the rows went; returns the path."""
    path = Path(out) / stamp["device"].replace(" ", "_") / f"{name}.csv"
    append_csv(path, rows)
    for note in notes:
        print("note:", note)
    print(f"wrote {len(rows)} rows to {path}")
    return path


# ------------------------------------------------------------------------------------ tiny runs (tests, soak runs)

# The smallest recipe that runs every training stage in seconds on a CPU; the tests and the soak runs train it and add
# what they vary.
TINY = ["data.source=synthetic", "data.synthetic_size=64", "data.batch_size=16", "data.image_size=16",
        "model.projector=32-16", "evaluate.knn=false", "log.every=1", "log.progress=false"]


def tiny(method: str = "barlow", *extra: str) -> list[str]:
    """TINY for ``method``, with the predictor head it needs (read from the method registry: a hidden layer for
    BYOL-like heads, DirectPred's linear 16 x 16 map without bias), then ``extra``."""
    from fusedssl.engine import methods

    cls = methods.METHODS[method]
    head = []
    if cls.predictor:
        head = (["model.predictor=16", "model.predictor_bias=false"] if issubclass(cls, methods.DirectPred)
                else ["model.predictor=32-16"])
    return [*TINY, f"method.name={method}", *head, *extra]


def free_port() -> int:
    """A TCP port free on this host now (for a rendezvous of local processes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ objective benchmarks (kernels)

OBJECTIVE_MODES = ("fwd", "bwd", "fwd+bwd")
OBJECTIVE_PROVIDERS = ("original", "eager", "compile", "triton", "cuda")


def objective_providers(op: str, device: torch.device, original: Callable | None = None
                        ) -> tuple[dict[str, Callable], list[str]]:
    """The providers of one objective: the original code's formulation (when given), the efficient eager reference,
    torch.compile of it, Triton (GPU only: interpreter timings mean nothing) and CUDA C++ (where built)."""
    from fusedssl import kernels

    from . import flops

    eager = flops.objectives("torch")[op][0]
    out = ({"original": original} if original else {}) | {"eager": eager, "compile": torch.compile(eager)}
    notes = []
    if device.type == "cuda":
        out["triton"] = flops.objectives("triton")[op][0]
    else:
        notes.append(f"{op} triton: not timed on CPU (the interpreter's timing is meaningless); run on a GPU")
    reason = kernels.why_not(op.split("[")[0], "cuda", device)  # "frossl_loss[legacy]": a variant of frossl_loss
    if reason is None:
        out["cuda"] = flops.objectives("cuda")[op][0]
    else:
        notes.append(f"{op} cuda: not timed ({reason})")
    return out, notes


@functools.cache
def _costs(op: str, provider: str, fn: Callable, n: int, d: int, dtype: torch.dtype, device: torch.device):
    """(forward, forward + backward) Costs of ``provider``'s algorithm, None for the CUDA C++ provider."""
    from . import flops

    if provider == "cuda":
        return None
    backend = "triton" if provider == "triton" else "torch"
    orig = fn if provider == "original" else None
    return tuple(flops.objective_cost(op, backend, n, d, dtype, backward=b, op=orig, device=device)
                 for b in (False, True))


def _cost(op: str, provider: str, fn: Callable, n: int, d: int, dtype: torch.dtype, mode: str,
          device: torch.device):
    """(FLOPs, bytes) of ``provider``'s algorithm in ``mode`` (bench/flops.py), None where it cannot be counted:
    compile keeps the eager FLOPs (Inductor fuses the elementwise work, not the products) with bytes unknown, and
    the CUDA C++ provider's cuBLAS calls are not visible to the counter."""
    from . import flops

    costs = _costs(op, provider, fn, n, d, dtype, device)
    if costs is None:
        return None
    fwd, both = costs
    c = {"fwd": fwd, "fwd+bwd": both, "bwd": flops.Cost(both.flops - fwd.flops, both.bytes - fwd.bytes)}[mode]
    return (c.flops, None) if provider == "compile" else (c.flops, c.bytes)


def _objective_inputs(n: int, d: int, count: int, grads: int | None, dtype, device, sets: int = 4):
    need = count if grads is None else grads
    return [[torch.randn(n, d, device=device, dtype=dtype, requires_grad=i < need) for i in range(count)]
            for _ in range(sets)]


def measure_objective(fn: Callable, mode: str, inputs: list[list[torch.Tensor]], grads: int | None,
                      device: torch.device) -> tuple[tuple[float, float, float], float]:
    """(p20, p50, p80) ms and peak MiB of one provider in one mode, over the rotating input sets."""
    from . import flops

    sets = len(inputs)

    def wrt(xs):
        return xs if grads is None else xs[:grads]

    def prepare(i):
        xs = inputs[i % sets]
        return (fn(*xs), xs) if mode == "bwd" else xs  # bwd: a fresh forward graph, not timed

    def run(x):
        if mode == "fwd":
            with torch.no_grad():
                return fn(*x)
        if mode == "bwd":
            out, xs = x
            return torch.autograd.grad(out, wrt(xs), grad_outputs=flops.upstream(out))
        out = fn(*x)
        return torch.autograd.grad(out, wrt(x), grad_outputs=flops.upstream(out))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    q = time_fn(run, device=device, prepare=prepare)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return q, peak


def cost_rows(base: dict, flops: float, nbytes: float | None, p50: float | None = None,
              peaks: tuple[float, float] | None = None) -> list[dict]:
    """The rows of one measurement's cost: FLOPs and bytes (None: not known), with ``p50`` the achieved TFLOP/s and
    GB/s, with ``peaks`` (FLOP/s, bytes/s) the roofline bound in ms and as a fraction of ``p50``."""
    out = [("flops", flops, "FLOP")] + ([("bytes", nbytes, "B")] if nbytes is not None else [])
    if p50:
        out.append(("tflops", flops / p50 / 1e9, "TFLOP/s"))
        if nbytes is not None:
            out.append(("gbs", nbytes / p50 / 1e6, "GB/s"))
            if peaks:
                bound = max(flops / peaks[0], nbytes / peaks[1]) * 1e3
                out += [("roofline_ms", bound, "ms"), ("of_roofline", bound / p50, "fraction")]
    return [{**base, "metric": m, "value": f"{v:.6g}", "unit": u} for m, v, u in out]


def objective_bench(argv: list[str] | None, *, prog: str, description: str, family: str, ops: dict[str, Callable],
                    gpu_grid: list[tuple[int, int]], cpu_grid: list[tuple[int, int]]) -> int:
    """The benchmark of one objective family: every op of ``ops`` (name -> the original code's formulation, or
    None) x shape x mode x provider. Each row set has the times, the FLOPs and bytes of that provider's own
    algorithm (bench/flops.py), the achieved TFLOP/s and GB/s, and the roofline bound at this device's measured
    ceilings (``roofline_ms``: the time the algorithm needs at peak FLOP/s or bandwidth, whichever binds)."""
    import argparse

    from . import flops
    from .suite import ceilings

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--out", default="bench/results", help=f"results folder (a <device>/{family}.csv inside)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="input dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--shapes", default=None, help="N x D list like 128x256,256x512 (default: the device's grid)")
    p.add_argument("--ops", default=None, help=f"comma list of {', '.join(ops)} (default: all)")
    p.add_argument("--providers", default=None, help=f"comma list of {', '.join(OBJECTIVE_PROVIDERS)} "
                                                      "(default: all that run)")
    args = p.parse_args(argv)
    try:
        grid = ([tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")] if args.shapes else None)
    except ValueError:
        p.error(f"--shapes: {args.shapes!r} is not a comma list of N x D like 128x256")
    for flag, value, known in (("--ops", args.ops, ops), ("--providers", args.providers, OBJECTIVE_PROVIDERS)):
        unknown = [w for w in (value or "").split(",") if value and w not in known]
        if unknown:
            p.error(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    grid = grid or (gpu_grid if device.type == "cuda" else cpu_grid)
    stamp = env(device)
    ceil = {r["metric"]: float(r["value"]) for r in ceilings(device, quick=device.type != "cuda")}
    peak_flops, peak_bw = ceil["matmul_tflops"] * 1e12, ceil["bandwidth_gbs"] * 1e9
    rows, notes, table = [], [], {}
    for op in (args.ops.split(",") if args.ops else ops):
        provs, more = objective_providers(op, device, ops[op])
        notes += more
        if args.providers:
            provs = {k: v for k, v in provs.items() if k in args.providers.split(",")}
        _, count, grads = flops.objectives("torch")[op]
        for n, d in grid:
            inputs = _objective_inputs(n, d, count, grads, dtype, device)
            for mode in OBJECTIVE_MODES:
                for name, fn in provs.items():
                    try:
                        (p20, p50, p80), peak = measure_objective(fn, mode, inputs, grads, device)
                    except torch.OutOfMemoryError:
                        notes.append(f"{op} {name} {mode} {n}x{d}: out of memory")
                        continue
                    table[(op, n, d, mode, name)] = p50
                    base = dict(op=op, provider=name, mode=mode, n=n, d=d, dtype=str(dtype)[6:], **stamp)
                    rows += ms_rows(base, p20, p50, p80)
                    rows.append({**base, "metric": "peak_mem", "value": f"{peak:.6g}", "unit": "MiB"})
                    cost = _cost(op, name, fn, n, d, dtype, mode, device)
                    if cost is None:
                        continue
                    rows += cost_rows(base, *cost, p50, (peak_flops, peak_bw))
                if "triton" not in provs and device.type == "cpu" and "triton" in (args.providers or "triton"):
                    # not timed here, but its algorithm's cost is the same on any device: the FLOPs to compare
                    base = dict(op=op, provider="triton", mode=mode, n=n, d=d, dtype=str(dtype)[6:], **stamp)
                    rows += cost_rows(base, *_cost(op, "triton", None, n, d, dtype, mode, device))
    print(f"{family} on {stamp['device']}, {dtype}, torch {stamp['torch']}, triton {stamp['triton']}; ceilings "
          f"{ceil['matmul_tflops']:.3g} TFLOP/s, {ceil['bandwidth_gbs']:.3g} GB/s; median ms (speedup vs eager)")
    for op in dict.fromkeys(k[0] for k in table):
        names = list(dict.fromkeys(k[4] for k in table if k[0] == op))
        print(f"{op}\n{'N x D':>12s} {'mode':8s} " + " ".join(f"{x:>18s}" for x in names))
        for n, d in grid:
            for mode in OBJECTIVE_MODES:
                eager = table.get((op, n, d, mode, "eager"))
                cells = []
                for name in names:
                    t = table.get((op, n, d, mode, name))
                    cells.append(f"{'-':>18s}" if t is None else
                                 f"{t:9.3f} ({eager / t:5.2f}x)" if eager else f"{t:18.3f}")
                print(f"{f'{n}x{d}':>12s} {mode:8s} " + " ".join(cells))
    finish(args.out, stamp, family, rows, notes)
    return 0
