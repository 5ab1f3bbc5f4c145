"""``fusedssl bench all``: the whole performance record of one machine in one command, dated and device-stamped.

Stages, in order (each one's failure is reported and the others still run; the exit status is non-zero if any failed):
  1. extension: whether fusedssl.kernels._C is built and can run here (bench/gpu_suite.sh builds it first);
  2. ceilings: the device's own bandwidth (a large device-to-device copy, read + write bytes) and matmul FLOP/s (bf16
     on a GPU, fp32 on a CPU), so every kernel number can be read against what this machine can do;
  3. verify: every kernel against the float64 reference (``--full`` grid on a GPU), rows into verify.csv;
  4. kernels: ``bench kernels`` (covariance family: eager, compile, triton, cuda), ``bench matrix_log``, ``bench lars``,
     ``bench directpred``;
  5. data: ``bench data`` (DALI and the PIL fallback, same files, same recipe);
  6. step: ``bench step`` on the standard recipe (GPU: ResNet-50, Barlow Twins with the 8192 projector, 224 px,
     synthetic images so the model alone is measured; CPU: the smoke recipe);
then the renderer (bench/render.py) writes tables.md and the plots into the same folder and the short table is printed
last. Everything lands in bench/results/<device>/<date>/ as long-format CSV (harness.FIELDS).

``--quick`` is the CPU/CI size (tiny shapes, eager providers, a few steps; about a minute on 2 cores); the default is
the standard GPU sweep (meant to finish inside 10 minutes on one H100); ``--long`` widens the kernel grid.
Timing discipline is each benchmark's own (harness.time_fn: warm-up excluded, CUDA events, rotating inputs, medians
with p20/p80, all providers in the same process).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

from . import harness, render

ROOT = Path(__file__).resolve().parent.parent


def ceilings(device: torch.device, quick: bool) -> list[dict]:
    """Measured bandwidth (GB/s, bytes read + written) and matmul throughput (TFLOP/s) of ``device``."""
    gpu = device.type == "cuda"  # GPU-sized operands only on a GPU: an 8192^3 fp32 matmul takes ~10 s on 2 cores
    n_bytes = (64 if quick else 2048 if gpu else 256) * 2**20
    x = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).normal_()
    y = torch.empty_like(x)
    _, copy_ms, _ = harness.time_fn(lambda _: y.copy_(x), device=device, warmup=3, reps=10)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    m = 512 if quick else 8192 if gpu else 1024
    a, b = (torch.randn(m, m, device=device, dtype=dtype) for _ in range(2))
    _, mm_ms, _ = harness.time_fn(lambda _: a @ b, device=device, warmup=3, reps=10)
    stamp = harness.env(device)
    base = dict(op="ceiling", mode="measured", dtype=str(dtype).replace("torch.", ""), **stamp)
    return [{**base, "provider": "copy", "n": n_bytes, "d": 1, "metric": "bandwidth_gbs",
             "value": f"{2 * n_bytes / (copy_ms * 1e-3) / 1e9:.6g}", "unit": "GB/s"},
            {**base, "provider": "matmul", "n": m, "d": m, "metric": "matmul_tflops",
             "value": f"{2 * m**3 / (mm_ms * 1e-3) / 1e12:.6g}", "unit": "TFLOP/s"}]


def verify_rows(device: torch.device, quick: bool, folder: Path) -> int:
    from fusedssl.kernels import verify

    kw = {"cases": ["col_normalize", "vicreg_covariance", "lars_step_"], "dtypes": ("float32",),
          "shapes": [(33, 50)]} if quick else {"full": device.type == "cuda"}
    with open(folder / "verify.log", "w") as log:
        rows, skipped = verify.run(device=device, seed=0, out=log, **kw)
        for line in skipped:
            print(f"skipped  {line}", file=log)
    stamp = harness.env(device)
    keys = ("device", "torch", "triton", "fusedssl", "git", "date")
    with open(folder / "verify.csv", "w", newline="") as f:
        w = csv.writer(f)  # case names hold commas (barlow_twins_loss[hsic,tsai])
        w.writerow(["case", "backend", "dtype", "shape", "layout", "quantity", "err", "tol", "ok", *keys])
        for r in rows:
            w.writerow([r.case, r.backend, r.dtype, r.shape, r.layout, r.quantity, f"{r.err:.4g}", f"{r.tol:.4g}",
                        r.ok, *(stamp[k] for k in keys)])
    failed = sum(not r.ok for r in rows)
    print(f"  verify: {len(rows)} checks, {failed} failed, {len(skipped)} skipped (verify.log)")
    return failed


def _stages(device: torch.device, quick: bool, long: bool, raw: str) -> list[tuple[str, list[str]]]:
    """(module, argv) of the benchmark stages for this device and size."""
    gpu = device.type == "cuda"
    if quick:
        return [("bench_covariance", ["--out", raw, "--shapes", "64x128", "--providers", "eager"]),
                ("bench_matrix_log", ["--out", raw, "--shapes", "64x64", "--providers", "original,eager"]),
                ("bench_lars", ["--out", raw, "--reps", "3", "--backbone", "resnet18", "--projector", "256"]),
                ("bench_directpred", ["--out", raw, "--dims", "32", "--rows", "64", "--reps", "3"]),
                ("bench_data", ["--out", raw, "--images", "24", "--size", "64", "--batch", "8", "--steps", "2",
                                "--warmup", "1", "--repeats", "1", "--workers", "1"]),
                ("bench_step", ["--out", raw, "--config", str(ROOT / "configs" / "smoke.yaml"), "--steps", "2",
                                "--warmup", "1", "--variants", "reference"])]
    cov = ["--out", raw] + ([] if long or not gpu else ["--shapes", "256x2048,256x8192,1024x2048,1024x8192"])
    step = ["--out", raw, "--config", str(ROOT / "configs" / "published" / "barlow_imagenet_r50_1000ep.yaml"),
            "--set", "data.source=synthetic", "--set", "data.synthetic_size=1024", "--set", "data.image_size=224",
            "--set", "data.batch_size=256", "--steps", "10", "--warmup", "5"] if gpu else \
        ["--out", raw, "--config", str(ROOT / "configs" / "demo.yaml"), "--steps", "3", "--warmup", "1"]
    return [("bench_covariance", cov), ("bench_matrix_log", ["--out", raw]), ("bench_lars", ["--out", raw]),
            ("bench_directpred", ["--out", raw]), ("bench_data", ["--out", raw]), ("bench_step", step)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU/CI size: tiny shapes, eager providers, a few steps")
    p.add_argument("--long", action="store_true", help="the full kernel grid instead of the standard GPU sweep")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results root (default bench/results)")
    p.add_argument("--skip", default="", help="comma list of stages to skip: ceilings, verify, kernels, data, step")
    args = p.parse_args(argv)
    import importlib

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stamp = harness.env(device)
    folder = Path(args.out) / stamp["device"].replace(" ", "_") / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "_raw"
    skip = set(filter(None, args.skip.split(",")))
    failures, t_all = [], time.perf_counter()
    print(f"fusedssl bench all on {stamp['device']}: torch {stamp['torch']}, triton {stamp['triton']}, git "
          f"{stamp['git']} -> {folder}", flush=True)

    from fusedssl.kernels import _cuda

    why = _cuda.why_unavailable(device)
    if why is not None and _cuda.ext() is not None:
        why = "built; its kernels cannot run here (no CUDA device): the cuda rows are skipped"
    print(f"[extension] fusedssl.kernels._C: {'ready' if why is None else why}", flush=True)

    def stage(name: str, fn) -> None:
        if name in skip:
            print(f"[{name}] skipped (--skip)")
            return
        t0 = time.perf_counter()
        try:
            status = fn()
        except Exception:  # noqa: BLE001 - a failed stage is reported; the record of the others is still written
            traceback.print_exc()
            status = "raised"
        if status:
            failures.append(f"{name} ({status})")
        print(f"[{name}] {'FAILED' if status else 'done'} in {time.perf_counter() - t0:.0f} s", flush=True)

    stage("ceilings", lambda: harness.append_csv(folder / "ceilings.csv", ceilings(device, args.quick)))
    stage("verify", lambda: verify_rows(device, args.quick, folder) and "failed checks")
    kinds = {"bench_covariance": "kernels", "bench_matrix_log": "kernels", "bench_lars": "kernels",
             "bench_directpred": "kernels",
             "bench_data": "data", "bench_step": "step"}
    for module, margv in _stages(device, args.quick, args.long, str(raw)):
        kind = kinds[module]
        if kind in skip:
            print(f"[{kind}] skipped (--skip)")
            continue
        mod = importlib.import_module(f"fusedssl.bench.{module}")
        stage(f"kernels:{module[6:]}" if kind == "kernels" else kind,
              lambda mod=mod, margv=margv: mod.main(margv) and "non-zero exit")
    for csv_file in raw.glob("*/*.csv"):  # the benchmarks write <out>/<device>/<name>.csv: flatten into the folder
        shutil.move(str(csv_file), folder / csv_file.name)
    shutil.rmtree(raw, ignore_errors=True)
    tables, pngs = render.render(folder)
    print(f"[render] {tables.name}" + "".join(f", {q.name}" for q in pngs))
    summary = tables.read_text()
    short = [line for line in summary.splitlines() if line.startswith("|")][:24]
    print(f"\nfusedssl bench all: {len(failures)} failed stage(s){': ' + ', '.join(failures) if failures else ''}; "
          f"{time.perf_counter() - t_all:.0f} s; record in {folder}")
    print("\n".join(short))
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
