"""Command line: ``fusedssl train | eval | export | verify | bench | data`` (each with ``--help``)."""

from __future__ import annotations

import argparse
import sys

from . import config

# ``fusedssl bench NAME``: the module of fusedssl.bench that runs it, and whether it runs Triton kernels (which need
# the interpreter set up before fusedssl.kernels is imported, on a machine without a GPU)
BENCHES = {"all": ("suite", True), "render": ("render", False), "aot": ("aot", False), "flops": ("flops", False),
           "kernels": ("bench_covariance", False), "frobenius": ("bench_frobenius", False),
           "normalize": ("bench_normalize", False), "photometric": ("bench_photometric", False),
           "matrix_log": ("bench_matrix_log", False),
           "directpred": ("bench_directpred", False), "step": ("bench_step", False), "data": ("bench_data", False),
           "quality": ("bench_quality", False), "lars": ("bench_lars", False),
           "checkpoint": ("bench_checkpoint", False), "sidebyside": ("bench_sidebyside", False)}


def _bench(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        got = f"unknown benchmark {argv[0]!r}" if argv else "no benchmark named"
        print(f"fusedssl bench: {got}; choose one of {', '.join(BENCHES)} (each with --help)", file=sys.stderr)
        return 2
    import importlib

    module, triton = BENCHES[argv[0]]
    if triton:
        _interpret_triton_without_gpu(f"fusedssl bench {argv[0]}")
    return importlib.import_module(f"fusedssl.bench.{module}").main(argv[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusedssl", description="Self-supervised pretraining with fused objectives")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="pretrain a network from a recipe in configs/")
    tr.add_argument("--config", required=True, help="YAML recipe (overrides of the defaults in engine/config.py)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override one config value, e.g. --set optim.base_lr=0.3 (repeatable)")
    tr.add_argument("--resume", default=None, help="'auto' (newest valid checkpoint of the run) or a path")
    commands = {"eval": ("evaluate a checkpoint: fusedssl eval knn|linear CHECKPOINT | fusedssl eval plot RUNS "
                         "[--help]", _eval),
                "export": ("write a checkpoint as torchvision weights: fusedssl export CHECKPOINT OUT [--help]",
                           _export),
                "verify": ("check every kernel against the float64 reference (fusedssl verify --help)", _verify),
                "data": ("datasets: fusedssl data check ROOT | fusedssl data sample OUT [--help]", _data),
                "bench": (f"benchmarks: fusedssl bench {'|'.join(BENCHES)} [--help]", _bench)}
    for name, (what, _) in commands.items():
        sub.add_parser(name, help=what, add_help=False)  # each parses its own arguments
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] and argv[0] in commands:
        return commands[argv[0]][1](argv[1:])
    args = parser.parse_args(argv)

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    try:
        cfg = config.load(args.config, overrides)
    except config.ConfigError as e:
        print(f"fusedssl: config error: {e}", file=sys.stderr)
        return 2
    import signal

    early: list[int] = []  # SIGTERM/SIGUSR1 while torch imports: remembered, handled after the first step
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: early.append(signum))
    from . import guard, train  # imported late: config errors are reported without importing torch

    try:
        train.main(cfg, pending_signal=early[0] if early else 0)
    except guard.Preempted as e:
        print(f"fusedssl: {e}", file=sys.stderr)
        return guard.EXIT_PREEMPTED  # 75: a requeue script resubmits with --resume auto
    except (config.ConfigError, ValueError) as e:  # includes data.DatasetError
        print(f"fusedssl: error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, OSError) as e:
        print(f"fusedssl: error: {e}", file=sys.stderr)
        return 1
    return 0


def _data(argv: list[str]) -> int:
    import logging

    p = argparse.ArgumentParser(prog="fusedssl data", description="dataset tools")
    sub = p.add_subparsers(dest="what", required=True)
    ck = sub.add_parser("check", help="decode every file of an ImageFolder tree once and write the index training "
                                      "reads (bad files are listed with the reason, never trained on)")
    ck.add_argument("root", help="dataset root: ROOT/<class>/<image>")
    ck.add_argument("--out", default=None, help="index path (default ROOT/fusedssl_index.json)")
    ck.add_argument("--workers", type=int, default=0, help="decoding processes (default: all cores)")
    ck.add_argument("--min-side", type=int, default=16, help="reject images with a smaller side (default 16)")
    ck.add_argument("--max-pixels", type=int, default=89_478_485, help="reject larger images (default: PIL's limit)")
    sm = sub.add_parser("sample", help="write an ImageFolder tree of JPEGs cut from the real photographs bundled "
                                       "with scikit-learn and matplotlib (no download)")
    sm.add_argument("out", help="folder to create")
    sm.add_argument("--per-class", type=int, default=64, help="images per class (3 classes; default 64)")
    sm.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from .data import folder

    try:
        if args.what == "sample":
            folder.write_photo_tree(args.out, args.per_class, seed=args.seed)
            print(f"fusedssl data sample: wrote {args.out}")
            return 0
        import os

        workers = args.workers or len(os.sched_getaffinity(0))
        idx = folder.check(args.root, out=args.out, workers=workers, min_side=args.min_side,
                           max_pixels=args.max_pixels)
    except folder.DatasetError as e:
        print(f"fusedssl data: error: {e}", file=sys.stderr)
        return 2
    print(f"fusedssl data check: {idx.summary()}")
    print(f"index: {args.out or folder.default_index_path(args.root)}")
    for rel, reason in idx.bad[:20]:
        print(f"  rejected {rel}: {reason}")
    if len(idx.bad) > 20:
        print(f"  ... and {len(idx.bad) - 20} more (all listed in the index under \"bad\")")
    return 0


def _eval(argv: list[str]) -> int:
    import logging

    p = argparse.ArgumentParser(prog="fusedssl eval", description="evaluate frozen backbone features of a checkpoint")
    sub = p.add_subparsers(dest="kind", required=True)
    for kind, what in (("knn", "weighted kNN on frozen features"),
                       ("linear", "linear probe on frozen (cached) features")):
        e = sub.add_parser(kind, help=what)
        e.add_argument("checkpoint", nargs="?", default=None,
                       help="a checkpoint file, or a run folder (its newest valid checkpoint)")
        e.add_argument("--random-init", action="store_true",
                       help="evaluate --config's network at its random initialisation (the baseline)")
        e.add_argument("--config", default=None, help="recipe the checkpoint must match (method and architecture); "
                                                      "required with --random-init")
        e.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                       help="override the recipe (with --random-init)")
        e.add_argument("--train", default=None, help="labelled ImageFolder tree for the bank / probe training "
                                                     "(default: the bundled digits, split as the run split them)")
        e.add_argument("--val", default=None, help="labelled ImageFolder tree to evaluate on (with --train)")
        e.add_argument("--weights", choices=("backbone", "teacher"), default="backbone",
                       help="the online backbone, or the EMA teacher's (teacher methods)")
        e.add_argument("--device", default="auto", help="auto | cpu | cuda")
        e.add_argument("--workers", type=int, default=2, help="decoding processes for ImageFolder trees")
        if kind == "knn":
            e.add_argument("--k", type=int, default=20)
            e.add_argument("--temperature", type=float, default=0.07)
            e.add_argument("--shots", default="", help="also kNN with only N labelled images per class in the "
                                                       "bank, e.g. --shots 1,10 (low-label protocol)")
        else:
            e.add_argument("--epochs", type=int, default=100)
            e.add_argument("--batch-size", type=int, default=256)
            e.add_argument("--optimizer", choices=("sgd", "lars", "adam"), default="sgd")
            e.add_argument("--lr", type=float, default=0.1)
            e.add_argument("--weight-decay", type=float, default=0.0)
            e.add_argument("--copies", type=int, default=4,
                           help="augmented passes of the training set, extracted once (0: no augmentation)")
            e.add_argument("--no-standardize", action="store_true", help="train on raw features")
    pl = sub.add_parser("plot", help="PNG plots of loss, kNN accuracy and linear-probe accuracy from run folders")
    pl.add_argument("runs", nargs="+", help="run folders (each with log.jsonl), or a folder of run folders")
    pl.add_argument("--out", required=True, help="folder for the PNG files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.kind == "plot":
        from fusedssl.bench import plots

        for path in plots.quality_plots(args.runs, args.out):
            print(f"wrote {path}")
        return 0
    import torch

    from . import evaluate
    from .data import folder

    if args.random_init == (args.checkpoint is not None):
        p.error("give a checkpoint, or --random-init with --config RECIPE (not both)")
    if bool(args.train) != bool(args.val):
        p.error("--train and --val go together")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    try:
        net = evaluate.load_network(args.checkpoint, recipe=args.config, overrides=tuple(args.overrides),
                                    device=device)
        if args.train:
            lset = evaluate.FolderSet(args.train, args.val, net.cfg.data, seed=net.cfg.run.seed,
                                      workers=args.workers)
        else:
            lset = evaluate.BundledSet(net.cfg.data, net.cfg.run.seed)
        if args.kind == "knn":
            shots = tuple(int(s) for s in args.shots.split(",") if s.strip())
            entries = evaluate.run("knn", net, lset, weights=args.weights, k=args.k, temperature=args.temperature,
                                   shots=shots, device=device)
        else:
            probe = evaluate.ProbeSettings(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                                           lr=args.lr, weight_decay=args.weight_decay, copies=args.copies,
                                           standardize=not args.no_standardize)
            entries = evaluate.run("linear", net, lset, weights=args.weights, probe=probe, device=device)
    except (ValueError, folder.DatasetError) as e:  # ConfigError and DatasetError are ValueErrors
        print(f"fusedssl eval: error: {e}", file=sys.stderr)
        return 2
    print(f"{net.cfg.method.name} {net.cfg.model.backbone}, {'random init' if net.path is None else net.path} "
          f"(step {net.step}), {lset.name}: {len(lset.train_y)} train / {len(lset.val_y)} val images")
    print(evaluate.table(entries))
    print(f"results: {net.results_path}")
    return 0


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fusedssl export", description="write a checkpoint's backbone as torchvision "
                                "weights (strict-loadable), with its heads, config and metrics")
    p.add_argument("checkpoint", help="a checkpoint file, or a run folder (its newest valid checkpoint)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--weights", choices=("backbone", "teacher"), default="backbone")
    p.add_argument("--head", default=None, help="linear head from `fusedssl eval linear` (default: the one beside "
                                                "the checkpoint, if any) -> classifier.pt")
    p.add_argument("--config", default=None, help="recipe the checkpoint must match")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    args = p.parse_args(argv)
    from . import export

    try:
        out = export.export(args.checkpoint, args.out, weights=args.weights, head=args.head, recipe=args.config,
                            overwrite=args.force)
    except ValueError as e:
        print(f"fusedssl export: error: {e}", file=sys.stderr)
        return 2
    meta = (out / "export.json").read_text()
    print(f"fusedssl export: wrote {out}\n{meta}")
    return 0


def _interpret_triton_without_gpu(who: str) -> None:
    """Without a GPU, run the Triton kernels in Triton's CPU interpreter. Must happen before fusedssl.kernels is
    imported (triton.jit reads TRITON_INTERPRET when the kernels are defined)."""
    import os

    import torch

    if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
        print(f"{who}: no CUDA device; Triton kernels run in Triton's CPU interpreter at small shapes")


def _verify(argv: list[str]) -> int:
    _interpret_triton_without_gpu("fusedssl verify")
    from fusedssl.bench import verify

    return verify.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
