"""Soak test of preemption and exact resume (not in CI): many short segments with random kills, one final comparison.

    python -m fusedssl.bench.soak_resume --steps 60 --method byol

A reference run trains ``--steps`` steps uninterrupted. The soak run trains the same recipe in segments: each segment
starts with ``--resume auto`` (checkpoint every step, keep 2), runs for a random time, and is stopped with SIGKILL or,
with probability ``--term-p``, SIGTERM (which must checkpoint and exit 75); the loop ends when a segment finishes the
run. The final parameters, teacher, optimiser step and DirectPred state must equal the reference bit for bit. One row
per soak goes to bench/results/<device>/soak.csv.
"""

from __future__ import annotations

import argparse
import csv
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from fusedssl.engine import checkpoint, guard

from . import harness

TINY = ["data.source=synthetic", "data.synthetic_size=128", "data.batch_size=16", "data.image_size=16",
        "model.projector=32-16", "evaluate.knn=false", "run.log_every=1", "run.threads=1", "run.progress=false"]
PREDICTOR = {"byol": ["model.predictor=32-16"], "directpred": ["model.predictor=16", "model.predictor_bias=false"],
             "matrix_ssl": ["model.predictor=32-16"]}


def _command(folder: Path, method: str, steps: int, extra: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text("{}\n")
    over = [*TINY, *PREDICTOR.get(method, []), f"method.name={method}", f"run.steps={steps}",
            f"run.out_dir={folder}", "run.name=run", *extra]
    return [sys.executable, "-m", "fusedssl.engine.cli", "train", "--config", str(recipe),
            *[a for o in over for a in ("--set", o)]]


def _equal(a: dict, b: dict) -> list[str]:
    bad = [f"model.{k}" for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    if a.get("teacher"):
        bad += [f"teacher.{k}" for k, v in a["teacher"].items() if not torch.equal(v, b["teacher"][k])]
    for k, v in (a.get("method") or {}).items():
        if isinstance(v, torch.Tensor) and not torch.equal(v, b["method"][k]):
            bad.append(f"method.{k}")
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusedssl.bench.soak_resume", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--method", default="byol")
    p.add_argument("--min-s", type=float, default=4.0, help="shortest segment (seconds; includes start-up)")
    p.add_argument("--max-s", type=float, default=9.0, help="longest segment")
    p.add_argument("--term-p", type=float, default=0.3, help="probability of SIGTERM instead of SIGKILL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fusedssl-soak-"))
    t0 = time.time()
    subprocess.run(_command(work / "ref", args.method, args.steps, []), check=True, capture_output=True)
    folder = work / "soak"
    kills = terms = segments = 0
    while True:
        segments += 1
        proc = subprocess.Popen(_command(folder, args.method, args.steps, ["checkpoint.every_steps=1",
                                                                           "checkpoint.keep=2",
                                                                           "checkpoint.resume=auto"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(args.min_s, args.max_s))
        except subprocess.TimeoutExpired:
            term = rng.random() < args.term_p
            proc.send_signal(signal.SIGTERM if term else signal.SIGKILL)
            proc.wait()
            if term:
                terms += 1
                if proc.returncode not in (guard.EXIT_PREEMPTED, 0):
                    print(proc.stderr.read()[-2000:], file=sys.stderr)
                    raise SystemExit(f"SIGTERM gave exit status {proc.returncode}, expected "
                                     f"{guard.EXIT_PREEMPTED}") from None
            else:
                kills += 1
            continue
        if proc.returncode != 0:
            print(proc.stderr.read()[-2000:], file=sys.stderr)
            raise SystemExit(f"segment {segments} failed with exit status {proc.returncode}")
        break
    name = f"step_{args.steps:08d}.pt"
    bad = _equal(checkpoint.load(work / "ref" / "run" / "checkpoints" / name),
                 checkpoint.load(folder / "run" / "checkpoints" / name))
    stamp = harness.env(torch.device("cpu"))
    row = {"date": stamp["date"], "device": stamp["device"], "torch": stamp["torch"], "git": stamp["git"],
           "method": args.method, "steps": args.steps, "segments": segments, "sigkill": kills, "sigterm": terms,
           "identical": not bad, "differing": ";".join(bad[:5]), "wall_s": f"{time.time() - t0:.0f}"}
    path = Path(args.out) / stamp["device"].replace(" ", "_") / "soak.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    print(f"{segments} segments ({kills} SIGKILL, {terms} SIGTERM), {args.steps} steps of {args.method}: "
          f"{'bit-identical to the uninterrupted run' if not bad else 'DIFFERS: ' + ', '.join(bad[:5])}; "
          f"row appended to {path}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
