"""``fusedssl bench step``: training images/s and a per-phase breakdown of one recipe, several variants in one run.

Variants (each a config override of the recipe; those that cannot run here are listed with the reason):
  reference        kernels.backend=torch (the plain PyTorch objective)
  fused            kernels.backend=triton (GPU only: interpreter timings mean nothing)
  no_channels_last run.channels_last=false
  fp32 / bf16      the other precision than the recipe's (auto: bf16 on GPU, fp32 on CPU)
  compile          run.compile=true (only with --compile: compiling a ResNet takes minutes on a CPU)

Measurements per variant, after ``--warmup`` steps, all through the real ``train.train_step``:
  * model alone (mode ``model``): ``--steps`` steps on a ring of views made once and kept on the device, no
    synchronisation inside -> images/s (source images: the global batch per second) and peak memory. This is the
    ceiling a data pipeline can at best reach;
  * real step (mode ``step``): the same with ``data.views(step)`` (augmentation, host-to-device copies) inside;
  * breakdown: the same number of steps with a device synchronisation after each phase -> median ms of data (views),
    forward (online + teacher), objective, backward, optimiser (step, EMA, DirectPred). Synchronising removes
    overlap, so the phases add up to more than the step; under DDP the gradient all-reduce overlaps the backward and
    is counted there (single process here: no communication phase);
  * the objective at the gathered batch (mode ``objective_gathered``): methods computed on the all-gathered batch
    (Barlow Twins, VICReg's variance and covariance, Matrix-SSL, Kernel-SSL) run their objective on N = batch x
    ``--world`` rows on every rank under DDP, so its forward + backward is timed at that N too, and its share is
    reported against the model-alone step (a one-GPU run at the per-GPU N understates it W^2 times for the N x N
    Gram side).
Rows go to bench/results/<device>/step.csv (long format, harness.FIELDS: op=train_step, provider=variant, mode=phase,
n=global batch, d=image size, dtype=precision).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from fusedssl.engine import config, dist, methods, train

from . import harness

PHASES = ("data", "forward", "objective", "backward", "optimizer")
RING = 4  # views made once for the model-alone measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _variants(cfg: config.Config, device: torch.device, with_compile: bool) -> tuple[dict, list[str]]:
    base_prec = cfg.run.precision if cfg.run.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    other = "fp32" if base_prec != "fp32" else "bf16"
    out = {"reference": ["kernels.backend=torch"], "no_channels_last": ["kernels.backend=torch",
                                                                         "run.channels_last=false"],
           other: ["kernels.backend=torch", f"run.precision={other}"]}
    notes = []
    if device.type == "cuda":
        out["fused"] = ["kernels.backend=triton"]
    else:
        notes.append("fused: skipped, Triton kernels are timed on GPUs only (the CPU interpreter is for verification)")
    if with_compile:
        out["compile"] = ["kernels.backend=torch", "run.compile=true"]
    else:
        notes.append("compile: skipped (pass --compile)")
    return out, notes


def _timed(fn, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of fn(i), one synchronisation at the end."""
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i)
    _sync(device)
    return time.perf_counter() - t0


def objective_ms(st: train.Stages, n: int, reps: int = 5) -> float:
    """Median ms of the method's objective, forward and backward, on random outputs of ``n`` rows (single process:
    what every rank computes under DDP when ``n`` is the gathered batch)."""
    proj = st.model.projector[-1] if not isinstance(st.model.projector[-1], torch.nn.BatchNorm1d) else \
        st.model.projector[-2]
    d = proj.out_features
    dp = st.model.predictor[-1].out_features if st.model.predictor is not None else d
    times = []
    for _ in range(reps + 1):  # the first run warms up
        z = [torch.randn(n, d, device=st.device, requires_grad=True) for _ in range(2)]
        out = methods.Outputs(z=z, p=[torch.randn(n, dp, device=st.device, requires_grad=True) for _ in range(2)]
                              if st.model.predictor is not None else None,
                              t=[torch.randn(n, d, device=st.device) for _ in range(2)] if st.teacher else None)
        _sync(st.device)
        t0 = time.perf_counter()
        loss, _ = st.method(out)
        loss.backward()
        _sync(st.device)
        times.append(1000 * (time.perf_counter() - t0))
        st.method.drop_step()
    return float(torch.tensor(times[1:]).median())


