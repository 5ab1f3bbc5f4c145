"""``fusedssl bench data``: images/s of the DALI pipeline and the PIL fallback, same files, same recipe, one run.

Both loaders read the same checked tree with the same view recipes (the ``data`` defaults: two 224-px views, blur
1.0/0.1, solarise 0/0.2, jitter 0.8, grayscale 0.2) and the same per-step parameters, and deliver normalised
channels-last float views on the training device, so the comparison is like for like. With no ``--root`` the tree is
cut from the real photographs bundled with scikit-learn and matplotlib (long sides 300-500 px, JPEG quality 90,
about the size of an ImageNet JPEG).

Timing: ``--warmup`` steps first (pipeline start, worker start, page cache), then ``--steps`` steps timed as one
stretch of wall-clock time (the loaders prefetch, so single-step times mean little); ``--repeats`` such stretches,
median reported with p20/p80. The CPU cores available to the process and each loader's threads/workers are recorded.
On a GPU, DALI decodes with ``device="mixed"`` (and once with the CPU decoder for comparison). DALI on the CPU runs
twice: ``dali-cpu`` with the photometric steps and the normalisation in the fused C++ kernel after DALI's decode,
crop and resize (the default, ``data.photometric=auto``), and ``dali-cpu-ops`` with every step in DALI operators.

Rows go to bench/results/<device>/data.csv (long format, harness.FIELDS: op=data, provider=loader, mode=<views>-view,
n=per-step images, d=view side, dtype=uint8 source).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from fusedssl import kernels
from fusedssl.bench import harness
from fusedssl.engine import config
from fusedssl.engine import data as data_stage
from fusedssl.engine.data import dali, files, folder
from fusedssl.engine.data.params import Plan


def measure(stage: files.FileViews, steps: int, warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Images/s of ``repeats`` stretches of ``steps`` steps after ``warmup`` steps."""
    step = 0
    for _ in range(warmup):
        stage.views(step)
        step += 1
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            v = stage.views(step)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        del v
        rates.append(steps * stage.plan.per_rank / (time.perf_counter() - t0))
    stage.close()
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench data", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help="ImageFolder tree (checked first if it has no index); default: a "
                                                "generated tree of real photographs")
    p.add_argument("--images", type=int, default=300, help="generated tree: number of images (default 300)")
    p.add_argument("--size", type=int, default=224, help="view side in pixels (default 224)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per stretch (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed stretches (default 3)")
    p.add_argument("--workers", type=int, default=0, help="DALI threads and DataLoader workers (default: all cores)")
    p.add_argument("--local-crops", type=int, default=0, help="multi-crop: extra 96-px local views (default 0)")
    p.add_argument("--loaders", default="dali,torch", help="comma list of dali, torch (default both)")
    p.add_argument("--out", default="bench/results", help="results folder (a <device>/data.csv inside)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or cores
    loaders = args.loaders.split(",")
    unknown = [x for x in loaders if x not in ("dali", "torch")]
    if unknown:
        p.error(f"--loaders: unknown {', '.join(unknown)} (choose from dali, torch)")
    if "dali" in loaders and not dali.available():
        print("fusedssl bench data: NVIDIA DALI is not installed (pip install nvidia-dali-cuda130); fallback only")
        loaders = [x for x in loaders if x != "dali"]

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = folder.write_photo_tree(Path(tmp) / "photos", max(1, args.images // 3), sides=(300, 500))
        index_path = folder.default_index_path(root) if args.root else Path(tmp) / "index.json"
        idx = folder.load(index_path, root) if index_path.exists() else \
            folder.check(root, out=index_path, workers=workers)
        cfg = config.load(None, [f"data.image_size={args.size}", f"data.workers={workers}", "data.roi_decode=true",
                                 "data.read_workers=0"]).data
        recipes = data_stage.recipes(cfg, local_crops=args.local_crops)
        plan = Plan.of_index(idx, recipes, args.batch, 0, 0, 1, str(index_path))
        variants = []  # (name, loader, DALI decode device, where the photometric steps run)
        if "dali" in loaders:
            if device.type == "cuda":
                variants.append(("dali-mixed", "dali", "mixed", "dali"))
            why = kernels.why_not("photometric_augment", "cuda", torch.device("cpu"))
            if why is None:
                variants.append(("dali-cpu", "dali", "cpu", "kernel"))
            else:
                print(f"fusedssl bench data: no dali-cpu row with the fused kernel: {why}")
            variants.append(("dali-cpu-ops", "dali", "cpu", "dali"))
        if "torch" in loaders:
            variants.append(("pil-dataloader", "torch", "cpu", "dali"))
        stamp = harness.env(device)
        rows, results = [], {}
        for name, loader, dali_device, photometric in variants:
            stage = files.FileViews(plan, cfg, device, True, loader=loader, dali_device=dali_device,
                                    photometric=photometric)
            rates = measure(stage, args.steps, args.warmup, args.repeats, device)
            q = torch.tensor(rates).quantile(torch.tensor([0.2, 0.5, 0.8])).tolist()
            results[name] = q
            common = dict(op="data", provider=name, mode=f"{len(recipes)}-view", n=args.batch, d=args.size,
                          dtype="uint8", **stamp)
            for metric, value, unit in (("images_per_s", q[1], "img/s"), ("images_per_s_p20", q[0], "img/s"),
                                        ("images_per_s_p80", q[2], "img/s"),
                                        ("views_per_s", q[1] * len(recipes), "views/s"),
                                        ("cores", cores, "cores"), ("workers", workers, "threads")):
                rows.append({**common, "metric": metric, "value": f"{value:.6g}", "unit": unit})
    print(f"data loaders on {stamp['device']} ({cores} cores available, {workers} threads/workers each), torch "
          f"{stamp['torch']}: {len(idx)} images, {len(recipes)} views of {args.size} px, batch {args.batch}, "
          f"{args.repeats} x {args.steps} steps")
    print(f"{'loader':16s} {'images/s':>9s} {'p20':>8s} {'p80':>8s} {'views/s':>9s}")
    for name, q in results.items():
        print(f"{name:16s} {q[1]:9.1f} {q[0]:8.1f} {q[2]:8.1f} {q[1] * len(recipes):9.1f}")
    if "pil-dataloader" in results:
        for name, q in results.items():
            if name != "pil-dataloader":
                print(f"{name} / pil-dataloader: {q[1] / results['pil-dataloader'][1]:.2f}x")
    harness.finish(args.out, stamp, "data", rows)
    return 0
