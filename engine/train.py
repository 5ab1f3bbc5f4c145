"""The training loop: config -> dist -> data -> method -> model -> optim -> checkpoint -> steps -> evaluation.

Step-based, not epoch-based: the global step indexes the data (``data.views(step)``), the schedules and the checkpoint,
so resuming at step s replays exactly what an uninterrupted run would do from s. The loop itself reads the device only
at the log interval (loss values and the non-finite flag), at checkpoints and every ``dist.signal_check_every`` steps
under DDP (the preemption agreement). What else synchronises the host, and only where it is configured: fp16's grad
scaler (its skip decision), ``guard.nonfinite=skip`` (a per-step flag read), torch's SyncBatchNorm (``model.sync_bn``
under DDP on GPUs: one small read per BatchNorm layer in the forward; ``model.sync_bn_impl=global`` avoids it), and
DirectPred's eigh reference on a GPU (cuSOLVER's info check; backend "cuda" avoids it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from fusedssl import kernels

from . import checkpoint, config, dist, evaluate, guard, methods, metrics, optim
from . import data as data_stage
from . import model as model_stage
from . import probe as probe_stage
from .methods import Outputs

log = logging.getLogger("fusedssl")


@dataclass
class Stages:
    """Everything a step needs, built from the config in data-flow order (train.main and bench step share it)."""

    data: data_stage.TwoViewData | data_stage.files.FileViews
    method: methods.Method
    model: torch.nn.Module
    teacher: model_stage.EMATeacher | None
    opt: torch.optim.Optimizer
    sched: optim.Schedules
    net: torch.nn.Module       # what the step calls: the model, compiled and/or wrapped by DDP
    prec: optim.Precision
    probe: probe_stage.OnlineProbe | None
    total: int                 # optimiser steps in the run
    backends: dict[str, str]   # the backend serving each kernels op the run calls (kernels.resolve_all)
    device: torch.device
    grad_clip: float
    accumulate: int            # micro-batches per optimiser step
    skip_nonfinite: bool       # guard.nonfinite=skip: drop a non-finite step (reads the device every step)
    resolved: config.Resolved  # what the config implies for this run (per-rank batch, lengths, peak lr)


def build_stages(cfg: config.Config, info: dist.DistInfo) -> Stages:
    device = info.device
    data = data_stage.build(cfg.data, seed=cfg.run.seed, rank=info.rank, world=info.world, device=device,
                            channels_last=cfg.run.channels_last, wait_s=cfg.dist.timeout_s)
    resolved = config.resolve(cfg, world=info.world, steps_per_epoch=data.steps_per_epoch)
    cls = methods.METHODS[cfg.method.name]
    ops = (*cls.ops, *(("lars_step_",) if cfg.optim.name == "lars" else ()), *(("ema_",) if cls.teacher else ()))
    try:  # every op's backend, decided once (and so failing now, not at the first step)
        backends = kernels.resolve_all(ops, cfg.kernels.backend, device)
    except kernels.BackendUnavailable as e:
        raise config.ConfigError(f"kernels.backend={cfg.kernels.backend}: {e}") from None
    method = methods.build(cfg.method, backends=backends)
    methods.check_model(method, cfg.model)
    model = model_stage.build(cfg.model, predictor_required=method.predictor).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if info.world > 1 and cfg.model.sync_bn:
        model = model_stage.sync_batchnorm(model, device, cfg.model.sync_bn_impl)  # W ranks == one process
    teacher = model_stage.EMATeacher(model, backend=backends["ema_"]) if method.teacher else None
    opt, sched = optim.build(cfg.optim, model, resolved, ema_base=cfg.method.ema_base,
                             ema_schedule=cfg.method.ema_schedule, lars_backend=backends.get("lars_step_", "torch"))
    # compiled before the DDP wrap: DDP then sees the compiled module, so no_sync and its bucketing still apply
    # (torch.compile(DDP(...)) is not a DDP instance, and accumulation then all-reduced every micro-batch)
    net = torch.compile(model) if cfg.run.compile else model
    if info.world > 1:
        net = dist.wrap_ddp(net, cfg.dist, device, accumulate_steps=cfg.optim.accumulate_steps)
    probe = None  # the online linear probe: its own head and SGD on detached features (probe.py)
    if cfg.evaluate.online_probe:
        probe = probe_stage.OnlineProbe(model.feat_dim, data.num_classes, cfg.evaluate.probe_lr, device)
    prec = optim.Precision(cfg.run.precision, device, matmul_tf32=cfg.run.matmul_tf32,
                           cudnn_benchmark=cfg.run.cudnn_benchmark)
    return Stages(data, method, model, teacher, opt, sched, net, prec, probe, resolved.total_steps, backends, device,
                  cfg.optim.grad_clip, cfg.optim.accumulate_steps, cfg.guard.nonfinite == "skip", resolved)


def forward_views(net, teacher, views: list[torch.Tensor], prec: optim.Precision) -> Outputs:
    """All views through the online network in one batch (and through the teacher without gradients)."""
    x = torch.cat(views)
    n_views = len(views)
    with prec.autocast():
        h, z, p = net(x)
        t = None
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x).chunk(n_views)
    return Outputs(z=list(z.chunk(n_views)), p=list(p.chunk(n_views)) if p is not None else None,
                   t=list(t) if t is not None else None, h=list(h.chunk(n_views)))


def train_step(st: Stages, step: int, views: list[torch.Tensor], labels: torch.Tensor | None = None,
               lr_scale: float = 1.0, mark=None) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """One optimiser step over ``st.accumulate`` micro-batches; returns (loss, terms, finite), still on the device.

    Each micro-batch is a full SSL batch of its own (its own covariance / negatives); DDP all-reduces only after the
    last one (``no_sync``). ``finite`` is a device-side bool over the loss and (except under fp16, whose scaler skips
    overflowing steps itself) the gradients; with ``st.skip_nonfinite`` the host reads it (one sync) and drops the
    update, EMA and predictor reset of a non-finite step, and ``finite`` is then None. The online probe learns from
    the detached features of the first view and ``labels``, only when the model steps. ``lr_scale`` multiplies the
    scheduled learning rate (the non-finite policy's factor); ``mark(phase)``, if given, is called after each phase
    (bench step times them).
    """
    mark = mark or (lambda phase: None)
    lr = float(st.sched.lr[step])
    held = st.resolved.peak_lr if step >= st.resolved.warmup_steps else lr  # a constant group's lr after warm-up
    optim.set_lr(st.opt, lr * lr_scale, held * lr_scale)
    st.opt.zero_grad(set_to_none=True)
    chunks = list(zip(*(v.chunk(st.accumulate) for v in views), strict=True))
    total, terms, probe_in = 0.0, {}, []
    for i, micro in enumerate(chunks):
        sync = i + 1 == len(chunks) or not dist.is_ddp(st.net)
        with nullcontext() if sync else st.net.no_sync():
            out = forward_views(st.net, st.teacher, list(micro), st.prec)
            mark("forward")
            loss, parts = st.method(out)  # the objective ops run in fp32 outside autocast by design
            mark("objective")
            st.prec.backward(loss / st.accumulate)
            mark("backward")
        if st.probe is not None:
            probe_in.append(out.h[0].detach())
        total = total + loss.detach() / st.accumulate
        terms = {k: terms.get(k, 0.0) + v / st.accumulate for k, v in parts.items()}
    finite = torch.isfinite(total)
    if st.prec.scaler is None:
        finite = finite & guard.grads_finite(st.model.parameters())
    if st.skip_nonfinite and guard.nonfinite_anywhere(~finite):
        st.opt.zero_grad(set_to_none=True)
        st.method.drop_step()
        return total, terms, None
    st.prec.step(st.opt, st.model.parameters(), st.grad_clip)
    for h, y in zip(probe_in, labels.chunk(st.accumulate) if probe_in else [], strict=True):
        st.probe.step(h, y)
    if st.teacher is not None:
        st.teacher.update(st.model, float(st.sched.ema[step]))
    st.method.after_step(st.model, step)
    mark("optimizer")
    return total, terms, finite


def main(cfg: config.Config, pending_signal: int = 0) -> dict:
    """Run one training job; returns its summary metrics (also written to <run>/summary.json).

    SIGTERM/SIGUSR1 are caught for the whole run (guard.py), set-up included; ``pending_signal`` is one the command
    line caught before this was called.
    """
    with guard.Preemption(cfg.dist.signal_check_every, pending=pending_signal) as preempt:
        return _run(cfg, preempt)


def _run(cfg: config.Config, preempt: guard.Preemption) -> dict:
    info = dist.build(cfg.dist, cfg.run.device)
    preempt.device = device = info.device
    dist.setup_logging(info)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    ckpt_dir = run_dir / "checkpoints"
    lock = guard.RunLock(run_dir) if info.is_main else None  # before any work: a clash or bad folder stops here

    # ---- build the stages, each from its own section; then resume or start
    st = build_stages(cfg, info)
    policy = guard.NonFinitePolicy(cfg.guard, rank=info.rank, method=cfg.method.name)
    start, stats = 0, {}
    if cfg.checkpoint.resume:  # rank 0 decides which checkpoint every rank resumes from
        resume = cfg.checkpoint.resume
        found = checkpoint.agreed_latest(ckpt_dir, rank=info.rank, world=info.world) if resume == "auto" else \
            (Path(resume), checkpoint.load(resume))
        if found is not None:
            start, stats = checkpoint.restore(st, found[1], cfg=cfg, path=found[0])
            log.info("resumed from %s at step %d", found[0], start)
    log.info("fusedssl %s | torch %s | device %s x%d | method %s | %d steps (%d/epoch) | batch %d | %s%s",
             metrics.version(), torch.__version__, device, info.world, cfg.method.name, st.total,
             st.data.steps_per_epoch, cfg.data.batch_size, st.prec.name, " | compiled" if cfg.run.compile else "")
    built, ext_line = kernels.extension_status()
    (log.info if built else log.warning)("extension: %s", ext_line)
    log.info("resolved: %s; precision: %s", ", ".join(f"{k} {v:g}" for k, v in
                                                      dataclasses.asdict(st.resolved).items()), st.prec.describe())
    log.info("data: %s source, %s", cfg.data.source, st.data.describe())
    log.info("kernel backends (kernels.backend=%s): %s", cfg.kernels.backend,
             ", ".join(f"{op}={b}" for op, b in st.backends.items()))
    if info.is_main:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(cfg), indent=1))
        guard.requeue_marker(run_dir).unlink(missing_ok=True)  # this segment runs: an older request is answered
    logger = metrics.Logger(run_dir, is_main=info.is_main, tensorboard=cfg.log.tensorboard, progress=cfg.log.progress,
                            total=st.total, batch_size=cfg.data.batch_size)

    def monitor(step: int, when: str) -> dict:
        """Held-out kNN / probe accuracy, logged (rank 0 only; BatchNorm in eval mode needs no collectives)."""
        res = evaluate.held_out(st.model.backbone, st.probe, st.data, cfg, st.device)
        if res:
            log.info("%s: %s", when, ", ".join(f"{k} accuracy {100 * v:.2f}%" for k, v in res.items()))
            logger.event({"step": step, **{f"eval/{k}": v for k, v in res.items()}})
        return res

    def save(step: int) -> None:
        if info.is_main:
            state = checkpoint.run_state(st, step, metrics=stats, config=config.to_dict(cfg), version=metrics.version())
            state["lr_factor"] = policy.lr_factor(stats)  # for the record: it is derived from metrics["rollbacks"]
            checkpoint.save(ckpt_dir, step, state, cfg.checkpoint.keep)

    def rollback():
        found = checkpoint.agreed_latest(ckpt_dir, rank=info.rank, world=info.world)
        return None if found is None else (found[0], *checkpoint.restore(st, found[1], cfg=cfg, path=found[0]))

    if start == 0 and info.is_main:
        stats["knn_random_init"] = monitor(0, "at random initialisation").get("knn")

    # ---- the loop
    st.model.train()
    knn_every = cfg.evaluate.knn_every_epochs * st.data.steps_per_epoch
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    t0, seen, data_s = time.perf_counter(), 0, 0.0
    step = start
    try:
        while step < st.total:
            td = time.perf_counter()
            views = st.data.views(step)
            data_s += time.perf_counter() - td
            loss, terms, finite = train_step(st, step, views, st.data.labels(step) if st.probe else None,
                                             policy.lr_factor(stats))
            if finite is None:  # the skip policy dropped this step
                stats["skipped_steps"] = stats.get("skipped_steps", 0) + 1
                log.warning("step %d: non-finite loss or gradients, optimiser step skipped (guard.nonfinite=skip)",
                            step + 1)
            else:
                nonfinite |= ~finite  # device-side flag: no host sync here
            seen += cfg.data.batch_size
            last = step + 1 == st.total
            due_log = (step + 1) % cfg.log.every == 0 or last
            due_ckpt = cfg.checkpoint.every_steps and (step + 1) % cfg.checkpoint.every_steps == 0 and not last
            logger.progress(step)
            if (due_log or due_ckpt) and guard.nonfinite_anywhere(nonfinite):  # host sync here only
                step, stats = policy.handle(step, loss, terms, stats, rollback)
                nonfinite.zero_()
                t0, seen, data_s = time.perf_counter(), 0, 0.0
                continue
            if due_log:
                dist.heartbeat(step + 1)
                rec = metrics.log_record(st, step, loss, terms, seen=seen, seconds=time.perf_counter() - t0,
                                         data_s=data_s, lr_scale=policy.lr_factor(stats), batch=cfg.data.batch_size)
                logger.record(rec)
                stats["last_loss"], stats["images_per_s"] = rec["loss/total"], rec["perf/images_per_s"]
                t0, seen, data_s = time.perf_counter(), 0, 0.0
            if knn_every and (step + 1) % knn_every == 0 and not last and info.is_main:
                monitor(step + 1, f"epoch {(step + 1) // st.data.steps_per_epoch}")
            if not last and preempt.should_stop(step):
                if not guard.nonfinite_anywhere(nonfinite):  # never checkpoint a poisoned state
                    save(step + 1)
                    if info.is_main:
                        guard.request_requeue(run_dir, step + 1)
                # no rank exits before rank 0's checkpoint is on disk: torchrun ends the others at the first exit
                dist.barrier(info)
                raise guard.Preempted(step + 1, preempt.signum)
            if due_ckpt:
                save(step + 1)
            step += 1

        # ---- end: evaluation, final checkpoint, summary
        if info.is_main:
            res = monitor(st.total, "after training")
            stats["knn_trained"] = res.get("knn")
            if st.probe is not None:
                stats["probe_trained"] = res.get("probe")
            if stats["knn_trained"] is not None and stats.get("knn_random_init") is not None:
                log.info("kNN accuracy after training: %+.2f pts over random initialisation",
                         100 * (stats["knn_trained"] - stats["knn_random_init"]))
            save(st.total)
            (run_dir / "summary.json").write_text(json.dumps(stats, indent=1))
    except (RuntimeError, OSError) as e:
        if info.world > 1 and dist.is_collective_failure(e):
            raise RuntimeError(dist.failure_message(e, info, cfg.dist.timeout_s)) from e
        raise
    finally:
        st.data.close()
        logger.close()
        if lock:
            lock.release()
        dist.teardown(info)
    return stats
