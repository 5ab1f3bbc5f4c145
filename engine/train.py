"""The training loop: config -> dist -> data -> method -> model -> optim -> checkpoint -> steps -> evaluation.

Step-based, not epoch-based: the global step indexes the data (``data.views(step)``), the schedules and the checkpoint,
so resuming at step s replays exactly what an uninterrupted run would do from s. Inside the loop the host synchronises
only at the log interval (loss values and the non-finite flag are read there); fp16's grad scaler is the exception
(its skip decision reads the device), which is why bf16 is the default on GPUs.
"""

from __future__ import annotations

import json
import logging
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from fusedssl import kernels

from . import checkpoint, config, dist, evaluate, guard, methods, optim
from . import data as data_stage
from . import model as model_stage
from .methods import Outputs

log = logging.getLogger("fusedssl")


def _version() -> str:
    try:
        return metadata.version("fusedssl")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class Precision:
    """Autocast context and (fp16 only) the gradient scaler for ``run.precision``."""

    def __init__(self, name: str, device: torch.device):
        self.name = name if name != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)
        self.device_type = device.type
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, opt: torch.optim.Optimizer, params, grad_clip: float) -> None:
        if self.scaler:
            self.scaler.unscale_(opt)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()


def forward_views(net, teacher, views: list[torch.Tensor], prec: Precision) -> Outputs:
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


def train_step(step, views, net, model, teacher, method, opt, sched, prec: Precision, grad_clip: float,
               accumulate: int = 1, skip_nonfinite: bool = False, probe=None, labels=None):
    """One optimisation step over ``accumulate`` micro-batches; returns (loss, terms, finite), still on the device.

    Each micro-batch is a full SSL batch of its own (its own covariance / negatives); DDP all-reduces only after the
    last one (``no_sync``). With accumulate = 1 this is the plain step. ``finite`` is a device-side bool over the loss
    and (except under fp16, whose scaler skips overflowing steps itself) the gradients. With ``skip_nonfinite`` the
    host reads it (one sync) and drops the update, EMA and predictor reset of a non-finite step; ``finite`` is then
    None for a dropped step. ``probe`` (the online linear probe) learns from the detached features of the first view
    and ``labels``; it is stepped only when the model is.
    """
    optim.set_lr(opt, float(sched.lr[step]))
    opt.zero_grad(set_to_none=True)
    chunks = list(zip(*(v.chunk(accumulate) for v in views), strict=True))
    total, terms, probe_in = 0.0, {}, []
    for i, micro in enumerate(chunks):
        sync = i + 1 == len(chunks) or not dist.is_ddp(net)
        with nullcontext() if sync else net.no_sync():
            out = forward_views(net, teacher, list(micro), prec)
            loss, parts = method(out)  # the objective ops run in fp32 outside autocast by design
            prec.backward(loss / accumulate)
        if probe is not None:
            probe_in.append(out.h[0].detach())
        total = total + loss.detach() / accumulate
        terms = {k: terms.get(k, 0.0) + v / accumulate for k, v in parts.items()}
    finite = torch.isfinite(total)
    if prec.scaler is None:
        finite = finite & guard.grads_finite(model.parameters())
    if skip_nonfinite and guard.nonfinite_anywhere(~finite):
        opt.zero_grad(set_to_none=True)
        method.drop_step()
        return total, terms, None
    prec.step(opt, model.parameters(), grad_clip)
    for h, y in zip(probe_in, labels.chunk(accumulate) if probe_in else [], strict=True):
        probe.step(h, y)
    if teacher is not None:
        teacher.update(model, float(sched.ema[step]))
    method.after_step(model, step)
    return total, terms, finite


def _monitor(model, probe, data, cfg, device) -> dict[str, float]:
    """kNN accuracy and the online probe's accuracy on the held-out split (in-memory sources; else empty)."""
    if data.test is None or not (cfg.evaluate.knn or probe is not None):
        return {}
    c = cfg.data
    tr, te = (evaluate.features(model.backbone, s.images, size=c.image_size, mean=c.mean, std=c.std, device=device,
                                channels_last=cfg.run.channels_last) for s in (data.train, data.test))
    out = {}
    if cfg.evaluate.knn:
        out["knn"] = evaluate.knn_accuracy(torch.nn.functional.normalize(tr, dim=1), data.train.labels,
                                           torch.nn.functional.normalize(te, dim=1), data.test.labels,
                                           k=cfg.evaluate.knn_k, temperature=cfg.evaluate.knn_temperature)
    if probe is not None:
        out["probe"] = probe.accuracy(te, data.test.labels)
    return out


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; the process's peak RSS


