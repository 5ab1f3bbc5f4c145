"""``fusedssl bench sidebyside``: BYOL and SimSiam trained by fusedssl and by an independent implementation built from
lightly's components, in the same regime, evaluated by the same kNN.

A method that does badly here may be the engine's fault or the recipe's; this tells them apart. The independent run
takes lightly's heads (``BYOLProjectionHead``/``BYOLPredictionHead``, ``SimSiamProjectionHead``/
``SimSiamPredictionHead``), its ``NegativeCosineSimilarity`` symmetrised as lightly's examples do, ``update_momentum``
and ``cosine_schedule``, in the plain loop of lightly's examples (each view forwarded on its own, the EMA update
before the step's forward). Everything else is fusedssl's and shared: the backbone (same seeded initialisation),
the views of every step (the data plan), the batch, the optimiser with its parameter groups and lr schedule, the
number of steps, and the evaluation. With the same seed both start from the same weights, so their kNN at step 0
agrees; only the implementations differ after it.

Every ``--every`` steps and at the end: weighted kNN (k 20, T 0.07) on the held-out split with the full bank and with
10 labelled images per class, and the effective rank of the held-out features, for the online backbone and (BYOL)
the EMA teacher's. Rows go to bench/results/<device>/sidebyside.csv (op=sidebyside, provider=fusedssl|lightly,
mode=<method>/<weights>, n=step, metric=knn|knn10shot|effective_rank), the table to sidebyside.md.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from fusedssl.bench import harness
from fusedssl.engine import config, dist, optim, train
from fusedssl.engine import model as model_stage
from fusedssl.engine.evaluate import metrics

METHODS = ("byol", "simsiam")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class LightlyNet(nn.Module):
    """Backbone + lightly's projection and prediction heads, shaped by the recipe's width strings."""

    def __init__(self, method: str, model_cfg):
        super().__init__()
        from lightly.models.modules import heads

        self.backbone, feat = model_stage._backbone(model_cfg.backbone, model_cfg.stem, model_cfg.zero_init_residual)
        proj, pred = config.widths(model_cfg.projector), config.widths(model_cfg.predictor)
        if method == "byol":
            if len(proj) != 2 or len(pred) != 2:
                raise ValueError(f"lightly's BYOL heads have one hidden layer: model.projector={model_cfg.projector!r}"
                                 f" and model.predictor={model_cfg.predictor!r} must each be 'HIDDEN-OUT'")
            if model_cfg.projector_last_bn:
                # The recipe ends the projector in BN(affine=False); lightly's generic head builds the same layers.
                self.projector = heads.ProjectionHead([
                    (feat, proj[0], nn.BatchNorm1d(proj[0]), nn.ReLU()),
                    (proj[0], proj[1], nn.BatchNorm1d(proj[1], affine=False), None, model_cfg.projector_bias)])
            else:
                self.projector = heads.BYOLProjectionHead(feat, proj[0], proj[1])
            self.predictor = heads.BYOLPredictionHead(proj[1], pred[0], pred[1])
        else:
            if len(proj) != 3 or proj[0] != proj[1] or len(pred) != 2:
                raise ValueError(f"lightly's SimSiam heads are 'H-H-OUT' and 'HIDDEN-OUT': model.projector="
                                 f"{model_cfg.projector!r}, model.predictor={model_cfg.predictor!r}")
            self.projector = heads.SimSiamProjectionHead(feat, proj[0], proj[2])
            self.predictor = heads.SimSiamPredictionHead(proj[2], pred[0], pred[1])
        self.feat_dim = feat


def _cfg(method: str, args) -> config.Config:
    return config.load(CONFIGS / f"{method}_demo.yaml",
                       [f"run.epochs={args.epochs}", "run.steps=0", f"run.seed={args.seed}", "log.progress=false",
                        "evaluate.knn=false", *args.overrides])


@torch.no_grad()
def measure(backbone: nn.Module, data, cfg) -> dict[str, float]:
    """kNN (full bank, 10 per class) and effective rank of ``backbone``'s held-out features."""
    c = cfg.data
    was = backbone.training
    backbone.eval()
    tr, te = (metrics.features(backbone, s.images, size=c.image_size, mean=c.mean, std=c.std,
                               device=torch.device("cpu"), channels_last=cfg.run.channels_last)
              for s in (data.train, data.test))
    backbone.train(was)
    trn, ten = F.normalize(tr, dim=1), F.normalize(te, dim=1)
    bank = metrics.few_shot_bank(data.train.labels, 10, seed=0)
    k, t = cfg.evaluate.knn_k, cfg.evaluate.knn_temperature
    return {"knn": 100 * metrics.knn_accuracy(trn, data.train.labels, ten, data.test.labels, k=k, temperature=t),
            "knn10shot": 100 * metrics.knn_accuracy(trn[bank], data.train.labels[bank], ten, data.test.labels,
                                                    k=min(k, len(bank)), temperature=t),
            "effective_rank": metrics.effective_rank(te)}


