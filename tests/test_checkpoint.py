"""Run state through a checkpoint: what ``checkpoint.run_state`` writes, ``checkpoint.restore`` puts back onto the
run's device, for every kind of state a run holds (model and its BatchNorm buffers, EMA teacher, DirectPred's F^ and
eigenbasis, optimiser buffers, the online probe). ``checkpoint.load`` maps everything to the CPU; a CPU-only test that
compares values cannot see a tensor left behind there, so the restore here targets the meta device, standing in for a
GPU: every tensor must land on it."""

import pytest
import torch
from conftest import tiny
from fusedssl.engine import checkpoint, config, dist, train

RUN = ["evaluate.online_probe=true", "run.channels_last=false"]
CASES = {"byol+lars": tiny("byol", *RUN, "optim.name=lars"),
         "directpred+sgd": tiny("directpred", *RUN, "optim.name=sgd"),
         "barlow+adamw": tiny("barlow", *RUN, "optim.name=adamw")}


def _tensors(obj, where=""):
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{where}[{i}]")


@pytest.mark.parametrize("case", sorted(CASES))
def test_restore_puts_every_tensor_on_the_run_device(tmp_path, case):
    cfg = config.load(None, [*CASES[case], f"run.out_dir={tmp_path}"])
    info = dist.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    st = train.build_stages(cfg, info)
    for step in range(2):
        train.train_step(st, step, st.data.views(step), st.data.labels(step))
    checkpoint.save(tmp_path, 2, checkpoint.run_state(st, 2, metrics={}, config=config.to_dict(cfg), version="test"),
                    keep=1)
    state = checkpoint.load(tmp_path / "step_00000002.pt")
    assert {w for w, t in _tensors(state) if t.device.type != "cpu"} == set()  # loaded onto the CPU

    meta = torch.device("meta")
    fresh = train.build_stages(cfg, dist.DistInfo(rank=0, world=1, local_rank=0, device=meta))
    step, _ = checkpoint.restore(fresh, state, cfg=cfg, path="step_00000002.pt")
    assert step == 2
    # (torch keeps Adam's step counters on the CPU on purpose unless capturable: they are not device state)
    opt_state = {i: {k: v for k, v in s.items() if k != "step"} for i, s in fresh.opt.state_dict()["state"].items()}
    held = {"model": fresh.model.state_dict(), "optimizer": opt_state,
            "method": fresh.method.state_dict(), "probe": fresh.probe.state()}
    if fresh.teacher is not None:
        held["teacher"] = fresh.teacher.state_dict()
    found = list(_tensors(held))
    assert found, "nothing was restored"
    left = [w for w, t in found if t.device != meta]
    assert not left, f"restored onto the CPU instead of the run's device: {left}"
    if case.startswith("directpred"):
        assert {w for w, _ in _tensors(held["method"])} == {".corr", ".basis"}


@pytest.mark.gpu
def test_directpred_resumes_onto_the_gpu_and_steps(tmp_path):
    """The review's crash: F^ and its eigenbasis came back on the CPU and the first step after a resume mixed devices.
    Train on the GPU, checkpoint, restore into fresh GPU stages, take a step (reference and cuda eigensolvers)."""
    for backend in ("torch", "cuda"):
        cfg = config.load(None, [*CASES["directpred+sgd"], f"run.out_dir={tmp_path}", "run.device=cuda",
                                 f"kernels.backend={backend}" if backend == "cuda" else "kernels.backend=auto"])
        info = dist.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cuda"))
        st = train.build_stages(cfg, info)
        for step in range(2):
            train.train_step(st, step, st.data.views(step), st.data.labels(step))
        checkpoint.save(tmp_path / backend, 2, checkpoint.run_state(st, 2, metrics={}, config=config.to_dict(cfg),
                                                                     version="test"), keep=1)
        fresh = train.build_stages(cfg, info)
        step, _ = checkpoint.restore(fresh, checkpoint.load(tmp_path / backend / "step_00000002.pt"), cfg=cfg,
                                     path="step_00000002.pt")
        loss, _, finite = train.train_step(fresh, step, fresh.data.views(step), fresh.data.labels(step))
        assert bool(finite) and fresh.method.corr.device.type == "cuda"