def _tensorboard(cfg, run_dir: Path):
    if not cfg.run.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise config.ConfigError("run.tensorboard=true needs the tensorboard package (pip install tensorboard)") from e
    return SummaryWriter(str(run_dir / "tensorboard"))


@dataclass
class Stages:
    """Everything a step needs, built from the config in data-flow order (train.main and bench step share it)."""

    data: data_stage.TwoViewData | data_stage.files.FileViews
    method: methods.Method
    model: torch.nn.Module
    teacher: model_stage.EMATeacher | None
    opt: torch.optim.Optimizer
    sched: optim.Schedules
    net: torch.nn.Module       # what the step calls: the model, wrapped by DDP and/or torch.compile
    prec: Precision
    total: int                 # optimiser steps in the run
    backends: dict[str, str]   # the backend serving each kernels op the run calls (kernels.resolve_all)


def build_stages(cfg: config.Config, info: dist.DistInfo) -> Stages:
    device = info.device
    data = data_stage.build(cfg.data, seed=cfg.run.seed, rank=info.rank, world=info.world, device=device,
                            channels_last=cfg.run.channels_last)
    if (cfg.data.batch_size // info.world) % cfg.optim.accumulate_steps:
        raise config.ConfigError(f"the per-rank batch {cfg.data.batch_size // info.world} is not divisible by "
                                 f"optim.accumulate_steps={cfg.optim.accumulate_steps}")
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
        model = model_stage.sync_batchnorm(model, device)  # global-batch statistics: W ranks == one process
    teacher = model_stage.EMATeacher(model, backend=backends["ema_"]) if method.teacher else None
    total = cfg.run.steps or cfg.run.epochs * data.steps_per_epoch
    opt, sched = optim.build(cfg.optim, model, batch_size=cfg.data.batch_size, total_steps=total,
                             steps_per_epoch=data.steps_per_epoch, ema_base=cfg.method.ema_base,
                             ema_schedule=cfg.method.ema_schedule, lars_backend=backends.get("lars_step_", "torch"))
    # compiled before the DDP wrap: DDP then sees the compiled module, so no_sync and its bucketing still apply
    # (torch.compile(DDP(...)) is not a DDP instance, and accumulation then all-reduced every micro-batch)
    net = torch.compile(model) if cfg.run.compile else model
    if info.world > 1:
        net = dist.wrap_ddp(net, cfg.dist, device, accumulate_steps=cfg.optim.accumulate_steps)
    return Stages(data, method, model, teacher, opt, sched, net, Precision(cfg.run.precision, device), total,
                  backends)


def main(cfg: config.Config, pending_signal: int = 0) -> dict:
    """Run one training job; returns its summary metrics (also written to <run>/summary.json).

    SIGTERM/SIGUSR1 are caught for the whole run (guard.py), set-up included; ``pending_signal`` is one the command
    line caught before this was called.
    """
    with guard.Preemption(cfg.dist.signal_check_every, pending=pending_signal) as preempt:
        return _run(cfg, preempt)


def _run(cfg: config.Config, preempt: guard.Preemption) -> dict:
    info = dist.build(cfg.dist, cfg.run.device)
    preempt.device = info.device
    dist.setup_logging(info)
    device = info.device
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    ckpt_dir = run_dir / "checkpoints"

    # ---- build the stages, each from its own section
    st = build_stages(cfg, info)
    data, method, model, teacher, opt, sched, net, prec, total = (
        st.data, st.method, st.model, st.teacher, st.opt, st.sched, st.net, st.prec, st.total)

    probe = None  # the online linear probe: its own head and SGD on detached features (evaluate.py)
    if cfg.evaluate.online_probe:
        probe = evaluate.OnlineProbe(model.feat_dim, data.num_classes, cfg.evaluate.probe_lr, device)

    # ---- resume or start
    base_lr = sched.lr.copy()
    start, metrics, lr_factor = 0, {}, 1.0

    def restore(path: Path, state: dict) -> int:
        nonlocal metrics, lr_factor
        saved = config.from_dict(state["config"])
        for key in config.ARCH_KEYS:
            if config.get(saved, key) != config.get(cfg, key):
                raise config.ConfigError(f"checkpoint {path} was trained with {key}={config.get(saved, key)!r}, "
                                         f"this run has {config.get(cfg, key)!r}")
        model.load_state_dict(state["model"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        method.load_state_dict(state["method"], device)
        opt.load_state_dict(state["optimizer"])
        if prec.scaler is not None and state.get("scaler"):
            prec.scaler.load_state_dict(state["scaler"])
        if isinstance(state.get("rng"), dict):
            _set_rng_state(state["rng"], device)
        if probe is not None:
            if state.get("probe") is None:
                raise config.ConfigError(f"evaluate.online_probe=true, but checkpoint {path} was written without "
                                         "the online probe: resume with evaluate.online_probe=false")
            probe.load(state["probe"])
        metrics, lr_factor = state["metrics"], state.get("lr_factor", 1.0)
        sched.lr[:] = base_lr * lr_factor
        return state["step"]

    if cfg.checkpoint.resume:
        found = checkpoint.latest(ckpt_dir) if cfg.checkpoint.resume == "auto" else \
            (Path(cfg.checkpoint.resume), checkpoint.load(cfg.checkpoint.resume))
        if found is not None:
            start = restore(*found)
            log.info("resumed from %s at step %d", found[0], start)
    log.info("fusedssl %s | torch %s | device %s x%d | method %s | %d steps (%d/epoch) | batch %d | %s%s",
             _version(), torch.__version__, device, info.world, cfg.method.name, total, data.steps_per_epoch,
             cfg.data.batch_size, prec.name, " | compiled" if cfg.run.compile else "")
    built, ext_line = kernels.extension_status()
    (log.info if built else log.warning)("extension: %s", ext_line)
    log.info("data: %s source, %s", cfg.data.source, data.describe())
    log.info("kernel backends (kernels.backend=%s): %s", cfg.kernels.backend,
             ", ".join(f"{op}={b}" for op, b in st.backends.items()))
    tb = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(cfg), indent=1))
        tb = _tensorboard(cfg, run_dir)
    logf = open(run_dir / "log.jsonl", "a") if info.is_main else None

    def monitor(step: int, when: str) -> dict:
        """kNN / probe accuracy on the held-out split: logged, and written to log.jsonl (rank 0 only; BatchNorm in
        eval mode needs no collectives)."""
        res = _monitor(model, probe, data, cfg, device)
        if res:
            log.info("%s: %s", when, ", ".join(f"{k} accuracy {100 * v:.2f}%" for k, v in res.items()))
            if logf:
                logf.write(json.dumps({"step": step, **{f"eval/{k}": v for k, v in res.items()}}) + "\n")
                logf.flush()
        return res

    if start == 0 and info.is_main:
        metrics["knn_random_init"] = monitor(0, "at random initialisation").get("knn")

    def save(step: int) -> None:
        if not info.is_main:
            return
        state = {"step": step, "model": model.state_dict(), "method": method.state_dict(),
                 "teacher": teacher.state_dict() if teacher is not None else None,
                 "optimizer": opt.state_dict(), "scaler": prec.scaler.state_dict() if prec.scaler else None,
                 "metrics": metrics, "config": config.to_dict(cfg), "rng": _rng_state(device),
                 "lr_factor": lr_factor, "version": _version(), "probe": probe.state() if probe else None}
        checkpoint.save(ckpt_dir, step, state, cfg.checkpoint.keep)

    def on_nonfinite(step: int, loss, terms) -> int:
        """The non-finite policy at a check point; returns the step to continue from (rollback) or raises."""
        nonlocal lr_factor
        rolled = metrics.get("rollbacks", 0)
        if cfg.run.nonfinite == "rollback" and rolled < cfg.run.max_rollbacks:
            found = checkpoint.latest(ckpt_dir)
            if found is not None:
                back = restore(*found)
                lr_factor *= cfg.run.rollback_lr_factor
                sched.lr[:] = base_lr * lr_factor
                metrics["rollbacks"] = rolled + 1
                log.warning("non-finite values at or before step %d: rolled back to %s (step %d), learning rate "
                            "x %g (rollback %d of at most %d)", step + 1, found[0], back, lr_factor, rolled + 1,
                            cfg.run.max_rollbacks)
                return back
        values = ", ".join(f"{k} {float(v):.4g}" for k, v in {"loss": loss, **terms}.items())
        if cfg.run.nonfinite == "stop":
            why = "run.nonfinite=stop"
        elif rolled >= cfg.run.max_rollbacks:
            why = f"run.nonfinite=rollback: {rolled} rollbacks used (run.max_rollbacks={cfg.run.max_rollbacks})"
        else:
            why = "run.nonfinite=rollback: no checkpoint to roll back to"
        raise FloatingPointError(f"non-finite loss or gradients at or before step {step + 1} on rank {info.rank} "
                                 f"(method {cfg.method.name}; last values: {values}); {why}")

    # ---- the loop
    model.train()
    bar = info.is_main and cfg.run.progress and sys.stderr.isatty()
    knn_every = cfg.evaluate.knn_every_epochs * data.steps_per_epoch
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    skip = cfg.run.nonfinite == "skip"
    t0, seen, data_s, run_t0 = time.perf_counter(), 0, 0.0, time.perf_counter()
    step, first = start, start
    try:
        while step < total:
            td = time.perf_counter()
            views = data.views(step)
            data_s += time.perf_counter() - td
            loss, terms, finite = train_step(step, views, net, model, teacher, method, opt, sched, prec,
                                             cfg.optim.grad_clip, cfg.optim.accumulate_steps, skip, probe,
                                             data.labels(step) if probe is not None else None)
            if finite is None:  # skip policy dropped this step
                metrics["skipped_steps"] = metrics.get("skipped_steps", 0) + 1
                log.warning("step %d: non-finite loss or gradients, optimiser step skipped (run.nonfinite=skip)",
                            step + 1)
            else:
                nonfinite |= ~finite  # device-side flag: no host sync here
            seen += cfg.data.batch_size
            last = step + 1 == total
            due_log = (step + 1) % cfg.run.log_every == 0 or last
            due_ckpt = cfg.checkpoint.every_steps and (step + 1) % cfg.checkpoint.every_steps == 0 and not last
            if bar:
                rate = (step + 1 - first) / (time.perf_counter() - run_t0)
                print(f"\r{step + 1}/{total} {rate * cfg.data.batch_size:.0f} img/s "
                      f"ETA {(total - step - 1) / rate:.0f}s", end="", file=sys.stderr, flush=True)
            if (due_log or due_ckpt) and guard.nonfinite_anywhere(nonfinite):  # host sync here only
                step = on_nonfinite(step, loss, terms)
                nonfinite.zero_()
                t0, seen, data_s = time.perf_counter(), 0, 0.0
                continue
            if due_log:
                dist.heartbeat(step + 1)
                dt = time.perf_counter() - t0
                # each rank holds its share of the global loss (methods.py): the logged value is their mean
                loss, terms = dist.all_reduce_mean(loss), {k: dist.all_reduce_mean(v) for k, v in terms.items()}
                step_s = dt * cfg.data.batch_size / max(seen, 1)
                rec = {"step": step + 1, "epoch": (step + 1) / data.steps_per_epoch, "loss/total": float(loss),
                       **{f"loss/{k}": float(v) for k, v in terms.items()}, "optim/lr": float(sched.lr[step]),
                       "perf/images_per_s": seen / dt, "perf/step_ms": 1000 * step_s,
                       "data/wait_ms": 1000 * data_s * cfg.data.batch_size / max(seen, 1),
                       "perf/peak_memory_mb": _peak_memory_mb(device), "perf/eta_s": step_s * (total - step - 1)}
                if teacher is not None:
                    rec["optim/ema"] = float(sched.ema[step])
                if prec.scaler is not None:
                    rec["optim/grad_scale"] = float(prec.scaler.get_scale())
                if probe is not None:
                    rec.update(probe.read())
                if bar:
                    print(file=sys.stderr)
                log.info("step %d/%d  epoch %.2f  loss %.4f  lr %.4g  %.0f img/s  ETA %.0fs", step + 1, total,
                         rec["epoch"], rec["loss/total"], rec["optim/lr"], rec["perf/images_per_s"],
                         rec["perf/eta_s"])
                if logf:
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                if tb:
                    for k, v in rec.items():
                        if k != "step":
                            tb.add_scalar(k, v, step + 1)
                metrics["last_loss"], metrics["images_per_s"] = rec["loss/total"], rec["perf/images_per_s"]
                t0, seen, data_s = time.perf_counter(), 0, 0.0
            if knn_every and (step + 1) % knn_every == 0 and not last and info.is_main:
                monitor(step + 1, f"epoch {(step + 1) // data.steps_per_epoch}")
            if not last and preempt.should_stop(step):
                if not guard.nonfinite_anywhere(nonfinite):  # never checkpoint a poisoned state
                    save(step + 1)
                raise guard.Preempted(step + 1, preempt.signum)
            if due_ckpt:
                save(step + 1)
            step += 1

        # ---- end: evaluation, final checkpoint, summary
        if info.is_main:
            res = monitor(total, "after training")
            metrics["knn_trained"] = res.get("knn")
            if probe is not None:
                metrics["probe_trained"] = res.get("probe")
            if metrics["knn_trained"] is not None and metrics.get("knn_random_init") is not None:
                log.info("kNN accuracy after training: %+.2f pts over random initialisation",
                         100 * (metrics["knn_trained"] - metrics["knn_random_init"]))
            save(total)
            (run_dir / "summary.json").write_text(json.dumps(metrics, indent=1))
    except (RuntimeError, OSError) as e:
        if info.world > 1 and dist.is_collective_failure(e):
            raise RuntimeError(dist.failure_message(e, info, cfg.dist.timeout_s)) from e
        raise
    finally:
        data.close()
        if logf:
            logf.close()
        if tb:
            tb.close()
        dist.teardown(info)
    return metrics