def _stages(cfg: config.Config, every: int) -> tuple[train.Stages, set[int]]:
    """The engine's stages for ``cfg`` (the run's seed set first) and the steps to evaluate at."""
    torch.manual_seed(cfg.run.seed)
    st = train.build_stages(cfg, dist.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    return st, {*range(every, st.total + 1, every), st.total}


def run_fusedssl(method: str, cfg: config.Config, every: int, record) -> None:
    """The engine's own step (train.train_step) on the recipe."""
    st, checkpoints = _stages(cfg, every)
    record("fusedssl", method, 0, st.model.backbone, st.teacher.backbone if st.teacher else None, st.data)
    for step in range(st.total):
        train.train_step(st, step, st.data.views(step))
        if step + 1 in checkpoints:
            record("fusedssl", method, step + 1, st.model.backbone, st.teacher.backbone if st.teacher else None,
                   st.data)


def run_lightly(method: str, cfg: config.Config, every: int, record) -> None:
    """lightly's components in the loop of its examples, on fusedssl's data, optimiser and schedules."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    st, checkpoints = _stages(cfg, every)
    net = LightlyNet(method, cfg.model)
    net.backbone.load_state_dict(st.model.backbone.state_dict())  # the same initial backbone as the engine's run
    if cfg.run.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt, sched = optim.build(cfg.optim, net, st.resolved, ema_base=cfg.method.ema_base,
                             ema_schedule=cfg.method.ema_schedule)
    teacher_b = teacher_p = None
    if method == "byol":
        teacher_b, teacher_p = copy.deepcopy(net.backbone), copy.deepcopy(net.projector)
        deactivate_requires_grad(teacher_b)
        deactivate_requires_grad(teacher_p)
    crit = NegativeCosineSimilarity()
    total, warm = st.resolved.total_steps, st.resolved.warmup_steps
    record("lightly", method, 0, net.backbone, teacher_b, st.data)
    for step in range(total):
        lr = float(sched.lr[step])
        optim.set_lr(opt, lr, st.resolved.peak_lr if step >= warm else lr)
        x0, x1 = st.data.views(step)
        if method == "byol":
            m = cosine_schedule(step, total, cfg.method.ema_base, 1.0)
            update_momentum(net.backbone, teacher_b, m)
            update_momentum(net.projector, teacher_p, m)
            p0, p1 = (net.predictor(net.projector(net.backbone(x))) for x in (x0, x1))
            with torch.no_grad():
                t0, t1 = (teacher_p(teacher_b(x)) for x in (x0, x1))
            loss = 0.5 * (crit(p0, t1) + crit(p1, t0))
        else:
            z0, z1 = (net.projector(net.backbone(x)) for x in (x0, x1))
            p0, p1 = net.predictor(z0), net.predictor(z1)
            loss = 0.5 * (crit(p0, z1.detach()) + crit(p1, z0.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step + 1 in checkpoints:
            record("lightly", method, step + 1, net.backbone, teacher_b, st.data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench sidebyside", description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--epochs", type=int, default=5, help="pretraining epochs (the demo recipes' digits: 31 steps)")
    p.add_argument("--every", type=int, default=31, help="evaluate every N steps (and at the end)")
    p.add_argument("--seed", type=int, default=0, help="run seed (initialisation, split, data plan)")
    p.add_argument("--results", default=None, help="results folder (default bench/results/<device>)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override both runs' recipe (e.g. --set method.ema_base=0.996)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    chosen = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for m in chosen:
        if m not in METHODS:
            raise SystemExit(f"fusedssl bench sidebyside: --methods {m!r} is not one of {', '.join(METHODS)}")
    env = harness.env(torch.device("cpu"))
    results = Path(args.results) if args.results else Path(__file__).resolve().parent / "results" / env["device"]
    rows, table = [], {}

    def record(impl: str, method: str, step: int, backbone, teacher, data) -> None:
        for weights, net in (("online", backbone), ("teacher", teacher)):
            if net is None:
                continue
            got = measure(net, data, cfg)
            table.setdefault((method, weights), {}).setdefault(step, {})[impl] = got
            base = {"op": "sidebyside", "provider": impl, "mode": f"{method}/{weights}", "n": step,
                    "d": cfg.data.image_size, "dtype": "fp32", **env}
            rows.extend({**base, "metric": k, "value": f"{v:.2f}", "unit": "dims" if k == "effective_rank" else "%"}
                        for k, v in got.items())
            print(f"{impl:<9} {method:<8} {weights:<8} step {step:>4}  kNN {got['knn']:.1f} %  10-shot "
                  f"{got['knn10shot']:.1f} %  rank {got['effective_rank']:.0f}", flush=True)

    for method in chosen:
        cfg = _cfg(method, args)
        for impl, fn in (("fusedssl", run_fusedssl), ("lightly", run_lightly)):
            t0 = time.perf_counter()
            fn(method, cfg, args.every, record)
            print(f"{impl} {method}: {time.perf_counter() - t0:.0f} s", flush=True)
    harness.append_csv(results / "sidebyside.csv", rows)
    md = render(table, env, args)
    (results / "sidebyside.md").write_text(md)
    print(md)
    return 0


def render(table: dict, env: dict, args) -> str:
    lines = [f"Device {env['device']}, torch {env['torch']}, fusedssl {env['fusedssl']} (git {env['git']}), "
             f"{env['date']}; the demo recipes, {args.epochs} epochs, seed {args.seed}"
             + (f", overrides {' '.join(args.overrides)}" if args.overrides else "") + ".", "",
             "| method | weights | step | kNN fusedssl | kNN lightly | 10-shot fusedssl | 10-shot lightly | "
             "rank fusedssl | rank lightly |", "|---|---|---|---|---|---|---|---|---|"]
    for (method, weights), by_step in table.items():
        for step, got in sorted(by_step.items()):
            cells = []
            for key, fmt in (("knn", "{:.1f} %"), ("knn10shot", "{:.1f} %"), ("effective_rank", "{:.0f}")):
                cells += [fmt.format(got[i][key]) if i in got else "-" for i in ("fusedssl", "lightly")]
            lines.append(f"| {method} | {weights} | {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
