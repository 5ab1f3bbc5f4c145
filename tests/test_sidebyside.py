"""BYOL and SimSiam against lightly's components: the pieces agree exactly, and the side-by-side benchmark runs.

The benchmark (bench/bench_sidebyside.py) trains both implementations in the same regime; these tests pin what it
relies on: lightly's heads have the recipe's shapes, the objectives are lightly's up to BYOL's documented affine
factor, the EMA update and its cosine schedule are lightly's, and both runs start from the same weights.
"""

from __future__ import annotations

import csv

import pytest
import torch
from fusedssl import kernels
from fusedssl.bench import bench_sidebyside
from fusedssl.engine import config, optim
from fusedssl.engine import model as model_stage

lightly = pytest.importorskip("lightly")
from lightly.loss import NegativeCosineSimilarity  # noqa: E402
from lightly.models.utils import update_momentum  # noqa: E402
from lightly.utils.scheduler import cosine_schedule  # noqa: E402


def _recipe(method: str) -> config.Config:
    return config.load(bench_sidebyside.CONFIGS / f"{method}_demo.yaml", [])


@pytest.mark.parametrize("method", bench_sidebyside.METHODS)
def test_lightly_heads_have_the_recipe_shapes(method):
    cfg = _recipe(method)
    ours = model_stage.build(cfg.model, predictor_required=True)
    theirs = bench_sidebyside.LightlyNet(method, cfg.model)
    for part in ("backbone", "projector", "predictor"):
        a = [(k.split(".")[-1], tuple(v.shape)) for k, v in getattr(ours, part).state_dict().items()]
        b = [(k.split(".")[-1], tuple(v.shape)) for k, v in getattr(theirs, part).state_dict().items()]
        assert a == b, part


def test_lightly_heads_reject_other_shapes():
    cfg = config.load(bench_sidebyside.CONFIGS / "byol_demo.yaml", ["model.projector=512-512-128"])
    with pytest.raises(ValueError, match="model.projector"):
        bench_sidebyside.LightlyNet("byol", cfg.model)


def test_objectives_are_lightlys():
    """SimSiam's loss is lightly's symmetrised negative cosine; BYOL's (2 - 2 cos per view, summed) is 4 + 4x it,
    gradients included."""
    g = torch.Generator().manual_seed(7)
    p1, p2, z1, z2 = (torch.randn(12, 9, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4))
    crit = NegativeCosineSimilarity()

    def theirs():
        return 0.5 * (crit(p1, z2.detach()) + crit(p2, z1.detach()))

    for ours, scale, shift in ((kernels.byol_loss, 4.0, 4.0), (kernels.simsiam_loss, 1.0, 0.0)):
        a = ours(p1, p2, z1, z2, backend="torch")
        ga = torch.autograd.grad(a, (p1, p2, z1, z2), allow_unused=True)
        b = theirs()
        gb = torch.autograd.grad(b, (p1, p2, z1, z2), allow_unused=True)
        torch.testing.assert_close(a, scale * b + shift)
        for x, y in zip(ga[:2], gb[:2], strict=True):
            torch.testing.assert_close(x, scale * y)
        assert ga[2:] == (None, None) and gb[2:] == (None, None)  # the targets get no gradient in either


def test_ema_and_schedule_are_lightlys():
    cfg = _recipe("byol")
    online = model_stage.build(cfg.model, predictor_required=True)
    teacher = model_stage.EMATeacher(online)
    ref = model_stage.EMATeacher(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    teacher.update(online, 0.97)
    update_momentum(online.backbone, ref.backbone, 0.97)
    update_momentum(online.projector, ref.projector, 0.97)
    for a, b in zip(teacher.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    resolved = config.Resolved(per_rank_batch=128, steps_per_epoch=31, total_steps=155, warmup_steps=15,
                               peak_lr=0.15)
    sched = optim.schedules(cfg.optim, resolved, ema_base=0.99, ema_schedule="cosine")
    # BYOL's 1 - (1 - base)(cos(pi k / K) + 1) / 2; lightly divides by K - 1 (reaching 1 at the last step), so its
    # schedule with K + 1 steps is ours exactly, and the benchmark's lightly loop (K steps) differs by < 1e-4
    exact = [cosine_schedule(s, 156, 0.99, 1.0) for s in range(155)]
    torch.testing.assert_close(torch.tensor(sched.ema), torch.tensor(exact, dtype=torch.float64))
    theirs = torch.tensor([cosine_schedule(s, 155, 0.99, 1.0) for s in range(155)], dtype=torch.float64)
    assert 0 < (theirs - torch.tensor(sched.ema)).abs().max() < 1e-4


def test_benchmark_runs_both_from_the_same_weights(tmp_path):
    assert bench_sidebyside.main(["--methods", "byol", "--epochs", "1", "--every", "1", "--results", str(tmp_path),
                                  "--set", "run.steps=1", "--set", "data.batch_size=16"]) == 0
    with open(tmp_path / "sidebyside.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    got = {(r["provider"], r["mode"], r["n"], r["metric"]): float(r["value"]) for r in rows}
    assert {p for p, *_ in got} == {"fusedssl", "lightly"}
    for metric in ("knn", "knn10shot", "effective_rank"):  # step 0: the same initial backbone
        assert got[("fusedssl", "byol/online", "0", metric)] == got[("lightly", "byol/online", "0", metric)]
    assert ("lightly", "byol/teacher", "1", "knn") in got and ("fusedssl", "byol/online", "1", "knn") in got
    assert "| byol | online | 1 |" in (tmp_path / "sidebyside.md").read_text()
