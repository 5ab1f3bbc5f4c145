"""Plots from run folders: training curves (loss, kNN accuracy) and linear-probe accuracy per method.

``fusedssl eval plot RUNS... --out DIR`` reads each run's ``log.jsonl`` (loss records every ``log.every`` steps; the kNN
monitor's ``eval/knn`` records) and the evaluation results next to its newest checkpoint (``step_*.eval.json``, and
``random_init.eval.json``), and writes two PNG files. A folder holding run folders stands for all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _is_run(p: Path) -> bool:
    return (p / "log.jsonl").exists() or (p / "random_init.eval.json").exists()


def _runs(paths: list[str]) -> list[Path]:
    runs = []
    for p in map(Path, paths):
        if _is_run(p):
            runs.append(p)
        elif p.is_dir():
            runs += sorted(q for q in p.iterdir() if _is_run(q))
        else:
            raise ValueError(f"{str(p)!r} is neither a run folder (with log.jsonl) nor a folder of run folders")
    if not runs:
        raise ValueError(f"no run folders (with log.jsonl) in {', '.join(paths)}")
    return runs


def _records(run: Path) -> list[dict]:
    out = []
    if not (run / "log.jsonl").exists():
        return out
    for line in (run / "log.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
    return out


def _linear(run: Path) -> float | None:
    files = sorted((run / "checkpoints").glob("step_*.eval.json")) + [run / "random_init.eval.json"]
    for f in files:
        if f.exists():
            for name, r in json.loads(f.read_text()).get("results", {}).items():
                if name.startswith("linear/"):
                    return 100 * r["top1"]
    return None


def save_figure(fig, path: Path, caption: str, fontsize: int = 7) -> Path:
    """Caption (device and versions) under the axes, tight layout, PNG at 110 dpi, figure closed."""
    import matplotlib.pyplot as plt

    fig.text(0.5, 0.005, caption, ha="center", fontsize=fontsize)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality_plots(paths: list[str], out: str | Path, prefix: str = "quality") -> list[Path]:
    """Write ``<prefix>_training.png`` and ``<prefix>_linear.png`` into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import harness

    env = harness.env(torch.device("cpu"))
    caption = f"fusedssl {env['fusedssl']} (git {env['git']}), torch {env['torch']}, plotted on {env['device']}"
    runs = _runs(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab20")
    for i, run in enumerate(runs):
        recs = _records(run)
        c = colours(i % 20)
        loss = [(r["epoch"], r["loss/total"]) for r in recs if "loss/total" in r and "epoch" in r]
        if loss:  # losses differ in scale and sign across methods: each is min-max scaled to [0, 1]
            lo, hi = min(v for _, v in loss), max(v for _, v in loss)
            ax_loss.plot([e for e, _ in loss], [(v - lo) / ((hi - lo) or 1.0) for _, v in loss], color=c,
                         label=run.name)
        per_epoch = next((r["step"] / r["epoch"] for r in recs if r.get("epoch")), None)
        knn = [(r["step"], r["eval/knn"]) for r in recs if "eval/knn" in r]
        if knn and per_epoch:
            ax_knn.plot([s / per_epoch for s, _ in knn], [100 * v for _, v in knn], marker="o", color=c,
                        label=run.name)
        few = [(r["step"], r["eval/knn10shot"]) for r in recs if "eval/knn10shot" in r]
        if few and per_epoch:  # the same run's 10-labels-per-class kNN, dashed
            ax_knn.plot([s / per_epoch for s, _ in few], [100 * v for _, v in few], ls="--", marker=".", color=c)
    ax_loss.set(xlabel="epoch", ylabel="(loss - min) / (max - min)", title="training loss, scaled per method")
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1 (%)",
               title="held-out kNN (solid: full bank; dashed: 10 labels/class)")
    for ax in (ax_loss, ax_knn):
        ax.grid(alpha=0.3)
    ax_knn.legend(fontsize=7, ncol=2)
    training = save_figure(fig, out / f"{prefix}_training.png", caption)

    acc = [(run.name, _linear(run)) for run in runs]
    acc = [(n, a) for n, a in acc if a is not None]
    linear = out / f"{prefix}_linear.png"
    fig, ax = plt.subplots(figsize=(10, 4))
    if acc:
        bars = ax.bar([n for n, _ in acc], [a for _, a in acc], color="tab:blue")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        lo = min(a for _, a in acc)
        ax.set_ylim(max(0.0, lo - 10), 100)
    ax.set(ylabel="linear-probe top-1 (%)", title="linear probe on frozen backbone features")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, linear, caption)
    return [training, linear]
