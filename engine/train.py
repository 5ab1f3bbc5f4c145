"""The training loop: config -> dist -> data -> method -> model -> optim -> checkpoint -> steps -> evaluation.

Step-based, not epoch-based: the global step indexes the data (``data.views(step)``), the schedules and the checkpoint,
so resuming at step s replays exactly what an uninterrupted run would do from s. Inside the loop the host synchronises
only at the log interval (loss values and the non-finite flag are read there).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path

import torch

from . import checkpoint, config, dist, evaluate, methods, optim
from . import data as data_stage
from . import model as model_stage
from .methods import Outputs

log = logging.getLogger("fusedssl")


def _version() -> str:
    try:
        return metadata.version("fusedssl")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def train_step(step, views, net, model, teacher, method, opt, sched, amp, grad_clip):
    """One optimisation step; returns the loss and the method's terms, all still on the device."""
    optim.set_lr(opt, float(sched.lr[step]))
    x = torch.cat(views)
    n_views = len(views)
    with amp:
        _, z, p = net(x)
        t = None
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x).chunk(n_views)
        out = Outputs(z=list(z.chunk(n_views)), p=list(p.chunk(n_views)) if p is not None else None,
                      t=list(t) if t is not None else None)
    loss, terms = method(out)  # the objective ops run in fp32 outside autocast by design
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    if teacher is not None:
        teacher.update(model, float(sched.ema[step]))
    method.after_step(model, step)
    return loss.detach(), terms


def _knn(model, data, cfg, device) -> float | None:
    if not cfg.evaluate.knn or data.test is None:
        return None
    return evaluate.knn(model.backbone, data.train, data.test, cfg.evaluate, size=cfg.data.image_size,
                        mean=cfg.data.mean, std=cfg.data.std, device=device, channels_last=cfg.run.channels_last)


