"""``fusedssl bench all``: the whole performance record of one machine in one command, dated, device-stamped and
budgeted, so the first minutes on a rarely lent GPU produce the record.

Stages run in order of value, each with its own time estimate for this kind of device; a stage starts only if the
budget left covers its estimate, and every stage that did not run is recorded with the reason (stages.csv):
  smoke        GPU only: every ``gpu``-marked test (the GPU-only crash cases of the reviews among them) and one training
               step per method under ``torch.cuda.set_sync_debug_mode("warn")``, each host sync listed (syncs.csv)
  ceilings     the device's own copy bandwidth and matmul FLOP/s, the roofline every kernel figure is read against
  verify       every op and backend against the float64 reference; on a GPU a reduced grid (bf16 + fp32, one
               published-sized and one odd shape) that keeps the cold Triton compiles few
  kernels:*    ``bench kernels`` and ``bench frobenius`` (one stage, the covariance and frobenius families);
               ``bench step`` comes next, then ``bench matrix_log``, ``bench directpred``, ``bench lars``
  step         ``bench step``: GPU: ResNet-50, Barlow Twins with the 8192 projector, 224 px, bf16 channels-last, on
               device-resident views (model alone) and with the data stage, plus the objective at 8 GPUs' gathered N
  data         ``bench data``: the PIL fallback, and DALI where it is installed
After every finished stage the renderer (bench/render.py) rewrites tables.md and the plots, and, with ``--archive
DIR``, one archive record.tar.gz of everything so far is rebuilt in DIR (atomically: a run stopped at any point still
leaves what finished) next to tables.md, stages.csv and three plots (with gpu_suite.sh's two logs, 7 files, no
folders: every other plot and CSV is in the archive).

``--quick`` is the CPU/CI size (tiny shapes, eager providers, a few steps); ``--smoke`` runs the smoke stage alone;
``--dry-run`` prints the stages with their estimates against the budget and does nothing else (exit 1 if the
estimates do not fit). Estimates are the planning figures below, not measurements; stages.csv records the seconds
each stage really took, so the next record can correct them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import harness, render

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 330
# What the archive folder holds: record.tar.gz, tables.md, stages.csv and three plots; gpu_suite.sh adds its
# suite.log and build.log, and the GPU machine returns at most 8 files
PUBLISHED_PLOTS = 3
RECORD_SHAPES = [(256, 2048), (97, 130)]  # verify on a GPU: one published-sized shape, one odd one
# The objective benchmarks' shapes in the GPU record (bench/aot.py --suite compiles their launches ahead of time)
RECORD_KERNEL_SHAPES = {"kernels:covariance": [(256, 8192), (2048, 8192)], "kernels:frobenius": [(256, 2048),
                                                                                              (2048, 1024)]}


def _shapes(name: str) -> str:
    return ",".join(f"{n}x{d}" for n, d in RECORD_KERNEL_SHAPES[name])


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
    from . import verify

    if quick:
        kw = {"cases": ["col_normalize", "vicreg_covariance", "lars_step_"], "dtypes": ("float32",),
              "shapes": [(33, 50)]}
    elif device.type == "cuda":
        kw = {"dtypes": ("bfloat16", "float32"), "shapes": RECORD_SHAPES}
    else:
        kw = {}
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


# ------------------------------------------------------------------------------------------------ the smoke stage

SYNC_METHODS = {"barlow": [], "vicreg": [], "simclr": [], "byol": ["model.predictor=256-128"],
                "directpred": ["model.predictor=128", "model.predictor_bias=false"]}


def sync_audit(device: torch.device, folder: Path) -> int:
    """One training step per method under set_sync_debug_mode("warn"): every host synchronisation, where it
    happened (syncs.csv). Returns how many were seen."""
    from fusedssl.engine import config, dist, train

    rows = []
    for method, extra in SYNC_METHODS.items():
        cfg = config.load(None, ["data.source=synthetic", "data.synthetic_size=256", "data.batch_size=128",
                                 "data.image_size=64", "model.projector=512-128", "evaluate.knn=false",
                                 "log.progress=false", f"method.name={method}", "run.device=cuda", *extra])
        st = train.build_stages(cfg, dist.DistInfo(rank=0, world=1, local_rank=0, device=device))
        st.model.train()
        train.train_step(st, 0, st.data.views(0))
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train.train_step(st, 1, st.data.views(1))
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in seen if "synchroniz" in str(w.message).lower()]
        rows += [{"method": method, "where": f"{Path(w.filename).name}:{w.lineno}",
                  "what": str(w.message).splitlines()[0][:200]} for w in syncs]
        if not syncs:
            rows.append({"method": method, "where": "", "what": "no host synchronisation"})
        print(f"  sync audit: {method}: {len(syncs)} host synchronisation(s) in one step")
    with open(folder / "syncs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "where", "what"])
        w.writeheader()
        w.writerows(rows)
    return sum(r["where"] != "" for r in rows)


def smoke(device: torch.device, folder: Path) -> str | None:
    if device.type != "cuda":
        return None
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    junit = folder / "smoke_tests.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", "tests"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    (folder / "smoke_tests.log").write_text(proc.stdout[-20000:] + proc.stderr[-5000:])
    print(f"  gpu tests: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else 'no output'}")
    sync_audit(device, folder)
    return "gpu tests failed" if proc.returncode else None


# ------------------------------------------------------------------------------------------------ stages, budget


@dataclass
class Stage:
    name: str
    estimate_s: dict[str, float]  # by device kind: "gpu" (the standard GPU record), "cpu", "quick"
    run: Callable[[], object]     # returns a failure description, or a falsy value when it went well


def _bench(module: str, argv: list[str]) -> Callable[[], object]:
    def run():
        return importlib.import_module(f"fusedssl.bench.{module}").main(argv) and "non-zero exit"
    return run


def stages(device: torch.device, quick: bool, folder: Path) -> list[Stage]:
    """The stages for this device and size, in order of value (the planning estimates are seconds)."""
    gpu = device.type == "cuda"
    raw = str(folder / "_raw")
    if quick:
        args = {"kernels:covariance": ["--shapes", "64x128", "--providers", "eager"],
                "kernels:frobenius": ["--shapes", "64x128", "--providers", "eager"],
                "kernels:matrix_log": ["--shapes", "64x64", "--providers", "original,eager"],
                "kernels:lars": ["--reps", "3", "--backbone", "resnet18", "--projector", "256"],
                "kernels:directpred": ["--dims", "32", "--rows", "64", "--reps", "3"],
                "data": ["--images", "24", "--size", "64", "--batch", "8", "--steps", "2", "--warmup", "1",
                         "--repeats", "1", "--workers", "1"],
                "step": ["--config", str(ROOT / "configs" / "smoke.yaml"), "--steps", "2", "--warmup", "1",
                         "--variants", "reference"]}
    elif gpu:
        args = {"kernels:covariance": ["--shapes", _shapes("kernels:covariance")],
                "kernels:frobenius": ["--shapes", _shapes("kernels:frobenius")],
                "kernels:matrix_log": ["--providers", "original,eager,compile,triton,exact", "--shapes",
                                       "1024x2048,256x2048"],
                "kernels:lars": [], "kernels:directpred": [],
                "data": ["--images", "256", "--steps", "8"],
                "step": ["--config", str(ROOT / "configs" / "published" / "barlow_imagenet_r50_1000ep.yaml"),
                         "--set", "data.source=synthetic", "--set", "data.synthetic_size=1024", "--set",
                         "data.image_size=224", "--set", "data.batch_size=256", "--steps", "10", "--warmup", "5",
                         "--variants", "reference,fused", "--world", "8"]}
    else:
        args = {"kernels:covariance": [], "kernels:frobenius": [], "kernels:matrix_log": [], "kernels:lars": [],
                "kernels:directpred": [],
                "data": [], "step": ["--config", str(ROOT / "configs" / "demo.yaml"), "--steps", "3", "--warmup",
                                     "1"]}
    module = {"kernels:covariance": "bench_covariance", "kernels:frobenius": "bench_frobenius",
              "kernels:matrix_log": "bench_matrix_log",
              "kernels:lars": "bench_lars", "kernels:directpred": "bench_directpred", "data": "bench_data",
              "step": "bench_step"}

    def bench(name):
        return _bench(module[name], ["--out", raw, *args[name]])

    def kernels():  # the covariance and frobenius families: one stage, one estimate
        return bench("kernels:covariance")() or bench("kernels:frobenius")()

    est = {  # gpu: planning figures for one H200 with cold Triton caches; quick: 2 CPU cores
        "smoke": {"gpu": 100, "cpu": 0, "quick": 0}, "ceilings": {"gpu": 10, "cpu": 15, "quick": 5},
        "verify": {"gpu": 45, "cpu": 240, "quick": 15}, "kernels:covariance": {"gpu": 45, "cpu": 120, "quick": 10},
        "step": {"gpu": 60, "cpu": 120, "quick": 25}, "kernels:matrix_log": {"gpu": 30, "cpu": 120, "quick": 10},
        "kernels:directpred": {"gpu": 15, "cpu": 60, "quick": 5}, "kernels:lars": {"gpu": 10, "cpu": 60, "quick": 10},
        "data": {"gpu": 15, "cpu": 120, "quick": 20}}
    runs = {"smoke": lambda: smoke(device, folder),
            "ceilings": lambda: harness.append_csv(folder / "ceilings.csv", ceilings(device, quick)) and None,
            "verify": lambda: verify_rows(device, quick, folder) and "failed checks",
            **{name: bench(name) for name in module}, "kernels:covariance": kernels}
    order = ["smoke", "ceilings", "verify", "kernels:covariance", "step", "kernels:matrix_log", "kernels:directpred",
             "kernels:lars", "data"]
    return [Stage(name, est[name], runs[name]) for name in order]


def _kind(device: torch.device, quick: bool) -> str:
    return "quick" if quick else ("gpu" if device.type == "cuda" else "cpu")


def _flatten(folder: Path) -> None:
    """The benchmarks write <raw>/<device>/<name>.csv: move them into the record folder."""
    raw = folder / "_raw"
    for f in raw.glob("*/*.csv"):
        dest = folder / f.name
        if dest.exists():  # a benchmark run twice in one record: keep both rows
            with open(dest, "a") as out, open(f) as src:
                next(src)
                out.write(src.read())
            f.unlink()
        else:
            shutil.move(str(f), dest)
    shutil.rmtree(raw, ignore_errors=True)


def _publish(folder: Path, archive_dir: Path | None) -> None:
    """Render, and with an archive folder: rebuild record.tar.gz there atomically, beside the tables and plots."""
    try:
        tables, pngs = render.render(folder)
    except ValueError:  # nothing measured yet
        tables, pngs = None, []
    if archive_dir is None:
        return
    archive_dir.mkdir(parents=True, exist_ok=True)
    tmp = archive_dir / "record.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    os.replace(tmp, archive_dir / "record.tar.gz")
    for old in [*archive_dir.glob("*.png"), archive_dir / "tables.md"]:  # an earlier stage's plots may be others
        old.unlink(missing_ok=True)
    plots = sorted(pngs, key=lambda q: (q.name != "roofline.png", q.name))[:PUBLISHED_PLOTS]
    for p in [tables, folder / "stages.csv", *plots]:
        if p is not None and p.exists():
            shutil.copy2(p, archive_dir / p.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU/CI size: tiny shapes, eager providers, a few steps")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results root (default bench/results)")
    p.add_argument("--skip", default="", help="comma list of stages to skip (e.g. smoke,data)")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for all stages (default: 330 on a GPU, "
                                                                 "no limit elsewhere)")
    p.add_argument("--smoke", action="store_true", help="the smoke stage only")
    p.add_argument("--dry-run", action="store_true", help="list the stages and their estimates; run nothing")
    p.add_argument("--archive", default=None, help="folder for record.tar.gz, tables.md, stages.csv and the plots "
                                                   "(at most 8 files, rebuilt after every stage)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--plan", choices=("gpu", "cpu", "quick"), default=None,
                   help="with --dry-run: list another device's plan (e.g. the GPU record's, on a CPU machine)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.plan and not args.dry_run:
        p.error("--plan only goes with --dry-run")
    kind = args.plan or _kind(device, args.quick)
    budget = args.budget_s if args.budget_s is not None else (DEFAULT_BUDGET_S if kind == "gpu" else float("inf"))
    skip = set(filter(None, args.skip.split(",")))
    stamp = harness.env(device)
    folder = Path(args.out) / stamp["device"].replace(" ", "_") / datetime.date.today().isoformat()
    plan = [s for s in stages(device, kind == "quick", folder) if s.name not in skip and (not args.smoke or
                                                                                            s.name == "smoke")]
    if args.dry_run:
        total = sum(s.estimate_s[kind] for s in plan)
        print(f"fusedssl bench all --dry-run: {kind} estimates, budget {budget:g} s")
        for s in plan:
            print(f"  {s.name:20s} {s.estimate_s[kind]:6.0f} s")
        print(f"  {'total':20s} {total:6.0f} s {'within' if total <= budget else 'OVER'} the budget")
        return 0 if total <= budget else 1
    folder.mkdir(parents=True, exist_ok=True)
    archive = Path(args.archive) if args.archive else None
    print(f"fusedssl bench all on {stamp['device']}: torch {stamp['torch']}, triton {stamp['triton']}, git "
          f"{stamp['git']}, budget {budget:g} s -> {folder}", flush=True)
    from fusedssl import kernels

    built, line = kernels.extension_status()
    print(f"[extension] {line}", flush=True)
    log, failures, t_all = [], [], time.perf_counter()
    for s in plan:
        left = budget - (time.perf_counter() - t_all)
        est = s.estimate_s[kind]
        if est > left:
            log.append((s.name, est, "", "skipped", f"estimate {est:.0f} s > {max(left, 0):.0f} s left of the budget"))
            print(f"[{s.name}] skipped: estimate {est:.0f} s > {max(left, 0):.0f} s left", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            status = s.run()
        except Exception as e:  # noqa: BLE001 - a failed stage is reported; the record of the others is still written
            traceback.print_exc()
            status = f"raised {type(e).__name__}"
        _flatten(folder)
        took = time.perf_counter() - t0
        if status:
            failures.append(f"{s.name} ({status})")
        log.append((s.name, est, f"{took:.0f}", "failed" if status else "done", str(status or "")))
        print(f"[{s.name}] {'FAILED' if status else 'done'} in {took:.0f} s (estimate {est:.0f} s)", flush=True)
        _write_stages(folder, log, stamp)
        _publish(folder, archive)
    for name in skip:
        log.append((name, "", "", "skipped", "--skip"))
    _write_stages(folder, log, stamp)
    _publish(folder, archive)
    short = []
    if (folder / "tables.md").exists():
        short = [ln for ln in (folder / "tables.md").read_text().splitlines() if ln.startswith("|")][:24]
    print(f"\nfusedssl bench all: {len(failures)} failed stage(s){': ' + ', '.join(failures) if failures else ''}; "
          f"{time.perf_counter() - t_all:.0f} s; record in {folder}")
    print("\n".join(short))
    return 1 if failures else 0


def _write_stages(folder: Path, log: list[tuple], stamp: dict) -> None:
    with open(folder / "stages.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", "estimate_s", "seconds", "status", "note", "device", "git", "date"])
        for row in log:
            w.writerow([*row, stamp["device"], stamp["git"], stamp["date"]])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
