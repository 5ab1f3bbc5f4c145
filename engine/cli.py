"""Command line: ``fusedssl train --config RECIPE [--set section.key=value ...]``."""

from __future__ import annotations

import argparse
import sys

from . import config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusedssl", description="Self-supervised pretraining with fused objectives")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="pretrain a network from a recipe in configs/")
    tr.add_argument("--config", required=True, help="YAML recipe (overrides of the defaults in engine/config.py)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override one config value, e.g. --set optim.base_lr=0.3 (repeatable)")
    tr.add_argument("--resume", default=None, help="'auto' (newest valid checkpoint of the run) or a path")
    sub.add_parser("verify", help="check every kernel against the float64 reference (fusedssl verify --help)",
                   add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    sub.add_parser("bench", help="benchmarks: fusedssl bench kernels|matrix_log|step|data [--help]", add_help=False)
    sub.add_parser("data", help="datasets: fusedssl data check ROOT | fusedssl data sample OUT [--help]",
                   add_help=False)
    if argv[:1] == ["verify"]:
        return _verify(argv[1:])
    if argv[:1] == ["data"]:
        return _data(argv[1:])
    if argv[:2] == ["bench", "data"]:
        from fusedssl.bench import bench_data

        return bench_data.main(argv[2:])
    if argv[:2] == ["bench", "kernels"]:
        from fusedssl.bench import bench_covariance

        return bench_covariance.main(argv[2:])
    if argv[:2] == ["bench", "step"]:
        from fusedssl.bench import bench_step

        return bench_step.main(argv[2:])
    if argv[:2] == ["bench", "matrix_log"]:
        from fusedssl.bench import bench_matrix_log

        return bench_matrix_log.main(argv[2:])
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


def _verify(argv: list[str]) -> int:
    import os

    import torch

    if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
        # Must be set before fusedssl.kernels is imported (triton.jit reads it when the kernels are defined).
        os.environ["TRITON_INTERPRET"] = "1"
        print("fusedssl verify: no CUDA device; Triton kernels run in Triton's CPU interpreter at small shapes")
    from fusedssl.kernels import verify

    return verify.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