def main(cfg: config.Config) -> dict:
    """Run one training job; returns its summary metrics (also written to <run>/summary.json)."""
    info = dist.build(cfg.dist, cfg.run.device)
    dist.setup_logging(info)
    device = info.device
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    ckpt_dir = run_dir / "checkpoints"

    # ---- build the stages, each from its own section
    data = data_stage.build(cfg.data, seed=cfg.run.seed, rank=info.rank, world=info.world, device=device,
                            channels_last=cfg.run.channels_last)
    method = methods.build(cfg.method, backend=cfg.kernels.backend)
    methods.check_model(method, cfg.model)
    model = model_stage.build(cfg.model, predictor_required=method.predictor).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if info.world > 1 and cfg.model.sync_bn and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    teacher = model_stage.EMATeacher(model) if method.teacher else None
    total = cfg.run.steps or cfg.run.epochs * data.steps_per_epoch
    opt, sched = optim.build(cfg.optim, model, batch_size=cfg.data.batch_size, total_steps=total,
                             steps_per_epoch=data.steps_per_epoch, ema_base=cfg.method.ema_base,
                             ema_schedule=cfg.method.ema_schedule)
    net = model
    if info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True,
            broadcast_buffers=False)
    precision = cfg.run.precision if cfg.run.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    # ---- resume or start
    start, metrics = 0, {}
    if cfg.checkpoint.resume:
        found = checkpoint.latest(ckpt_dir) if cfg.checkpoint.resume == "auto" else \
            (Path(cfg.checkpoint.resume), checkpoint.load(cfg.checkpoint.resume))
        if found is not None:
            path, state = found
            saved = config.from_dict(state["config"])
            for key in ("method.name", "model.backbone", "model.stem", "model.projector", "model.predictor"):
                if config.get(saved, key) != config.get(cfg, key):
                    raise config.ConfigError(f"checkpoint {path} was trained with {key}={config.get(saved, key)!r}, "
                                             f"this run has {config.get(cfg, key)!r}")
            model.load_state_dict(state["model"])
            if teacher is not None:
                teacher.load_state_dict(state["teacher"])
            method.load_state_dict(state["method"])
            opt.load_state_dict(state["optimizer"])
            start, metrics = state["step"], state["metrics"]
            log.info("resumed from %s at step %d", path, start)
    log.info("fusedssl %s | torch %s | device %s x%d | method %s | %d steps (%d/epoch) | batch %d | %s",
             _version(), torch.__version__, device, info.world, cfg.method.name, total, data.steps_per_epoch,
             cfg.data.batch_size, precision)
    log.info("kernel backends (kernels.backend=%s): %s", cfg.kernels.backend,
             ", ".join(f"{op}={b}" for op, b in method.backends().items()))
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(cfg), indent=1))
    if start == 0 and info.is_main:
        metrics["knn_random_init"] = _knn(model, data, cfg, device)
        if metrics["knn_random_init"] is not None:
            log.info("kNN accuracy at random initialisation: %.2f%%", 100 * metrics["knn_random_init"])

    def save(step: int) -> None:
        if not info.is_main:
            return
        state = {"step": step, "model": model.state_dict(), "method": method.state_dict(),
                 "teacher": teacher.state_dict() if teacher is not None else None,
                 "optimizer": opt.state_dict(), "metrics": metrics, "config": config.to_dict(cfg),
                 "rng": torch.get_rng_state(), "version": _version()}
        checkpoint.save(ckpt_dir, step, state, cfg.checkpoint.keep)

    # ---- the loop
    model.train()
    logf = open(run_dir / "log.jsonl", "a") if info.is_main else None
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    t0, seen, data_s = time.perf_counter(), 0, 0.0
    for step in range(start, total):
        td = time.perf_counter()
        views = data.views(step)
        data_s += time.perf_counter() - td
        loss, terms = train_step(step, views, net, model, teacher, method, opt, sched, amp, cfg.optim.grad_clip)
        nonfinite |= ~torch.isfinite(loss)  # device-side flag: no host sync here
        seen += cfg.data.batch_size
        last = step + 1 == total
        if (step + 1) % cfg.run.log_every == 0 or last:
            if bool(nonfinite):  # host sync at the log interval only
                raise FloatingPointError(f"non-finite loss at or before step {step} on rank {info.rank} "
                                         f"(loss {float(loss)}, method {cfg.method.name})")
            dt = time.perf_counter() - t0
            # each rank holds its share of the global loss (methods.py): the logged value is their mean
            loss, terms = dist.all_reduce_mean(loss), {k: dist.all_reduce_mean(v) for k, v in terms.items()}
            rec = {"step": step + 1, "epoch": (step + 1) / data.steps_per_epoch, "loss/total": float(loss),
                   **{f"loss/{k}": float(v) for k, v in terms.items()}, "optim/lr": float(sched.lr[step]),
                   "perf/images_per_s": seen / dt, "perf/step_ms": 1000 * dt * cfg.data.batch_size / seen,
                   "data/wait_ms": 1000 * data_s * cfg.data.batch_size / seen}
            if teacher is not None:
                rec["optim/ema"] = float(sched.ema[step])
            log.info("step %d/%d  epoch %.2f  loss %.4f  lr %.4g  %.0f img/s", step + 1, total, rec["epoch"],
                     rec["loss/total"], rec["optim/lr"], rec["perf/images_per_s"])
            if logf:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            metrics["last_loss"], metrics["images_per_s"] = rec["loss/total"], rec["perf/images_per_s"]
            t0, seen, data_s = time.perf_counter(), 0, 0.0
        if cfg.checkpoint.every_steps and (step + 1) % cfg.checkpoint.every_steps == 0 and not last:
            save(step + 1)

    # ---- end: evaluation, final checkpoint, summary
    if info.is_main:
        metrics["knn_trained"] = _knn(model, data, cfg, device)
        if metrics["knn_trained"] is not None:
            base = metrics.get("knn_random_init")
            log.info("kNN accuracy after training: %.2f%% (random init %s)", 100 * metrics["knn_trained"],
                     "n/a" if base is None else f"{100 * base:.2f}%, {100 * (metrics['knn_trained'] - base):+.2f} pts")
        save(total)
        (run_dir / "summary.json").write_text(json.dumps(metrics, indent=1))
        logf.close()
    dist.teardown()
    return metrics
