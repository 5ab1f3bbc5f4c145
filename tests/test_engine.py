"""Engine: smoke run of every method, exact resume, data layout, checkpoint integrity, recipe/model combinations."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from fusedssl.engine import checkpoint, cli, config, data, dist, methods, train
from fusedssl.engine.data import params

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, method, *extra):
    return tiny_cfg(tmp_path, method, "run.steps=2", *extra)


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_every_method_trains(tmp_path, method):
    metrics = train.main(_cfg(tmp_path, method))
    assert torch.isfinite(torch.tensor(metrics["last_loss"]))
    lines = (tmp_path / method / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "perf/images_per_s" in json.loads(lines[-1])
    assert (tmp_path / method / "checkpoints" / "step_00000002.pt").is_file()


def test_directpred_sets_the_predictor(tmp_path):
    cfg = _cfg(tmp_path, "directpred")
    train.main(cfg)
    state = checkpoint.load(tmp_path / "directpred" / "checkpoints" / "step_00000002.pt")
    from fusedssl import kernels
    expected = kernels.predictor_weight(state["method"]["corr"], eps=0.01)
    assert torch.allclose(state["model"]["predictor.0.weight"], expected.float(), atol=1e-6)
    u = state["method"]["basis"]  # checkpointed: the cuda backend's warm start after a resume
    corr = state["method"]["corr"]
    assert u.shape == corr.shape and torch.allclose(u.T @ corr @ u, torch.diag(torch.diagonal(u.T @ corr @ u)),
                                                    atol=1e-5)


@pytest.mark.parametrize("method", ["barlow", "byol", "directpred"])
def test_resume_is_exact(tmp_path, method):
    """4 steps straight == 2 steps, save, resume, 2 more steps (same data, augmentations, schedules, teacher, F^)."""
    full = _cfg(tmp_path / "a", method, "run.steps=4")
    train.main(full)
    part = _cfg(tmp_path / "b", method, "run.steps=4", "checkpoint.every_steps=2")
    train.main(part)
    ckpts = sorted((tmp_path / "b" / method / "checkpoints").glob("step_*.pt"))
    assert [c.name for c in ckpts] == ["step_00000002.pt", "step_00000004.pt"]
    ckpts[-1].unlink()  # pretend the run died after step 2
    ckpts[-1].with_suffix(".sha256").unlink()
    train.main(_cfg(tmp_path / "b", method, "run.steps=4", "checkpoint.resume=auto"))
    a = checkpoint.load(tmp_path / "a" / method / "checkpoints" / "step_00000004.pt")
    b = checkpoint.load(tmp_path / "b" / method / "checkpoints" / "step_00000004.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    if a["teacher"] is not None:
        for k in a["teacher"]:
            assert torch.equal(a["teacher"][k], b["teacher"][k]), k


def test_views_layout_and_determinism():
    cfg = config.load(None, ["data.batch_size=32", "data.image_size=24"])
    d = data.build(cfg.data, seed=0, rank=0, world=1, device=torch.device("cpu"), channels_last=True)
    v1, v2 = d.views(5)
    assert v1.shape == (32, 3, 24, 24) and v1.dtype == torch.float32
    assert v1.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(v1, v2)
    w1, _ = d.views(5)
    assert torch.equal(v1, w1)                       # a pure function of the step: exact resume
    assert not torch.equal(d.views(6)[0], v1)


def test_sharding_is_disjoint_and_complete():
    cfg = config.load(None, ["data.batch_size=32"])
    shards = [data.build(cfg.data, seed=3, rank=r, world=2, device=torch.device("cpu"), channels_last=False)
              for r in range(2)]
    whole = data.build(cfg.data, seed=3, rank=0, world=1, device=torch.device("cpu"), channels_last=False)
    for step in (0, 7, shards[0].steps_per_epoch + 1):
        a, b = shards[0].indices(step), shards[1].indices(step)
        assert set(a.tolist()).isdisjoint(b.tolist())
        assert torch.equal(torch.cat([a, b]), whole.indices(step))


def test_augmentation_probabilities_are_honoured():
    """Solarisation p = 0.2 on view 2: the fraction of solarised samples is close to 0.2 (binomial, 4 sigma)."""
    cfg = config.load(None, ["data.source=synthetic", "data.synthetic_size=2000", "data.batch_size=2000",
                             "data.jitter_p=0", "data.gray_p=0", "data.blur_p=[0, 0]", "data.solarize_p=[0, 0.2]",
                             "data.crop_scale=[1, 1]", "data.flip_p=0"])
    d = data.build(cfg.data, seed=0, rank=0, world=1, device=torch.device("cpu"), channels_last=False)
    recipe = d.recipes[1]
    x = torch.full((2000, 3, 8, 8), 230, dtype=torch.uint8)  # bright pixels: solarised ones become dark
    p = params.draw(recipe, np.full((2000, 2), 8), params.rng(0, "view", 0, 1))
    out = data.augment(x, recipe, p, channels_last=False)
    frac = float((out.mean(dim=(1, 2, 3)) < 0).double().mean())
    assert abs(frac - 0.2) < 4 * (0.2 * 0.8 / 2000) ** 0.5


def test_digits_are_real_and_split_per_class():
    tr, te = data.load_digits(0.2, seed=0)
    assert len(tr.labels) == 4000 and len(te.labels) == 1000
    assert tr.images.shape[1:] == (1, 28, 28) and tr.images.dtype == torch.uint8
    assert torch.bincount(te.labels).tolist() == [100] * 10


def test_checkpoint_integrity(tmp_path):
    p = checkpoint.save(tmp_path, 1, {"x": torch.ones(3)}, keep=2)
    checkpoint.save(tmp_path, 2, {"x": torch.ones(3) * 2}, keep=2)
    checkpoint.save(tmp_path, 3, {"x": torch.ones(3) * 3}, keep=2)
    assert not p.exists()                                  # pruned to the newest 2
    newest = tmp_path / "step_00000003.pt"
    newest.write_bytes(newest.read_bytes()[:20])           # truncate the newest
    with pytest.raises(ValueError, match=r"checksum"):
        checkpoint.load(newest)
    path, state = checkpoint.latest(tmp_path)
    assert path.name == "step_00000002.pt" and float(state["x"][0]) == 2.0
    with pytest.raises(ValueError, match=r"does not exist"):
        checkpoint.load(tmp_path / "nope.pt")


def test_a_save_removes_what_a_killed_save_or_prune_left(tmp_path):
    """A SIGKILL mid-save leaves a partial step_*.pt.tmp (gigabytes for a large model) and one between the two unlinks
    of a prune leaves a checksum without its checkpoint; the next save clears both and keeps the kept pair whole.
    (The partial files are of a step no later save writes again, as after a rollback or a changed save interval.)"""
    checkpoint.save(tmp_path, 1, {"x": torch.ones(3)}, keep=2)
    (tmp_path / "step_00000005.pt.tmp").write_bytes(b"partial")     # killed inside torch.save
    (tmp_path / "step_00000005.sha256.tmp").write_text("0" * 64)    # killed before the checksum's rename
    (tmp_path / "step_00000000.sha256").write_text("0" * 64 + "\n")  # killed between the unlinks of a prune
    checkpoint.save(tmp_path, 2, {"x": torch.ones(3)}, keep=2)
    checkpoint.save(tmp_path, 3, {"x": torch.ones(3)}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002.pt", "step_00000002.sha256",
                                                          "step_00000003.pt", "step_00000003.sha256"]


def test_method_model_combinations():
    with pytest.raises(config.ConfigError, match=r"needs a predictor: set model.predictor"):
        methods.check_model(methods.build(config.MethodConfig(name="byol"), backends="torch"), config.ModelConfig())
    with pytest.raises(config.ConfigError, match=r"has no predictor"):
        methods.check_model(methods.build(config.MethodConfig(name="barlow"), backends="torch"),
                            config.ModelConfig(predictor="64"))
    with pytest.raises(config.ConfigError, match=r"predictor='1024'"):
        methods.check_model(methods.build(config.MethodConfig(name="directpred"), backends="torch"),
                            config.ModelConfig(predictor="512-1024"))


def test_cli_reports_config_errors(capsys):
    assert cli.main(["train", "--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "optim.nme=sgd"]) == 2
    assert "unknown config key optim.nme; did you mean optim.name" in capsys.readouterr().err


def test_resume_refuses_another_method(tmp_path):
    train.main(_cfg(tmp_path, "barlow"))
    with pytest.raises(config.ConfigError, match=r"method.name='barlow'"):
        train.main(_cfg(tmp_path, "vicreg", f"checkpoint.resume={tmp_path}/barlow/checkpoints/step_00000002.pt"))


TRITON_OPS = {"barlow": "barlow_twins_loss", "barlow_hsic": "barlow_twins_loss", "vicreg": "vicreg_covariance",
              "frossl": "frossl_loss", "matrix_ssl": "matrix_ssl_loss", "kernel_ssl": "matrix_ssl_loss"}


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_training_with_triton_kernels(tmp_path, method, capsys):
    """kernels.backend=triton runs the Triton kernels where an op has one (here in the CPU interpreter) and the
    reference elsewhere, and the run header says which backend each op uses."""
    metrics = train.main(_cfg(tmp_path, method, "kernels.backend=triton"))
    assert torch.isfinite(torch.tensor(metrics["last_loss"]))
    header = next(line for line in capsys.readouterr().err.splitlines() if "kernel backends" in line)
    header = header.split(":", 3)[-1]  # the per-op list after "kernel backends (kernels.backend=triton):"
    if method in TRITON_OPS:
        assert f"{TRITON_OPS[method]}=triton" in header, header
    else:
        assert "=triton" not in header, header  # no Triton kernel for these objectives: the reference runs
    if method == "vicreg":
        assert "vicreg_invariance=torch" in header


def test_bias_lr_ratio_and_accumulation(tmp_path):
    """Biases/norms get lr x bias_lr_ratio; accumulate_steps=2 trains on two micro-batches per step."""
    from fusedssl.engine import model as model_stage
    from fusedssl.engine import optim

    cfg = _cfg(tmp_path, "barlow", "optim.bias_lr_ratio=0.024", "optim.accumulate_steps=2")
    net = model_stage.build(cfg.model, predictor_required=False)
    opt, _ = optim.build(cfg.optim, net, config.resolve(cfg, world=1, steps_per_epoch=4), ema_base=0.99,
                         ema_schedule="cosine")
    optim.set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5 * 0.024]
    metrics = train.main(cfg)
    assert torch.isfinite(torch.tensor(metrics["last_loss"]))


def test_predictor_lr_ratio_and_constant_schedule(tmp_path):
    """The predictor's groups get lr x predictor_lr_ratio; with predictor_lr_schedule=constant they hold the peak lr
    after warm-up while every other group follows the cosine; training steps use both."""
    from fusedssl.engine import model as model_stage
    from fusedssl.engine import optim

    cfg = _cfg(tmp_path, "simsiam", "optim.predictor_lr_ratio=10", "optim.predictor_lr_schedule=constant",
               "optim.bias_lr_ratio=0.5", "run.steps=4", "optim.warmup_epochs=0")
    net = model_stage.build(cfg.model, predictor_required=True)
    opt, _ = optim.build(cfg.optim, net, config.resolve(cfg, world=1, steps_per_epoch=4), ema_base=0.99,
                         ema_schedule="cosine")
    pred = {id(p) for p in net.predictor.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    optim.set_lr(opt, 0.1, 0.4)
    for g in opt.param_groups:
        is_pred = id(g["params"][0]) in pred
        assert all((id(p) in pred) == is_pred for p in g["params"])
        norm = g["params"][0].ndim <= 1
        want = (0.4 * 10 if is_pred else 0.1) * (0.5 if norm else 1.0)
        assert g["lr"] == pytest.approx(want) and g["weight_decay"] == (0.0 if norm else cfg.optim.weight_decay)
    st = train.build_stages(cfg, dist.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    lrs = []
    for step in range(st.total):
        train.train_step(st, step, st.data.views(step))
        lrs.append({id(g["params"][0]) in {id(p) for p in st.model.predictor.parameters()}: g["lr"]
                    for g in st.opt.param_groups if g["params"][0].ndim > 1})
    peak = st.resolved.peak_lr
    assert [d[True] for d in lrs] == pytest.approx([10 * peak] * 4)
    assert [d[False] for d in lrs] == pytest.approx(list(st.sched.lr)) and lrs[-1][False] < peak


def test_accumulation_must_divide_the_batch():
    with pytest.raises(config.ConfigError, match="optim.accumulate_steps"):
        config.load(None, ["data.batch_size=16", "optim.accumulate_steps=3"])


DEMOS = sorted(ROOT.glob("configs/*_demo.yaml"))


@pytest.mark.parametrize("recipe", DEMOS, ids=lambda p: p.stem)
def test_every_demo_recipe_trains(tmp_path, recipe):
    """Each method's own recipe (its projector, predictor, optimiser, EMA, augmentation) runs end to end, cut to
    two steps of a small batch."""
    cfg = config.load(recipe, [f"run.out_dir={tmp_path}", "run.steps=2", "data.batch_size=16", "evaluate.knn=false",
                               "log.every=1", "log.progress=false"])
    metrics = train.main(cfg)
    assert torch.isfinite(torch.tensor(metrics["last_loss"]))
    assert len(DEMOS) == 11


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["barlow", "vicreg", "frossl", "simclr", "byol", "simsiam", "matrix_ssl"])
def test_training_step_never_syncs_the_host_on_a_gpu(tmp_path, method):
    """The data stage (in-memory source) and one optimiser step under torch.cuda.set_sync_debug_mode("error"): any
    blocking copy or device read between log steps raises. (DirectPred's eigh reference reads cuSOLVER's info flag:
    its backend "cuda" is the sync-free path, checked in tests/test_directpred.py.)"""
    cfg = _cfg(tmp_path, method, "run.device=cuda", "run.precision=bf16")
    st = train.build_stages(cfg, train.dist.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cuda")))
    st.model.train()
    train.train_step(st, 0, st.data.views(0))  # first step: allocations, cuDNN autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train.train_step(st, 1, st.data.views(1))
    finally:
        torch.cuda.set_sync_debug_mode(0)
