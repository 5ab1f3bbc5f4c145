"""2-rank gloo DDP training equals single-process training on the same global batch.

Each rank gets its half of every global batch with the augmentations one process would draw for those rows, every
BatchNorm uses global-batch statistics (GlobalBatchNorm on CPU), the objectives use the gradient-preserving gathers, and
DDP averages the gradients: after an optimiser step the parameters, BN buffers, EMA teacher and DirectPred's predictor
must equal those of one process within float32 reduction-order noise.

One step, at full learning rate: this tiny setting (16 px synthetic images, 16-image batches, random init) is chaotic
beyond the first update. Measured with one process alone, 1 vs 2 CPU threads: parameters differ by 4.5e-5 of the update
after one step but by 1.8 % after two (BatchNorm of nearly dead channels amplifies reduction-order noise), so a
multi-step comparison could not separate a bug from noise at this scale.
"""

import os
import re

import pytest
import torch
import torch.multiprocessing as mp
from conftest import DDP_FP32, free_port, tiny_cfg
from fusedssl.engine import checkpoint, config, data, train

METHODS = ["barlow", "byol", "vicreg", "simclr", "directpred"]
STEPS = 1


def _cfg(out, method, *extra):
    return tiny_cfg(out, method, f"run.steps={STEPS}", "optim.base_lr=0.5", "optim.warmup_epochs=0",
                    "evaluate.online_probe=true", *extra)


def _worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)  # one group for all the runs
    for method in METHODS:
        train.main(_cfg(out, method))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ddp, single = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    mp.start_processes(_worker, args=(2, free_port(), str(ddp)), nprocs=2, join=True, start_method="spawn")
    for method in METHODS:
        train.main(_cfg(single, method))
    return ddp, single


@pytest.mark.parametrize("method", METHODS)
def test_ddp_training_equals_single_process(runs, method):
    ddp, single = runs
    name = f"step_{STEPS:08d}.pt"
    a = checkpoint.load(ddp / method / "checkpoints" / name)
    b = checkpoint.load(single / method / "checkpoints" / name)
    assert a["model"].keys() == b["model"].keys()
    init = train.model_stage.build(_cfg(single, method).model,
                                   predictor_required=method in ("byol", "directpred")).state_dict()
    moved = 0
    for k, v in b["model"].items():
        if not v.is_floating_point():
            assert torch.equal(a["model"][k], v), k
            continue
        update = float((v - init[k]).abs().max())
        diff = float((a["model"][k] - v).abs().max())
        moved += update > 1e-6
        assert diff <= DDP_FP32 * update + 1e-7, f"{method} {k}: DDP - single = {diff:.2e}, update {update:.2e}"
    assert moved > 10, "training did not change the parameters: the comparison would be vacuous"
    # the online probe: its gradient is averaged over ranks in one flat all-reduce (probe.OnlineProbe)
    state = b["probe"]["opt"]["state"]
    for i, k in enumerate(("weight", "bias")):
        update = 0.1 * float(state[i]["momentum_buffer"].abs().max())  # lr x the first step's buffer
        assert update > 0, f"{method}: the online probe did not step"
        diff = float((a["probe"]["head"][k] - b["probe"]["head"][k]).abs().max())
        assert diff <= DDP_FP32 * update + 1e-7, f"{method} probe {k}: DDP - single = {diff:.2e}, update {update:.2e}"
    if b["teacher"] is not None:
        for k, v in b["teacher"].items():
            if v.is_floating_point():
                diff = float((a["teacher"][k] - v).abs().max())
                assert diff <= 2e-2 * float(v.abs().max()) + 1e-6, f"{method} teacher {k}: {diff:.2e}"


def test_views_do_not_depend_on_the_world_size():
    """Rank r of W gets rows r*B/W.. of the one-process views, with the same augmentations."""
    cfg = config.load(None, ["data.source=synthetic", "data.synthetic_size=64", "data.batch_size=16",
                             "data.image_size=16"]).data
    one = data.build(cfg, seed=3, rank=0, world=1, device=torch.device("cpu"), channels_last=False)
    for world in (2, 4):
        parts = [data.build(cfg, seed=3, rank=r, world=world, device=torch.device("cpu"), channels_last=False)
                 for r in range(world)]
        for step in (0, 5):
            full = one.views(step)
            for v in range(2):
                got = torch.cat([p.views(step)[v] for p in parts])
                assert torch.allclose(got, full[v], atol=1e-6), (world, step, v)


TORCHRUN_CASES = {
    # the published recipes' DDP options (static graph on, no compression), plus what a user changes most
    "static_graph": [],
    "static_graph+accumulation": ["optim.accumulate_steps=2"],
    "bf16_compression+accumulation": ["optim.accumulate_steps=2", "dist.comm_hook=bf16"],
    "compile+accumulation": ["run.compile=true", "optim.accumulate_steps=2"],  # inductor's CPU backend, ~1 min
}


@pytest.mark.parametrize("case", sorted(TORCHRUN_CASES))
def test_published_ddp_options_under_torchrun_keep_the_replicas_identical(tmp_path, case):
    """2 gloo ranks under torchrun, each with its own data: after 3 steps every rank's weights are bit-identical,
    so the gradients were all-reduced (with static_graph and no_sync together, torch's reducer either asserted on the
    first backward or stopped all-reducing)."""
    import subprocess
    import sys
    from pathlib import Path

    over = ["data.source=synthetic", "data.synthetic_size=64", "data.batch_size=16", "data.image_size=16",
            "model.projector=32-16", "evaluate.knn=false", "log.progress=false", "method.name=barlow",
            f"run.out_dir={tmp_path}", *TORCHRUN_CASES[case]]
    script = Path(__file__).with_name("torchrun_steps.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), "3", *over]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    digests = re.findall(r"rank \d: 3 steps, weights ([0-9a-f]+)", out.stdout)  # torchrun may merge the lines
    assert len(digests) == 2 and len(set(digests)) == 1, out.stdout
