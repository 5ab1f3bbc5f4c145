"""``fusedssl bench directpred``: one DirectPred predictor update (F^ -> W_p) per provider, on a training-like F^.

Providers: ``eager`` (kernels.predictor_weight backend "torch": torch.linalg.eigh, the reference),
``eager-batched`` (the same map from eigh of a batch of one, which torch may hand to another solver: cuSOLVER's
batched Jacobi in recent releases; not a backend yet), and csrc/directpred.cu's two Jacobi kernels, each from the
identity (``-cold``) and from the previous update's eigenvectors (``-warm``, as engine/methods.py runs it):
``cuda-cold``/``cuda-warm`` (one thread block) and ``cuda-multiblock-cold``/``cuda-multiblock-warm`` (every SM, one
grid-wide barrier per round). These are the candidates a GPU record decides between per D: ``fusedssl bench render
--prefer`` writes the faster warm kernel per D into kernels/preferences.json. F^ follows training: F^ <- 0.3 F^ +
0.7 f'f / N with f = N rows of one fixed D-dimensional feature distribution, so consecutive F^ differ by batch noise.
The goal: the warm update under 1 ms at D = 256 with no host synchronisation. Also recorded on a GPU: the host
synchronisations of one update (metric ``host_syncs``, counted under torch's sync debug mode: eigh checks its
convergence on the host, the Jacobi kernels never do); the Jacobi sweeps used (metric ``sweeps``); and each
provider's modelled FLOPs and bytes (``model_cost``: eigensolvers are iterative, FlopCounterMode does not count eigh,
so the count is a model, unit "FLOP (model)"). Rows go to bench/results/<device>/directpred.csv (harness.FIELDS;
n = rows of f, d = D).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from fusedssl import kernels
from fusedssl.kernels import _cuda, directpred

from . import harness


def sequence(d: int, rows: int, steps: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """``steps`` consecutive F^ of a training run: an EMA (rho 0.3) of batch correlations of one distribution."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    out, corr = [], None
    for _ in range(steps):
        f = torch.randn(rows, d, generator=g) @ mix
        corr = kernels.correlation_ema(f, corr, rho=0.3)
        out.append(corr.to(device))
    return out


PROVIDERS = ("eager", "eager-batched", "cuda-cold", "cuda-warm", "cuda-multiblock-cold", "cuda-multiblock-warm")
# the Jacobi kernel behind each cuda provider, and whether it starts from the previous eigenvectors
JACOBI = {"cuda-cold": ("one-block", False), "cuda-warm": ("one-block", True),
          "cuda-multiblock-cold": ("multi-block", False), "cuda-multiblock-warm": ("multi-block", True)}


def host_syncs(fn, *args) -> int:
    """Host synchronisations of one call of ``fn`` on the current GPU, counted from torch's sync debug warnings."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def model_cost(provider: str, d: int, sweeps: float = 0.0) -> tuple[float, float]:
    """(FLOPs, bytes) of one predictor update by ``provider``'s algorithm, modelled (n = D rounded up to even).

    eager: symmetric QR with eigenvectors, ~9 D^3 (Golub & Van Loan, Matrix Computations 4th ed., section 8.3),
    plus W = (U p) U' (2 D^3); it reads F^ and writes W and U.
    cuda-*: the warm-start transform U0' F^ U0 (4 D^3, fp64), per Jacobi sweep n - 1 rounds that rotate every 2x2
    block of the packed upper triangle (24 FLOPs per block, n^2 / 8 blocks) and replay n / 2 rotations on each of the
    n rows of V (6 FLOPs each): 6 n^3 per sweep, an upper bound since identity blocks are skipped; then the
    orthonormalising Newton-Schulz step (4 D^3) and W (2 D^3). Bytes add the recorded rotations (8 B each), written
    by the sweep kernel and read by the replay, and the basis read and written. The multi-block kernel runs the same
    rotations; it also reads and writes the packed matrix every round (4 n (n + 1) B, L2 traffic), counted."""
    n = d + d % 2
    if provider.startswith("eager"):
        return 11.0 * d**3, 3 * 4.0 * d * d
    if not provider.startswith("cuda"):
        raise ValueError(f"model_cost: provider {provider!r} is not one of {', '.join(PROVIDERS)}")
    rotations = sweeps * (n - 1) * (n // 2)
    packed = sweeps * (n - 1) * 4.0 * n * (n + 1) if provider.startswith("cuda-multiblock") else 0.0
    return 10.0 * d**3 + 6.0 * sweeps * n**3, 4 * 4.0 * d * d + 2 * 8.0 * rotations + packed


def _cost_rows(meta: dict, provider: str, d: int, sweeps: float, p50: float | None) -> list[dict]:
    """harness.cost_rows of one provider's modelled FLOPs and bytes, each unit marked as a model."""
    rows = harness.cost_rows(meta, *model_cost(provider, d, sweeps), p50)
    return [{**r, "unit": f"{r['unit']} (model)"} for r in rows]


