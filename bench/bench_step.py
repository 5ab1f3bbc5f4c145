"""``fusedssl bench step``: training images/s and a per-phase breakdown of one recipe, several variants in one run.

Variants (each a config override of the recipe; those that cannot run here are listed with the reason):
  reference        kernels.backend=torch (the plain PyTorch objective)
  fused            kernels.backend=triton (GPU only: interpreter timings mean nothing)
  no_channels_last run.channels_last=false
  fp32 / bf16      the other precision than the recipe's (auto: bf16 on GPU, fp32 on CPU)
  compile          run.compile=true (only with --compile: compiling a ResNet takes minutes on a CPU)

Two measurements per variant, after ``--warmup`` steps:
  * throughput: ``--steps`` plain training steps with no synchronisation inside, one at the end -> images/s (source
    images, i.e. the global batch, per second), and peak memory;
  * breakdown: the same number of steps with a device synchronisation between phases -> median ms of data (views),
    forward (online + teacher), objective, backward, optimiser (step, EMA, DirectPred). Synchronising removes
    overlap, so the phases add up to more than the throughput step; under DDP the gradient all-reduce overlaps the
    backward and is counted there (single process here: no communication phase).
Rows go to bench/results/<device>/step.csv (long format, harness.FIELDS: op=train_step, provider=variant, mode=phase,
n=global batch, d=image size, dtype=precision).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from fusedssl.engine import config, dist, train

from . import harness

PHASES = ("data", "forward", "objective", "backward", "optimizer")


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


def measure(cfg: config.Config, steps: int, warmup: int) -> dict:
    """Throughput and per-phase medians of ``cfg`` on this process's device."""
    info = dist.DistInfo(rank=0, world=1, local_rank=0, device=torch.device(
        "cuda" if cfg.run.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"))
    device = info.device
    torch.manual_seed(cfg.run.seed)
    st = train.build_stages(cfg, info)
    st.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    args = (st.net, st.model, st.teacher, st.method, st.opt, st.sched, st.prec, cfg.optim.grad_clip,
            cfg.optim.accumulate_steps)
    step = 0
    for _ in range(warmup):
        train.train_step(step % st.total, st.data.views(step), *args)
        step += 1
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train.train_step(step % st.total, st.data.views(step), *args)
        step += 1
    _sync(device)
    dt = time.perf_counter() - t0
    phases = {p: [] for p in PHASES}
    for _ in range(steps):
        marks = [time.perf_counter()]

        def mark(marks=marks):
            _sync(device)
            marks.append(time.perf_counter())

        views = st.data.views(step)
        mark()
        st.opt.zero_grad(set_to_none=True)
        out = train.forward_views(st.net, st.teacher, views, st.prec)
        mark()
        loss, _ = st.method(out)
        mark()
        st.prec.backward(loss)
        mark()
        st.prec.step(st.opt, st.model.parameters(), cfg.optim.grad_clip)
        if st.teacher is not None:
            st.teacher.update(st.model, float(st.sched.ema[step % st.total]))
        st.method.after_step(st.model, step)
        mark()
        for p, a, b in zip(PHASES, marks, marks[1:], strict=False):  # marks has one more entry than PHASES
            phases[p].append(1000 * (b - a))
        step += 1
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    med = {p: float(torch.tensor(v).median()) for p, v in phases.items()}
    return {"images_per_s": steps * cfg.data.batch_size / dt, "step_ms": 1000 * dt / steps, "peak_mem": peak,
            "phases": med, "precision": st.prec.name, "device": device}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench step", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="recipe to measure (YAML)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override applied to every variant (repeatable)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--variants", default=None, help="comma list (default: every variant that runs here)")
    p.add_argument("--compile", action="store_true", help="include the torch.compile variant")
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
        r = measure(cfg, args.steps, args.warmup)
        results[name] = r
        common = dict(op="train_step", provider=name, n=cfg.data.batch_size, d=cfg.data.image_size,
                      dtype=r["precision"], **stamp)
        rows.append({**common, "mode": "step", "metric": "images_per_s", "value": f"{r['images_per_s']:.6g}",
                     "unit": "img/s"})
        rows.append({**common, "mode": "step", "metric": "p50", "value": f"{r['step_ms']:.6g}", "unit": "ms"})
        rows.append({**common, "mode": "step", "metric": "peak_mem", "value": f"{r['peak_mem']:.6g}", "unit": "MiB"})
        for phase, ms in r["phases"].items():
            rows.append({**common, "mode": phase, "metric": "p50", "value": f"{ms:.6g}", "unit": "ms"})
    print(f"train step of {args.config} on {stamp['device']}, torch {stamp['torch']}: batch {base.data.batch_size}, "
          f"{base.data.image_size} px, {base.model.backbone}, {base.method.name}; {args.steps} steps per measurement")
    print(f"{'variant':18s} {'img/s':>8s} {'step ms':>8s} " + " ".join(f"{p:>10s}" for p in PHASES)
          + f" {'objective %':>11s}")
    for name, r in results.items():
        ph = r["phases"]
        share = 100 * ph["objective"] / sum(ph.values())
        print(f"{name:18s} {r['images_per_s']:8.1f} {r['step_ms']:8.1f} " + " ".join(f"{ph[p]:10.2f}" for p in PHASES)
              + f" {share:11.1f}")
    harness.finish(args.out, stamp, "step", rows, notes)
    return 0
