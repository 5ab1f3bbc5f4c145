"""``fusedssl bench lars``: one LARS step (and one EMA update) over every parameter of a ResNet-50 (+ projector).

Providers: ``loop`` (a per-parameter Python loop with a host-side trust ratio, as solo-learn's LARS and apex's LARC
run it), ``foreach`` (kernels.lars_step_ backend "torch": the multi-tensor reference engine/optim.py uses) and
``cuda`` (csrc/optim.cu, GPU only). Same tensors, same process, warm-up excluded, median with p20/p80 over
repetitions, with the bytes each provider's update moves and the GB/s that makes (``_bytes``). The fused kernel
exists to beat the loop by a wide margin (5x is the goal) on a GPU. Rows go to
bench/results/<device>/lars.csv (harness.FIELDS: op lars_step_ or ema_, n = tensors, d = values).
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from fusedssl import kernels

from . import harness


def _loop_lars(params, grads, bufs, lr, momentum, wd, eta, adapt):
    for p, g, b in zip(params, grads, bufs, strict=True):
        if adapt:
            g = g + wd * p
            wn, gn = float(p.norm()), float(g.norm())  # host sync per tensor, like the per-parameter optimisers
            if wn > 0 and gn > 0:
                g = g * (eta * wn / gn)
        b.mul_(momentum).add_(g)
        p.add_(b, alpha=-lr)


def _loop_ema(teacher, online, tau):
    for t, o in zip(teacher, online, strict=True):
        t.mul_(tau).add_(o, alpha=1 - tau)


def _bytes(op: str, provider: str, fn, numel: int) -> int:
    """Bytes one update moves: the torch providers' aten ops counted as they run (bench/flops.py: every input and
    output of each op, norms and temporaries included); the fused kernel's minimum, each fp32 tensor read or written
    once (LARS: parameters, gradients and momentum read, parameters and momentum written; EMA: 2 read, 1 written)."""
    from . import flops

    if provider == "cuda":
        return 4 * numel * (5 if op == "lars_step_" else 3)
    return flops.count(lambda: fn(0)).bytes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench lars", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="results folder (a <device>/lars.csv inside)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--backbone", default="resnet50", choices=("resnet18", "resnet50"))
    p.add_argument("--projector", type=int, default=8192, help="width of the 2-layer projector after the backbone")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = getattr(torchvision.models, args.backbone)()
    w = args.projector
    net.fc = torch.nn.Sequential(torch.nn.Linear(net.fc.in_features, w), torch.nn.BatchNorm1d(w), torch.nn.Linear(w, w))
    shapes = [tuple(q.shape) for q in net.parameters()]
    g = torch.Generator().manual_seed(0)

    def tensors():
        return [torch.randn(s, generator=g).to(device) for s in shapes]

    params, grads, bufs, online = tensors(), tensors(), tensors(), tensors()
    weights = [i for i, s in enumerate(shapes) if len(s) > 1]
    others = [i for i, s in enumerate(shapes) if len(s) <= 1]
    numel = sum(q.numel() for q in params)

    def lars(step):
        def run(_):
            for idx, adapt in ((weights, True), (others, False)):
                step([params[i] for i in idx], [grads[i] for i in idx], [bufs[i] for i in idx], 1e-6, 0.9, 1e-6,
                     1e-3, adapt)
        return run

    def fused(backend):
        return lambda ps, gs, bs, lr, m, wd, eta, adapt: kernels.lars_step_(
            ps, gs, bs, lr=lr, momentum=m, weight_decay=wd, eta=eta, adapt=adapt, backend=backend)

    provs = {"lars_step_": {"loop": lars(_loop_lars), "foreach": lars(fused("torch"))},
             "ema_": {"loop": lambda _: _loop_ema(params, online, 0.999),
                      "foreach": lambda _: kernels.ema_(params, online, 0.999, backend="torch")}}
    notes = []
    if device.type == "cuda" and "cuda" in kernels.available("lars_step_"):
        try:
            kernels._backend.resolve("lars_step_", "cuda", device)
            provs["lars_step_"]["cuda"] = lars(fused("cuda"))
            provs["ema_"]["cuda"] = lambda _: kernels.ema_(params, online, 0.999, backend="cuda")
        except kernels.BackendUnavailable as e:
            notes.append(f"cuda: {e}")
    else:
        notes.append("cuda: not timed (no GPU here)")
    stamp = harness.env(device)
    rows = []
    print(f"{len(shapes)} tensors, {numel / 1e6:.1f} M values ({args.backbone} + {w} projector) on {stamp['device']}; "
          "median ms (p20-p80), speedup vs loop")
    for op, fns in provs.items():
        loop_ms = None
        for name, fn in fns.items():
            p20, p50, p80 = harness.time_fn(fn, device=device, warmup=3, reps=args.reps)
            loop_ms = loop_ms or p50
            print(f"  {op:11s} {name:8s} {p50:9.3f} ms ({p20:.3f}-{p80:.3f})  {loop_ms / p50:6.2f}x")
            base = dict(op=op, provider=name, mode=f"{args.backbone}+{w}", n=len(shapes), d=numel, dtype="float32",
                        **stamp)
            rows += harness.ms_rows(base, p20, p50, p80)
            moved = _bytes(op, name, fn, numel)
            rows += [{**base, "metric": "bytes", "value": f"{moved:.6g}", "unit": "B"},
                     {**base, "metric": "gbs", "value": f"{moved / p50 / 1e6:.6g}", "unit": "GB/s"}]
    harness.finish(args.out, stamp, "lars", rows, notes)
    return 0