def _sweeps(corrs: list[torch.Tensor], warm: bool, solver: str = "one-block") -> float:
    """Median Jacobi sweeps (those that rotated + the final check sweep) over the sequence after its first F^."""
    counts, basis = [], None
    for corr in corrs:
        _, u, _, info = directpred.jacobi_solve(corr, basis if warm else None, solver=solver)
        basis = u
        counts.append(float(info[0]) + float(info[1]))
    return float(torch.tensor(counts[1:] or counts).median())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench directpred", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="results folder (a <device>/directpred.csv inside)")
    p.add_argument("--dims", default="128,256,512", help="comma list of D (the kernel takes D <= 512)")
    p.add_argument("--rows", type=int, default=512, help="rows of f per step (all views of the batch)")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dims = [int(x) for x in args.dims.split(",") if x]
    notes = []
    why = _cuda.why_unavailable(device)
    if why:
        notes.append(f"cuda: not timed ({why})")
    stamp = harness.env(device)
    rows = []
    print(f"DirectPred predictor update on {stamp['device']}: median ms (p20-p80), speedup vs eager")
    for d in dims:
        corrs = sequence(d, args.rows, 3 + args.reps + 1, device)
        state = {"basis": None}

        def update(i, backend="torch", warm=False, corrs=corrs, state=state):
            _, u = kernels.predictor_weight(corrs[i % len(corrs)], basis=state["basis"] if warm else None,
                                            return_basis=True, backend=backend, check_finite=False)
            state["basis"] = u

        def jacobi(i, solver, warm, corrs=corrs, state=state):
            _, u = directpred.predictor_weight_cuda(corrs[i % len(corrs)], basis=state["basis"] if warm else None,
                                                    solver=solver)
            state["basis"] = u

        def batched(i, corrs=corrs):
            f = corrs[i % len(corrs)]
            ev, vec = torch.linalg.eigh((0.5 * (f + f.T))[None])
            directpred.spectral_map(ev[0], vec[0])

        provs = {"eager": update, "eager-batched": batched}
        if not why:
            provs.update({name: (lambda i, sw=sw: jacobi(i, *sw)) for name, sw in JACOBI.items()})
        base_ms = None
        for name, fn in provs.items():
            state["basis"] = None
            p20, p50, p80 = harness.time_fn(fn, device=device, warmup=3, reps=args.reps)
            base_ms = base_ms or p50
            extra, sweeps = "", 0.0
            meta = dict(op="predictor_weight", provider=name, mode="directpred", n=args.rows, d=d, dtype="float32",
                        **stamp)
            rows += harness.ms_rows(meta, p20, p50, p80)
            if device.type == "cuda":  # the next call continues the warm sequence, as training would
                syncs = host_syncs(fn, args.reps + 3)
                rows.append({**meta, "metric": "host_syncs", "value": str(syncs), "unit": "syncs per update"})
                extra = f"  {syncs} host syncs"
            if name in JACOBI:
                solver, warm = JACOBI[name]
                sweeps = _sweeps(corrs, warm=warm, solver=solver)
                rows.append({**meta, "metric": "sweeps", "value": f"{sweeps:g}", "unit": "sweeps"})
                extra += f"  {sweeps:g} sweeps"
            rows += _cost_rows(meta, name, d, sweeps, p50)
            extra += f"  {model_cost(name, d, sweeps)[0] / p50 / 1e9:.3g} TFLOP/s (model)"
            print(f"  D={d:4d} {name:20s} {p50:9.3f} ms ({p20:.3f}-{p80:.3f})  {base_ms / p50:6.2f}x{extra}")
        if why and _cuda.ext() is not None:  # no GPU: the sweep counts from the extension's host run of the schedule
            cpu = [c.cpu() for c in corrs]
            for name in ("cuda-cold", "cuda-warm"):  # the multi-block kernel runs the same rotations
                sweeps = _sweeps(cpu, warm=JACOBI[name][1])
                meta = dict(op="predictor_weight", provider=name, mode="directpred-host-schedule", n=args.rows, d=d,
                            dtype="float32", **stamp)
                rows.append({**meta, "metric": "sweeps", "value": f"{sweeps:g}", "unit": "sweeps"})
                rows += _cost_rows(meta, name, d, sweeps, None)
                print(f"  D={d:4d} {name:10s} {sweeps:g} Jacobi sweeps (the kernel's schedule run on the host), "
                      f"{model_cost(name, d, sweeps)[0] / 1e9:.3g} GFLOP (model; eager "
                      f"{model_cost('eager', d)[0] / 1e9:.3g})")
    harness.finish(args.out, stamp, "directpred", rows, notes)
    return 0
