"""2-rank gloo DDP: every method's loss and gradients equal the single-process global batch (methods.md §13).

Two spawned processes run each objective through engine/methods.py under DistributedDataParallel on their half of a
global batch. The parent checks, per method, that the mean over ranks of the returned losses equals the single-process
loss on the whole batch and that the DDP-averaged gradients equal the single-process gradients. FroSSL's default is
per GPU: its reference is the mean of the per-half losses (its own definition); with gather=true it must equal global.
"""

import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_close, free_port
from fusedssl.engine import config, methods
from fusedssl.engine.methods import Outputs

N_GLOBAL, D_IN, D = 8, 6, 5
CASES = [*methods.METHODS, "frossl_gather"]  # every registered method, and FroSSL on the gathered batch


def _method(case: str):
    cfg = config.MethodConfig(name=case.replace("_gather", ""))
    if case == "frossl_gather":
        cfg = dataclasses.replace(cfg, frossl=dataclasses.replace(cfg.frossl, gather=True))
    if case.startswith("matrix") or case.startswith("kernel"):
        cfg = dataclasses.replace(cfg, **{cfg.name: dataclasses.replace(getattr(cfg, cfg.name), mu=0.8)})
    return methods.build(cfg, backends="torch")


class Tiny(torch.nn.Module):
    """Projector (+ a linear predictor when the method has one: DDP must see every parameter used)."""

    def __init__(self, predictor: bool):
        super().__init__()
        self.projector = torch.nn.Linear(D_IN, D)
        self.predictor = torch.nn.Sequential(torch.nn.Linear(D, D, bias=False)) if predictor else None

    def forward(self, x):
        z = self.projector(x)
        return z, self.predictor(z) if self.predictor is not None else None


def _inputs(case):
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, N_GLOBAL, D_IN, generator=g, dtype=torch.float64)
    model = Tiny(_method(case).predictor).double()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64)
    teacher = torch.randn(D_IN, D, generator=g, dtype=torch.float64)
    return x, model, teacher


def _run(case, model, x, teacher):
    """Loss, parameter gradients and method state for views x (2, n, D_IN) through ``model``."""
    method = _method(case)
    z, p = model(torch.cat([x[0], x[1]]))
    t = (torch.cat([x[0], x[1]]) @ teacher).chunk(2)
    loss, _ = method(Outputs(z=list(z.chunk(2)), p=list(p.chunk(2)) if p is not None else None, t=list(t)))
    loss.backward()
    mod = model.module if hasattr(model, "module") else model
    grads = {k: v.grad.detach().clone() for k, v in mod.named_parameters()}
    state = {k: v.clone() for k, v in method.state_dict().items() if v is not None}
    return float(loss.detach()), grads, state


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    per = N_GLOBAL // world
    results = {}
    for case in CASES:
        x, model, teacher = _inputs(case)
        local = x[:, rank * per:(rank + 1) * per]
        m = Tiny(model.predictor is not None).double()
        m.load_state_dict(model.state_dict())
        ddp = torch.nn.parallel.DistributedDataParallel(m)
        results[case] = _run(case, ddp, local, teacher)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()



@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def _reference(case):
    x, model, teacher = _inputs(case)
    if case == "frossl":  # per-GPU loss: the global loss is the mean of the two halves' losses
        parts = []
        for r in range(2):
            m = Tiny(False).double()
            m.load_state_dict(model.state_dict())
            parts.append(_run(case, m, x[:, r * 4:(r + 1) * 4], teacher))
        loss = sum(p[0] for p in parts) / 2
        grads = {k: (parts[0][1][k] + parts[1][1][k]) / 2 for k in parts[0][1]}
        return loss, grads, {}
    return _run(case, model, x, teacher)


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_equal_single_process(two_rank_results, case):
    ref_loss, ref_grads, ref_state = _reference(case)
    r0, r1 = two_rank_results[0][case], two_rank_results[1][case]
    assert_close((r0[0] + r1[0]) / 2, ref_loss, what=f"{case} loss")
    for name, g in ref_grads.items():
        assert_close(r0[1][name], g, what=f"{case} grad {name} rank 0")
        assert_close(r1[1][name], g, what=f"{case} grad {name} rank 1")
    for key, value in ref_state.items():  # DirectPred's F^ is the global-batch correlation on every rank
        assert_close(r0[2][key], value, what=f"{case} {key}")
        assert_close(r1[2][key], value, what=f"{case} {key}")
