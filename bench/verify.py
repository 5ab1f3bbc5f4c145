"""``fusedssl verify``: every op of every available kernel backend against the float64 reference.

The three-way rule (style.md §5, after FlashAttention's tests), for the value and every input gradient:
    ref    = the "torch" reference on the inputs upcast to float64
    torch  = the "torch" reference on the same low-precision inputs
    kernel = the backend under test on the low-precision inputs
    err_x  = max|x - ref| / max(1, max|ref|);   pass  iff  err_kernel <= 2 * err_torch + FLOORS[dtype]
(a torch reference that overflows at the low precision sets no bound: err_torch counts as 0 there).
One random upstream gradient is shared by the three backward passes. Inputs are fresh random data for every case
(seeded per run and printed), over a grid of shapes (odd sizes, N < D and N > D), dtypes and layouts (contiguous and a
strided slice of a larger tensor). Backends that cannot run here are listed with the reason, never silently passed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from fusedssl.kernels import (
    COL_MODES,
    BackendUnavailable,
    available,
    barlow_twins_loss,
    byol_loss,
    col_normalize,
    directpred,
    ema_,
    frossl_loss,
    kernel_ssl_loss,
    lars_step_,
    log_frobenius,
    matrix_ssl_loss,
    nt_xent_loss,
    photo_params,
    photometric_augment,
    photometric_augment_ref,
    predictor_weight,
    resolve_all,
    row_normalize,
    simsiam_loss,
    vicreg_covariance,
    vicreg_loss,
    why_not,
)

# The one table of tolerance floors (relative, see above); tests/conftest.py imports it.
FLOORS = {torch.bfloat16: 5e-2, torch.float16: 1e-2, torch.float32: 1e-4}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KERNEL_BACKENDS = ("triton", "cuda")
SMALL_SHAPES = [(2, 7), (33, 50), (97, 128), (40, 160), (256, 64)]   # interpreter-sized; N < D and N > D
FULL_SHAPES = [(n, d) for n in (2, 97, 256, 1025) for d in (7, 128, 1000, 2048)]


def random_photo_params(gen: torch.Generator, n: int, max_sigma: float = 3.0, p: float = 0.5):
    """Random photometric parameters over the whole domain (verify and the tests): jitter factors in [0.3, 1.9]
    (brightness past the clamp), any hue, grayscale, blur up to ``max_sigma`` (windows wider than the image where it
    is larger than a sixth of it) and solarisation each with probability ``p``."""
    def u(lo: float, hi: float) -> np.ndarray:
        return (torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo).numpy()

    jitter = u(0, 1) < 0.8
    f = [np.where(jitter, u(0.3, 1.9), 1.0) for _ in range(3)]
    return photo_params(f[0], f[1], f[2], np.where(jitter, u(-0.5, 0.5), 0.0), u(0, 1) < p, u(0, 1) < p,
                        u(0.1, max_sigma), u(0, 1) < p)


@dataclass(frozen=True)
class Case:
    """One verifiable op: ``op`` is the registry name, ``n_inputs`` (N, D) tensors feed ``call(backend, *x)``."""

    name: str
    op: str
    n_inputs: int
    call: Callable[..., torch.Tensor]
    grad_inputs: int | None = None  # how many leading inputs take gradients (teacher/target inputs do not)


def _probe(y: torch.Tensor) -> torch.Tensor:
    """A fixed, dense linear functional of a matrix output, in float64 (so the value and the one gradient of a
    matrix-valued op are checked like a loss's; the weights are the same in all three runs)."""
    w = torch.sin(1.0 + torch.arange(y.numel(), dtype=torch.float64, device=y.device)).view(y.shape)
    return (y.to(torch.float64) * w).sum()


CASES = [
    *[Case(f"col_normalize[{m}]", "col_normalize", 1,
           lambda be, a, m=m: _probe(col_normalize(a, m, backend=be, check_finite=False))) for m in COL_MODES],
    Case("row_normalize", "row_normalize", 1, lambda be, a: _probe(row_normalize(a, backend=be))),
    Case("barlow_twins_loss", "barlow_twins_loss", 2, lambda be, a, b: barlow_twins_loss(a, b, backend=be)),
    Case("barlow_twins_loss[hsic,tsai]", "barlow_twins_loss", 2,
         lambda be, a, b: barlow_twins_loss(a, b, lam=1 / 128, normalize="tsai", off_diagonal_target=-1.0,
                                            backend=be)),
    Case("vicreg_covariance", "vicreg_covariance", 1, lambda be, a: vicreg_covariance(a, backend=be)),
    Case("vicreg_loss", "vicreg_loss", 2, lambda be, a, b: vicreg_loss(a, b, backend=be)),
    Case("frossl_loss", "frossl_loss", 2, lambda be, a, b: frossl_loss([a, b], backend=be)),
    Case("frossl_loss[3 views]", "frossl_loss", 3, lambda be, a, b, c: frossl_loss([a, b, c], backend=be)),
    Case("frossl_loss[legacy]", "frossl_loss", 2, lambda be, a, b: frossl_loss([a, b], variant="legacy", backend=be)),
    Case("log_frobenius", "log_frobenius", 1, lambda be, a: log_frobenius(a, backend=be)),
    Case("matrix_ssl_loss", "matrix_ssl_loss", 4, lambda be, a, b, c, d: matrix_ssl_loss(a, b, c, d, backend=be),
         grad_inputs=2),
    Case("kernel_ssl_loss", "matrix_ssl_loss", 4, lambda be, a, b, c, d: kernel_ssl_loss(a, b, c, d, backend=be),
         grad_inputs=2),
    Case("nt_xent_loss", "nt_xent_loss", 2, lambda be, a, b: nt_xent_loss(a, b, backend=be)),
    Case("byol_loss", "byol_loss", 4, lambda be, a, b, c, d: byol_loss(a, b, c, d, backend=be), grad_inputs=2),
    Case("simsiam_loss", "simsiam_loss", 4, lambda be, a, b, c, d: simsiam_loss(a, b, c, d, backend=be),
         grad_inputs=2),
]


@dataclass
class Row:
    case: str
    backend: str
    dtype: str
    shape: str
    layout: str
    quantity: str
    err: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.err <= self.tol


def _inputs(case: Case, n: int, d: int, layout: str, gen: torch.Generator, device: torch.device) -> list:
    xs = []
    for _ in range(case.n_inputs):
        if layout == "strided":  # every other column of a wider tensor: non-contiguous, stride 2
            xs.append(torch.randn(n, 2 * d, generator=gen, dtype=torch.float64).to(device)[:, ::2])
        else:
            xs.append(torch.randn(n, d, generator=gen, dtype=torch.float64).to(device))
    return xs


def _run(case: Case, backend: str, xs: list, upstream: torch.Tensor) -> list[torch.Tensor]:
    k = case.grad_inputs if case.grad_inputs is not None else case.n_inputs
    leaves = [x.detach().clone().requires_grad_(i < k) for i, x in enumerate(xs)]
    out = case.call(backend, *leaves)
    grads = torch.autograd.grad(out, leaves[:k], upstream.to(out.dtype))
    return [out.detach(), *[g.detach() for g in grads]]


def _err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((x.double() - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def _slack(lp_torch, ref) -> float:
    """The rule's 2 * err_torch. Where the torch reference itself overflows at this precision (fp16 BatchNorm's
    backward of a near-constant column at N = 2 is inf * 0), it sets no bound: the kernel is held to the floor."""
    err = _err(lp_torch, ref)
    return 2 * err if err == err and err != float("inf") else 0.0


def check(case: Case, backend: str, n: int, d: int, dtype: torch.dtype, layout: str, gen: torch.Generator,
          device: torch.device) -> list[Row]:
    """The three-way comparison of one (case, backend, shape, dtype, layout); one Row per quantity."""
    base = _inputs(case, n, d, layout, gen, device)
    low = [x.to(dtype) for x in base]
    upstream = torch.randn((), generator=gen, dtype=torch.float64).to(device)
    ref = _run(case, "torch", [x.double() for x in low], upstream)
    lp_torch = _run(case, "torch", low, upstream)
    kernel = _run(case, backend, low, upstream)
    names = ["value"] + [f"grad[{i}]" for i in range(len(ref) - 1)]
    dname = str(dtype).replace("torch.", "")
    return [Row(case.name, backend, dname, f"{n}x{d}", layout, q, _err(k, r), _slack(t, r) + FLOORS[dtype])
            for q, r, t, k in zip(names, ref, lp_torch, kernel, strict=True)]


# ---- multi-tensor optimiser updates (fp32 only, no gradient): the updated tensors against a float64 reference


OPTIM_SHAPES = [(64, 3, 7, 7), (64,), (64,), (128, 64, 3, 3), (1000, 512), (1000,), (3,)]


def _optim_lars(backend: str, ts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    params, grads, bufs = (list(x) for x in ts)
    for adapt in (True, False):  # weights (trust ratio, wd) and biases/norms, as engine/optim.py groups them
        idx = [i for i, p in enumerate(params) if (p.ndim > 1) == adapt]
        lars_step_([params[i] for i in idx], [grads[i] for i in idx], [bufs[i] for i in idx], lr=0.3, momentum=0.9,
                   weight_decay=1e-4, eta=0.02, adapt=adapt, backend=backend)
    return params + bufs


def _optim_ema(backend: str, ts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    teacher, online = list(ts[0]), list(ts[1])
    ema_(teacher, online, 0.996, backend=backend)
    return teacher


OPTIM_CASES = {"lars_step_": (3, _optim_lars), "ema_": (2, _optim_ema)}


def check_optim(op: str, backend: str, gen: torch.Generator, device: torch.device) -> list[Row]:
    """One multi-tensor update on fresh random fp32 tensors; the result against float64 (one Row)."""
    n_lists, fn = OPTIM_CASES[op]
    base = [[torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in OPTIM_SHAPES]
            for _ in range(n_lists)]
    ref = fn("torch", [[t.clone() for t in ts] for ts in base])
    lp_torch = fn("torch", [[t.float() for t in ts] for ts in base])
    kernel = fn(backend, [[t.float() for t in ts] for ts in base])
    err = max(_err(k, r) for k, r in zip(kernel, ref, strict=True))
    slack = max(_slack(t, r) for t, r in zip(lp_torch, ref, strict=True))
    return [Row(op, backend, "float32", f"{len(OPTIM_SHAPES)} tensors", "contiguous", "update", err,
                slack + FLOORS[torch.float32])]


# ---- DirectPred's predictor weight (fp32, no gradient): W_p of a random PSD F^ of the given rank, cold and then
# warm-started from the first call's eigenvectors, against float64 eigh. (D, rank): odd D, rank-deficient F^ (the
# square root of the spectral map amplifies errors in its null space), full rank up to the kernel's D <= 512.

PREDICTOR_SHAPES = [(7, 7), (64, 5), (96, 96)]
PREDICTOR_FULL_SHAPES = [(128, 128), (255, 255), (256, 256), (256, 20), (512, 512), (512, 64)]


def predictor_floor(corr: torch.Tensor, convert: float = 2.0) -> float:
    """fp32's floor for W_p: FLOORS[float32] plus how far p = (s+ / max s)^(1/c) moves when an eigenvalue moves by 16
    ulp of max s. The root makes a null eigenvalue's p sensitive (sqrt(16 eps) = 1.4e-3: rounding F^ to fp32 alone
    moves null eigenvalues by ~1e-7), while a well-conditioned F^ keeps the floor near 1e-4."""
    s = torch.linalg.eigvalsh(corr.double())
    x = s.clamp_min(0.0) / s.max().clamp_min(torch.finfo(torch.float64).tiny)
    delta = 16 * torch.finfo(torch.float32).eps
    return FLOORS[torch.float32] + float(((x + delta).pow(1.0 / convert) - x.pow(1.0 / convert)).max())


def check_predictor(backend: str, d: int, rank: int, gen: torch.Generator, device: torch.device,
                    solver: str | None = None) -> list[Row]:
    """Two predictor updates on fresh random F^ (the second one EMA-blended from the first, as in training).
    ``solver``: backend "cuda"'s Jacobi kernel (directpred.SOLVERS; None: the one the provider would choose)."""
    def corr() -> torch.Tensor:
        f = torch.randn(4 * d, rank, generator=gen, dtype=torch.float64) @ torch.randn(rank, d, generator=gen,
                                                                                     dtype=torch.float64)
        return f.T @ f / (4 * d)

    first = corr()
    rows, basis = [], None
    for start, f in (("cold", first), ("warm", 0.3 * first + 0.7 * corr())):
        ref = predictor_weight(f, backend="torch")
        lp_torch = predictor_weight(f.float(), backend="torch")
        if solver is None:
            w, basis = predictor_weight(f.float().to(device), basis=basis, return_basis=True, backend=backend)
        else:
            w, basis = directpred.predictor_weight_cuda(f.float().to(device), basis=basis, solver=solver)
        rows.append(Row("predictor_weight", backend if solver is None else f"{backend}[{solver}]", "float32",
                        f"{d}x{d} r{rank}", start, "value", _err(w.cpu(), ref), _slack(lp_torch, ref)
                        + predictor_floor(f)))
    return rows


PHOTO_SHAPES = [(6, 32, 32), (5, 17, 23), (3, 2, 9)]  # (views, height, width); odd widths, windows wider than 9
PHOTO_FULL_SHAPES = [(64, 224, 224), (32, 96, 96), (16, 161, 131)]
PHOTO_MEAN, PHOTO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def check_photometric(n: int, h: int, w: int, gen: torch.Generator) -> Row:
    """The data pipeline's fused photometric kernel (C++, CPU) on fresh random uint8 views and parameters."""
    x = torch.randint(0, 256, (n, h, w, 3), generator=gen, dtype=torch.uint8)
    p = random_photo_params(gen, n, max_sigma=max(2.0, max(h, w) / 8))
    ref = photometric_augment_ref(x, p, PHOTO_MEAN, PHOTO_STD)
    out = photometric_augment(x, p, PHOTO_MEAN, PHOTO_STD, backend="cuda")
    return Row("photometric", "cpp-cpu", "float32", f"{n}x{h}x{w}", "NHWC", "value", _err(out, ref),
               FLOORS[torch.float32])


def _runnable(op: str, name: str, backend: str, device: torch.device, skipped: list[str]) -> bool:
    """Whether ``backend`` can run ``op`` here; if not, the reason goes to ``skipped``."""
    if backend not in available(op):
        skipped.append(f"{name}: no {backend} kernel in this version")
        return False
    try:
        resolve_all((op,), backend, device)
    except BackendUnavailable as e:
        skipped.append(f"{name}: {e}")
        return False
    return True


def _print(row: Row, out) -> Row:
    print(f"{row.case:30s} {row.backend:7s} {row.dtype:9s} {row.shape:10s} {row.layout:10s} {row.quantity:9s} "
          f"{row.err:11.3e} {row.tol:10.3e}  {'pass' if row.ok else 'FAIL'}", file=out)
    return row


def run(*, device: torch.device, full: bool = False, cases: list[str] | None = None,
        backends: tuple[str, ...] = KERNEL_BACKENDS, dtypes: tuple[str, ...] = tuple(DTYPES),
        shapes: list[tuple[int, int]] | None = None, seed: int | None = None, out=None
        ) -> tuple[list[Row], list[str]]:
    """Run the grid; returns (rows, skipped lines). Prints one table row per check as it goes (to ``out``)."""
    out = out or sys.stdout
    seed = int(time.time()) if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    shapes = shapes or (FULL_SHAPES if full else SMALL_SHAPES)
    rows, skipped = [], []
    print(f"fusedssl verify: device {device}, seed {seed}, rule err <= 2 * err_torch + floor "
          f"(floors: {', '.join(f'{str(k)[6:]} {v:g}' for k, v in FLOORS.items())})", file=out)
    print(f"{'op':30s} {'backend':7s} {'dtype':9s} {'shape':10s} {'layout':10s} {'quantity':9s} "
          f"{'max rel err':>11s} {'tolerance':>10s}  result", file=out)
    for case in CASES:
        if cases and case.name not in cases and case.op not in cases:
            continue
        for backend in backends:
            if not _runnable(case.op, case.name, backend, device, skipped):
                continue
            for dname in dtypes:
                for n, d in shapes:
                    for layout in ("contiguous", "strided"):
                        for row in check(case, backend, n, d, DTYPES[dname], layout, gen, device):
                            rows.append(_print(row, out))
    for op in OPTIM_CASES:
        if cases and op not in cases:
            continue
        for backend in backends:
            if not _runnable(op, op, backend, device, skipped):
                continue
            for row in check_optim(op, backend, gen, device):
                rows.append(_print(row, out))
    if not cases or "predictor_weight" in cases:
        for backend in backends:
            if not _runnable("predictor_weight", "predictor_weight", backend, device, skipped):
                continue
            for solver in directpred.SOLVERS if backend == "cuda" else (None,):
                for d, rank in PREDICTOR_FULL_SHAPES if full else PREDICTOR_SHAPES:
                    for row in check_predictor(backend, d, rank, gen, device, solver):
                        rows.append(_print(row, out))
    if not cases or "photometric" in cases:
        why = why_not("photometric_augment", "cuda", torch.device("cpu"))
        if why:
            skipped.append(f"photometric: {why}")
        else:
            for n, h, w in PHOTO_FULL_SHAPES if full else PHOTO_SHAPES:
                rows.append(_print(check_photometric(n, h, w, gen), out))
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl verify", description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="GPU-sized shape grid (N up to 1025, D up to 2048)")
    p.add_argument("--op", action="append", dest="ops", help="only this case or op (repeatable)")
    p.add_argument("--backend", action="append", choices=KERNEL_BACKENDS, dest="backends")
    p.add_argument("--dtype", action="append", choices=tuple(DTYPES), dest="dtypes")
    p.add_argument("--seed", type=int, default=None, help="input seed (default: from the clock, printed)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    known = {c.name for c in CASES} | {c.op for c in CASES} | set(OPTIM_CASES) | {"predictor_weight", "photometric"}
    for name in args.ops or ():
        if name not in known:
            p.error(f"--op {name!r} is not one of {', '.join(sorted(known))}")
    rows, skipped = run(device=device, full=args.full, cases=args.ops, backends=tuple(args.backends or KERNEL_BACKENDS),
                        dtypes=tuple(args.dtypes or DTYPES), seed=args.seed)
    for line in skipped:
        print(f"skipped  {line}")
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows)} checks, {len(rows) - len(failed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0
