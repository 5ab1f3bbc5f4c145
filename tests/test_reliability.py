"""Long-run reliability: preemption signals, SIGKILL + exact resume, non-finite policies, full disk,
distributed faults and start-up checks of bad configs. Each test fails without the behaviour it names."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY, free_port, tiny, wait_for
from fusedssl.engine import checkpoint, config, dist, guard, methods, train


def _over(tmp_path, *extra, name="run"):
    return tiny("byol", "run.threads=1", f"run.out_dir={tmp_path}", f"run.name={name}", *extra)


def _cfg(tmp_path, *extra, name="run"):
    return config.load(None, _over(tmp_path, *extra, name=name))


def _cli(tmp_path, *extra, name="run"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")  # everything comes from the overrides
    args = [sys.executable, "-m", "fusedssl.engine.cli", "train", "--config", str(recipe)]
    for o in _over(tmp_path, *extra, name=name):
        args += ["--set", o]
    return args


def _ckpts(folder):
    return sorted(folder.glob("step_*.pt"))


def _states_equal(a, b):
    for part in ("model", "teacher"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} differs"
    assert a["step"] == b["step"]


# --------------------------------------------------------------------------------------------------- preemption


def test_sigterm_checkpoints_and_exits_for_requeue(tmp_path):
    """SIGTERM (twice, the second during the save): the run finishes its step, writes a valid checkpoint, exits 75;
    --resume auto then completes the run."""
    log = tmp_path / "run" / "log.jsonl"
    proc = subprocess.Popen(_cli(tmp_path, "run.steps=400"), stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: log.is_file() and len(log.read_text().splitlines()) >= 3, proc=proc), "run did not start"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == guard.EXIT_PREEMPTED, err[-2000:]
    assert "stopped by SIGTERM" in err
    (ckpt,) = _ckpts(tmp_path / "run" / "checkpoints")
    state = checkpoint.load(ckpt)
    assert 3 <= state["step"] < 400
    metrics = train.main(_cfg(tmp_path, "run.steps=" + str(state["step"] + 2), "checkpoint.resume=auto"))
    assert torch.isfinite(torch.tensor(metrics["last_loss"]))


def test_preemption_flag_is_agreed_by_every_rank():
    """Single process: the flag is read every step; SIGUSR1 is handled like SIGTERM."""
    with guard.Preemption(check_every=10, device=torch.device("cpu")) as p:
        assert not p.should_stop(0)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert p.should_stop(1) and p.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is not p._handler  # handlers restored


# ------------------------------------------------------------------------------------------ SIGKILL + exact resume


@pytest.mark.parametrize("kills", [(2, 5)])
def test_sigkill_at_arbitrary_steps_then_resume_is_bit_identical(tmp_path, kills):
    """A run killed with SIGKILL at several points and resumed each time ends bit-identical to an uninterrupted one
    (data order, augmentations, schedules, EMA teacher, optimiser state)."""
    steps = 8
    ref = tmp_path / "ref"
    train.main(_cfg(ref, f"run.steps={steps}"))  # in-process: run.threads=1 makes it the same arithmetic
    run = tmp_path / "killed"
    folder = run / "run" / "checkpoints"
    for k in kills:
        proc = subprocess.Popen(_cli(run, f"run.steps={steps}", "checkpoint.every_steps=1", "checkpoint.keep=2",
                                     "checkpoint.resume=auto"), stderr=subprocess.DEVNULL)
        assert wait_for(lambda k=k: any(int(p.stem[5:]) >= k for p in _ckpts(folder)), proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run(_cli(run, f"run.steps={steps}", "checkpoint.every_steps=1", "checkpoint.keep=2",
                        "checkpoint.resume=auto"), check=True, capture_output=True)
    a = checkpoint.load(ref / "run" / "checkpoints" / f"step_{steps:08d}.pt")
    b = checkpoint.load(folder / f"step_{steps:08d}.pt")
    _states_equal(a, b)


def test_resume_auto_skips_a_corrupt_newest_checkpoint(tmp_path, capsys):
    train.main(_cfg(tmp_path, "run.steps=4", "checkpoint.every_steps=2"))
    newest = _ckpts(tmp_path / "run" / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    path, state = checkpoint.latest(tmp_path / "run" / "checkpoints")
    assert state["step"] == 2 and path.name == "step_00000002.pt"
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "does not match its checksum" in err


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    checkpoint.save(folder, 1, {"x": torch.ones(3)}, keep=3)
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(OSError, match=r"could not write checkpoint .*step_00000002.pt.*No space left.*"
                                      r"previous checkpoint .*step_00000001.pt is intact"):
        checkpoint.save(folder, 2, {"x": torch.zeros(3)}, keep=3)
    monkeypatch.setattr(checkpoint.os, "fsync", real)
    assert [p.name for p in _ckpts(folder)] == ["step_00000001.pt"]
    assert not list(folder.glob("*.tmp"))
    assert torch.equal(checkpoint.load(folder / "step_00000001.pt")["x"], torch.ones(3))


# --------------------------------------------------------------------------------------------------- non-finite


class _Poisoned:
    """A method whose objective returns NaN on its n-th call (1-based), once; everything else is delegated."""

    def __init__(self, method, state):
        self.__dict__.update(_m=method, _state=state)

    def __getattr__(self, name):
        return getattr(self._m, name)

    def __call__(self, out):
        loss, terms = self._m(out)
        self._state["calls"] += 1
        if self._state["calls"] == self._state["at"]:
            loss = loss * float("nan")
        return loss, terms


@pytest.fixture
def nan_at(monkeypatch):
    state = {"calls": 0, "at": None}
    real = methods.build
    monkeypatch.setattr(methods, "build", lambda cfg, *, backends: _Poisoned(real(cfg, backends=backends), state))
    return lambda n: state.update(at=n)


def test_nonfinite_stop_names_step_and_rank(tmp_path, nan_at):
    nan_at(3)
    with pytest.raises(FloatingPointError, match=r"at or before step 3 on rank 0 .*method byol.*guard.nonfinite=stop"):
        train.main(_cfg(tmp_path, "run.steps=6"))


def test_nonfinite_skip_drops_only_that_step(tmp_path, nan_at):
    nan_at(3)
    metrics = train.main(_cfg(tmp_path, "run.steps=6", "guard.nonfinite=skip"))
    assert metrics["skipped_steps"] == 1 and torch.isfinite(torch.tensor(metrics["last_loss"]))
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "step_00000006.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nonfinite_rollback_reloads_and_lowers_the_lr(tmp_path, nan_at, capsys):
    nan_at(5)  # step 5: after the step-4 checkpoint, detected at the step-5 log point
    metrics = train.main(_cfg(tmp_path, "run.steps=6", "guard.nonfinite=rollback", "checkpoint.every_steps=2",
                              "guard.rollback_lr_factor=0.5"))
    assert metrics["rollbacks"] == 1
    err = capsys.readouterr().err
    assert "rolled back to" in err and "(step 4)" in err, err
    final = checkpoint.load(tmp_path / "run" / "checkpoints" / "step_00000006.pt")
    assert final["lr_factor"] == 0.5
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    lrs = [json.loads(x)["optim/lr"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    base = _cfg(tmp_path, "run.steps=6")
    assert lrs[-1] == pytest.approx(0.5 * train.optim.schedules(
        base.optim, config.resolve(base, world=1, steps_per_epoch=4), ema_base=0.996, ema_schedule="cosine").lr[5])


def test_grad_flag_catches_nonfinite_gradients():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert not bool(guard.grads_finite([p]))
    p.grad = torch.ones(3)
    assert bool(guard.grads_finite([p]))


# -------------------------------------------------------------------------------------------- distributed faults



def _fault_worker(rank, world, port, out, mode):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    real = train.train_step

    def step_fn(st, step, *a, **k):
        if rank == 1 and step == 3:
            if mode == "die":
                os._exit(1)
            time.sleep(25)  # hang
        return real(st, step, *a, **k)

    train.train_step = step_fn
    t0 = time.time()
    try:
        train.main(_cfg(out, "run.steps=50", "dist.timeout_s=5"))
        msg = "finished"
    except Exception as e:  # noqa: BLE001
        msg = str(e)
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(f"{time.time() - t0:.1f}\n{msg}")
    os._exit(0)


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_dead_or_hung_rank_stops_the_others_with_its_name(tmp_path, mode):
    ctx = mp.start_processes(_fault_worker, args=(2, free_port(), str(tmp_path), mode), nprocs=2, join=False,
                             start_method="spawn")
    assert wait_for(lambda: (tmp_path / "rank0.txt").is_file(), timeout=90), "rank 0 hung"
    for p in ctx.processes:
        p.kill()
    elapsed, msg = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert "rank 0: a collective failed or timed out (dist.timeout_s=5)" in msg, msg
    assert "rank(s) 1 stopped responding" in msg, msg
    assert float(elapsed) < 60


# ------------------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("over,message", [
    (["dist.backend=nccl"], r"dist.backend=nccl needs CUDA"),
    (["run.device=cuda"], r"run.device=cuda but no CUDA device"),
    (["kernels.backend=cuda"], r"kernels.backend=cuda: backend='cuda' cannot run ema_: the (C\+\+/CUDA extension|CUDA "
                               r"C\+\+ kernels)"),
    (["data.source=folder", "data.root=/nonexistent/imagenet"], r"data.root='/nonexistent/imagenet' is not a folder"),
    (["method.name=byol", "model.predictor="], r"needs a predictor"),
    (["optim.accumulate_steps=3"], r"optim.accumulate_steps"),
    (["guard.nonfinite=retry"], r"guard.nonfinite='retry' is not one of"),
])
def test_bad_configs_fail_at_start_naming_the_key(tmp_path, over, message):
    if "cuda" in " ".join(over) and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises((config.ConfigError, ValueError), match=message):
        train.main(_cfg(tmp_path, "run.steps=2", *over))
    assert not (tmp_path / "run" / "log.jsonl").exists()  # nothing started


def test_triton_without_gpu_or_interpreter_fails_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(config.ConfigError, match=r"kernels.backend=triton: .*need a CUDA device"):
        train.main(_cfg(tmp_path, "run.steps=2", "method.name=barlow", "model.predictor=", "kernels.backend=triton"))


def test_batch_not_divisible_by_world_size():
    cfg = config.load(None, TINY).data
    with pytest.raises(ValueError, match=r"data.batch_size=16 is not divisible by the world size 3"):
        train.data_stage.build(cfg, seed=0, rank=0, world=3, device=torch.device("cpu"), channels_last=False)


def test_failure_message_without_a_group():
    info = dist.DistInfo(rank=0, world=2, local_rank=0, device=torch.device("cpu"))
    msg = dist.failure_message(RuntimeError("Connection closed by peer"), info, 30)
    assert msg.startswith("rank 0: a collective failed") and "could not tell which rank" in msg


# ------------------------------------------------------------------------------------ multi-node storage


def _agree_worker(rank, world, port, root, results):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    node = os.path.join(root, f"node{rank}")  # each rank's own disk and working directory, as on separate nodes
    os.makedirs(node, exist_ok=True)
    os.chdir(node)
    out = []
    if rank == 0:
        checkpoint.save("runs/run/checkpoints", 4, {"step": 4}, keep=1)  # the default relative run.out_dir
    try:
        found = checkpoint.agreed_latest("runs/run/checkpoints", rank=rank, world=world)
        out.append(f"resumed {found[1]['step'] if found else None}")
    except ValueError as e:
        out.append(f"refused {e}")
    from fusedssl.engine.data import files, folder

    idx = folder.Index(root=node, classes=["a"], files=[f"a/{rank}.jpg"], labels=np.zeros(1, np.int64),
                       sizes=np.ones((1, 2), np.int64), modes=["RGB"])
    try:
        files._same_index_on_every_rank(idx, "idx.json", rank, world)
        out.append("index agreed")
    except folder.DatasetError as e:
        out.append(f"index refused {e}")
    with open(os.path.join(root, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(out))
    torch.distributed.destroy_process_group()


def test_ranks_agree_on_the_checkpoint_and_the_index_or_refuse_naming_them(tmp_path):
    """Node-local run folders and data: rank 0 decides the checkpoint; a rank that cannot read rank 0's choice stops
    with the folder named (it used to start at step 0 while rank 0 resumed, then hang at the first collective), and
    ranks whose indexes list different files are refused instead of drawing different global batches."""
    mp.start_processes(_agree_worker, args=(2, free_port(), str(tmp_path), None), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1))
    assert r0[0] == "resumed 4"
    assert r1[0].startswith("refused rank 1 cannot resume from the checkpoint rank 0 chose") and \
        "run.out_dir on a file system all nodes share" in r1[0], r1
    assert all(line.startswith("index refused rank(s) [1] read a dataset index 'idx.json'") for line in (r0[1], r1[1]))


def test_a_rank_waiting_for_the_dataset_index_gives_up_with_the_fix(tmp_path):
    from fusedssl.engine.data import files, folder

    folder.write_photo_tree(tmp_path / "tree", 2, seed=0)
    cfg = config.load(None, ["data.source=folder", f"data.root={tmp_path / 'tree'}"]).data
    t0 = time.time()
    with pytest.raises(folder.DatasetError, match=r"rank 1 waited 1 s for rank 0's dataset index .* \(node-local "
                                                   r"data\)\. Run `fusedssl data check"):
        files.resolve_index(cfg, rank=1, wait_s=1.0)
    assert time.time() - t0 < 10
