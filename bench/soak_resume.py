"""Soak test of preemption and exact resume (not in CI): many short segments with random kills, one final comparison.

    python -m fusedssl.bench.soak_resume --steps 60 --method byol
    python -m fusedssl.bench.soak_resume --nproc 2 --data folder --loader torch --steps 200 --method barlow

A reference run trains ``--steps`` steps uninterrupted. The soak run trains the same recipe in segments: each segment
starts with ``--resume auto`` (checkpoint every step, keep 2) and is stopped once its checkpoints pass a randomly
drawn step (plus a random fraction of a second, so the stop lands anywhere in a step): with SIGKILL of every process
of the run (a lost node: torchrun, the ranks and their data workers) or, with probability ``--term-p``, SIGTERM to
the launcher (a preemption: the run must checkpoint and stop cleanly); the loop ends when a segment finishes the
run. With ``--nproc 2`` every segment is a 2-rank gloo run under torchrun. The final parameters, BatchNorm buffers,
teacher, optimiser step and DirectPred state must equal the reference bit for bit. One row per soak goes to
bench/results/<device>/soak.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from fusedssl.engine import checkpoint

from . import harness

# per segment: one thread per rank, two data workers, a signal check every other step (kills land mid-step)
SOAK = ["run.threads=1", "data.workers=2", "dist.signal_check_every=2"]


def _command(folder: Path, args, extra: list[str], data: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text("{}\n")
    over = harness.tiny(args.method, *SOAK, *data, f"run.steps={args.steps}",
                        f"optim.accumulate_steps={args.accumulate}", f"run.out_dir={folder}", "run.name=run", *extra)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "--master_port",
               str(harness.free_port()), "-m", "fusedssl.engine.cli"] if args.nproc > 1
              else [sys.executable, "-m", "fusedssl.engine.cli"])
    return [*launch, "train", "--config", str(recipe), *[a for o in over for a in ("--set", o)]]


def _processes_of(folder: Path) -> list[int]:
    """Every live process whose command line names ``folder`` (launcher, ranks; their data workers follow them)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(folder).encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def _saved_step(folder: Path) -> int:
    steps = [int(p.stem[5:]) for p in (folder / "run" / "checkpoints").glob("step_*.pt")]
    return max(steps, default=0)


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
    p.add_argument("--nproc", type=int, default=1, help="ranks per segment (> 1: under torchrun, gloo)")
    p.add_argument("--data", choices=("synthetic", "folder"), default="synthetic")
    p.add_argument("--loader", choices=("torch", "dali"), default="torch", help="folder data: the loader")
    p.add_argument("--accumulate", type=int, default=1, help="optim.accumulate_steps")
    p.add_argument("--min-steps", type=int, default=3, help="fewest steps a segment saves before it is stopped")
    p.add_argument("--max-steps", type=int, default=12, help="most steps a segment saves before it is stopped")
    p.add_argument("--term-p", type=float, default=0.3, help="probability of SIGTERM instead of SIGKILL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fusedssl-soak-"))
    data = ["data.source=synthetic", "data.synthetic_size=128"]
    if args.data == "folder":
        from fusedssl.engine.data import folder as data_folder

        data_folder.write_photo_tree(work / "tree", 24, seed=0)
        data = ["data.source=folder", f"data.root={work / 'tree'}", f"data.loader={args.loader}"]
    t0 = time.time()
    subprocess.run(_command(work / "ref", args, [], data), check=True, capture_output=True)
    folder = work / "soak"
    kills = terms = segments = 0
    while True:
        segments += 1
        start = _saved_step(folder)
        target = start + rng.randint(args.min_steps, args.max_steps)
        proc = subprocess.Popen(_command(folder, args, ["checkpoint.every_steps=1", "checkpoint.keep=2",
                                                        "checkpoint.resume=auto"], data),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        while proc.poll() is None and _saved_step(folder) < target:
            time.sleep(0.05)
        if proc.poll() is not None:  # the run finished (or failed) before the stop
            if proc.returncode != 0:
                print(proc.stderr.read()[-3000:], file=sys.stderr)
                raise SystemExit(f"segment {segments} failed with exit status {proc.returncode}")
            break
        time.sleep(rng.uniform(0.0, 0.6))  # anywhere inside a step
        if rng.random() < args.term_p:
            terms += 1
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=300)[1]
            # a signal in the last step ends the run normally (its final checkpoint, no requeue), yet torchrun
            # still exits with status 1 for having been signalled
            finished = _saved_step(folder) >= args.steps
            if "stopped by SIGTERM" not in err and proc.returncode != 0 and not finished:
                print(err[-3000:], file=sys.stderr)
                raise SystemExit(f"segment {segments}: SIGTERM gave exit status {proc.returncode} without stopping "
                                 "cleanly")
        else:
            kills += 1
            for pid in _processes_of(folder):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        end = time.time() + 30
        while _processes_of(folder) and time.time() < end:  # the previous segment is entirely gone first
            time.sleep(0.1)
        if _saved_step(folder) >= args.steps:
            break
    name = f"step_{args.steps:08d}.pt"
    bad = _equal(checkpoint.load(work / "ref" / "run" / "checkpoints" / name),
                 checkpoint.load(folder / "run" / "checkpoints" / name))
    stamp = harness.env(torch.device("cpu"))
    row = {"date": stamp["date"], "device": stamp["device"], "torch": stamp["torch"], "git": stamp["git"],
           "method": args.method, "steps": args.steps, "ranks": args.nproc,
           "data": args.data + (f"/{args.loader}" if args.data == "folder" else ""), "accumulate": args.accumulate,
           "segments": segments, "sigkill": kills, "sigterm": terms, "identical": not bad,
           "differing": ";".join(bad[:5]), "wall_s": f"{time.time() - t0:.0f}"}
    path = Path(args.out) / stamp["device"].replace(" ", "_") / "soak.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    _append(path, row)
    verdict = "bit-identical to the uninterrupted run" if not bad else "DIFFERS: " + ", ".join(bad[:5])
    print(f"{segments} segments ({kills} SIGKILL, {terms} SIGTERM), {args.steps} steps of {args.method} on "
          f"{args.nproc} rank(s): {verdict}; row appended to {path}")
    return 0 if not bad else 1


def _append(path: Path, row: dict) -> None:
    """Append a row; an older file with fewer columns is rewritten with the new header (missing cells empty)."""
    old = list(csv.DictReader(open(path))) if path.is_file() else []
    fields = list(row) + [k for r in old for k in r if k not in row]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(fields)))
        w.writeheader()
        for r in [*old, row]:
            w.writerow(r)


if __name__ == "__main__":
    sys.exit(main())
