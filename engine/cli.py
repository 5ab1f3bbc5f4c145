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
    sub.add_parser("bench", help="benchmarks: fusedssl bench kernels|matrix_log|step [--help]", add_help=False)
    if argv[:1] == ["verify"]:
        return _verify(argv[1:])
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
    except (config.ConfigError, ValueError) as e:
        print(f"fusedssl: error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, OSError) as e:
        print(f"fusedssl: error: {e}", file=sys.stderr)
        return 1
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
