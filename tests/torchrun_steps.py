"""Run under torchrun by tests/test_ddp_training.py: build the stages exactly as a training run does (DDP options,
accumulation, compile) from the config overrides on the command line, take a few optimiser steps, and check that
every rank ends with bit-identical parameters and buffers (DDP's all-reduce kept the replicas together although each
rank saw different data). Prints one line per rank and exits non-zero on a mismatch."""

import hashlib
import sys

import torch
import torch.distributed as dist
from fusedssl.engine import config, train
from fusedssl.engine import dist as engine_dist


def main() -> int:
    steps, overrides = int(sys.argv[1]), sys.argv[2:]
    cfg = config.load(None, overrides)
    info = engine_dist.build(cfg.dist, cfg.run.device)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.run.seed)
    st = train.build_stages(cfg, info)
    st.model.train()
    for step in range(steps):
        loss, _, finite = train.train_step(st, step, st.data.views(step))
        assert bool(finite), f"step {step}: non-finite loss {float(loss)}"
    h = hashlib.sha256()
    for t in [*st.model.state_dict().values()]:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    digest = h.hexdigest()
    got = [None] * info.world
    dist.all_gather_object(got, digest)
    print(f"rank {info.rank}: {steps} steps, weights {digest[:16]}, static_graph used "
          f"{getattr(st.net, 'static_graph', None)}", flush=True)
    engine_dist.teardown(info)
    return 0 if len(set(got)) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