def measure(cfg: config.Config, steps: int, warmup: int, world: int = 8) -> dict:
    """Model-alone and real-step throughput, per-phase medians and the gathered-batch objective of ``cfg``."""
    info = dist.DistInfo(rank=0, world=1, local_rank=0, device=torch.device(
        "cuda" if cfg.run.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"))
    device = info.device
    torch.manual_seed(cfg.run.seed)
    st = train.build_stages(cfg, info)
    st.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ring = [st.data.views(s) for s in range(RING)]  # device-resident: no augmentation, no copies, no syncs
    for i in range(warmup):
        train.train_step(st, i % st.total, ring[i % RING])
    alone = _timed(lambda i: train.train_step(st, (warmup + i) % st.total, ring[i % RING]), steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    real = _timed(lambda i: train.train_step(st, (warmup + i) % st.total, st.data.views(warmup + i)), steps, device)
    phases = {p: [] for p in PHASES}
    for i in range(steps):
        step = warmup + steps + i
        t = [time.perf_counter()]

        def mark(phase, t=t):
            _sync(device)
            now = time.perf_counter()
            phases[phase].append(1000 * (now - t[0]))
            t[0] = now

        views = st.data.views(step)
        mark("data")
        train.train_step(st, step % st.total, views, mark=mark)
    med = {p: float(torch.tensor(v).median()) for p, v in phases.items()}
    gathered = objective_ms(st, cfg.data.batch_size * world) if st.method.gathered and world > 1 else None
    return {"images_per_s": steps * cfg.data.batch_size / alone, "step_ms": 1000 * alone / steps,
            "images_per_s_real": steps * cfg.data.batch_size / real, "step_ms_real": 1000 * real / steps,
            "peak_mem": peak, "phases": med, "precision": st.prec.name, "device": device,
            "objective_gathered_ms": gathered, "world": world}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench step", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="recipe to measure (YAML)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override applied to every variant (repeatable)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--variants", default=None, help="comma list (default: every variant that runs here)")
    p.add_argument("--compile", action="store_true", help="include the torch.compile variant")
    p.add_argument("--world", type=int, default=8,
                   help="time the objective also at batch x WORLD rows, what each rank computes under DDP (default 8)")
    p.add_argument("--out", default="bench/results", help="results folder (a <device>/step.csv inside)")
    args = p.parse_args(argv)
    try:
        base = config.load(args.config, args.overrides)
    except config.ConfigError as e:
        p.error(str(e))
    device = torch.device("cuda" if base.run.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    variants, notes = _variants(base, device, args.compile)
    if args.variants:
        wanted = args.variants.split(",")
        unknown = [w for w in wanted if w not in variants]
        if unknown:
            p.error(f"--variants: {', '.join(unknown)} cannot run here or do not exist (available: "
                    f"{', '.join(variants)})")
        variants = {k: v for k, v in variants.items() if k in wanted}
    os.environ.pop("WORLD_SIZE", None)  # the benchmark is single-process
    stamp = harness.env(device)
    rows, results = [], {}
    for name, over in variants.items():
        cfg = config.load(args.config, [*args.overrides, *over, "evaluate.knn=false"])
        r = measure(cfg, args.steps, args.warmup, args.world)
        results[name] = r
        common = dict(op="train_step", provider=name, n=cfg.data.batch_size, d=cfg.data.image_size,
                      dtype=r["precision"], **stamp)
        for mode, ips, ms in (("model", r["images_per_s"], r["step_ms"]),
                              ("step", r["images_per_s_real"], r["step_ms_real"])):
            rows.append({**common, "mode": mode, "metric": "images_per_s", "value": f"{ips:.6g}", "unit": "img/s"})
            rows.append({**common, "mode": mode, "metric": "p50", "value": f"{ms:.6g}", "unit": "ms"})
        rows.append({**common, "mode": "model", "metric": "peak_mem", "value": f"{r['peak_mem']:.6g}", "unit": "MiB"})
        for phase, ms in r["phases"].items():
            rows.append({**common, "mode": phase, "metric": "p50", "value": f"{ms:.6g}", "unit": "ms"})
        if r["objective_gathered_ms"] is not None:
            rows.append({**common, "mode": "objective_gathered", "n": cfg.data.batch_size * r["world"],
                         "metric": "p50", "value": f"{r['objective_gathered_ms']:.6g}", "unit": "ms"})
    print(f"train step of {args.config} on {stamp['device']}, torch {stamp['torch']}: batch {base.data.batch_size}, "
          f"{base.data.image_size} px, {base.model.backbone}, {base.method.name}; {args.steps} steps per measurement")
    print(f"{'variant':18s} {'model img/s':>11s} {'step img/s':>10s} {'step ms':>8s} "
          + " ".join(f"{p:>10s}" for p in PHASES) + f" {'objective %':>11s} {'at W x N %':>10s}")
    for name, r in results.items():
        ph = r["phases"]
        share = 100 * ph["objective"] / sum(ph.values())
        g = r["objective_gathered_ms"]
        gshare = f"{100 * g / (r['step_ms'] - ph['objective'] + g):10.1f}" if g is not None else f"{'-':>10s}"
        print(f"{name:18s} {r['images_per_s']:11.1f} {r['images_per_s_real']:10.1f} {r['step_ms']:8.1f} "
              + " ".join(f"{ph[p]:10.2f}" for p in PHASES) + f" {share:11.1f} {gshare}")
    harness.finish(args.out, stamp, "step", rows, notes)
    return 0
