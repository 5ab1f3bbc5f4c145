"""Optimiser stage: parameter groups, SGD / LARS / AdamW, and per-step schedule arrays (lr, EMA momentum).

Parameters with ndim == 1 (biases, BatchNorm weights; torchvision's ``downsample.1`` included) get no weight decay and,
under LARS, no trust-ratio adaptation: excluded by ndim, never by name (a name filter misses ``downsample.1``).
LARS here is a multi-tensor update with no host synchronisation: the trust ratios are computed on the device with
``torch.where`` for all tensors at once (solo-learn's LARS syncs per parameter with a Python ``if`` on GPU norms).
Barlow Twins gives biases and norm parameters their own lr (0.0048 vs 0.2 per 256 images): ``bias_lr_ratio``.
The predictor can learn faster than the rest (``predictor_lr_ratio``; DirectPred's analysis, Tian et al. 2021) and
keep its peak lr after warm-up (``predictor_lr_schedule=constant``, SimSiam's fixed predictor lr, Chen & He 2021).
Schedules are arrays indexed by the global step (DINO style): linear warm-up from 0, then cosine to
``min_lr_ratio`` x peak; the EMA momentum follows 1 - (1 - base)(1 + cos(pi k / K)) / 2 (BYOL / Matrix-SSL).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from fusedssl import kernels


class Precision:
    """Autocast context and (fp16 only) the gradient scaler for ``run.precision``, and the GPU's numeric switches:
    TF32 for fp32 matmuls only when ``run.matmul_tf32`` asks for it (the objectives' GEMMs follow it; torch's default
    is IEEE), cuDNN's per-shape algorithm search (``run.cudnn_benchmark``: SSL shapes are static, so it is timed once).
    cuDNN's own TF32 default for fp32 convolutions is left as torch sets it."""

    def __init__(self, name: str, device: torch.device, *, matmul_tf32: bool = False, cudnn_benchmark: bool = True):
        self.name = name if name != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)
        self.device_type = device.type
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None
        if device.type == "cuda":
            if matmul_tf32:  # only set when asked: a set newer API makes legacy allow_tf32 reads raise elsewhere
                torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.benchmark = cudnn_benchmark

    def describe(self) -> str:
        """The run header's line: autocast dtype, scaler, and on GPUs the matmul/cuDNN switches in force."""
        text = f"{self.name}{' autocast' if self.dtype else ''}{' with a grad scaler' if self.scaler else ''}"
        if self.device_type == "cuda":
            conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", "tf32")
            text += (f"; fp32 matmuls {'tf32' if kernels.tf32_enabled() else 'ieee'} (run.matmul_tf32); cuDNN fp32 "
                     f"convolutions {conv}, cudnn.benchmark {'on' if torch.backends.cudnn.benchmark else 'off'}")
        return text

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
            self.scaler.step(opt)  # reads the device (its skip decision): one sync per step, fp16 only
            self.scaler.update()
        else:
            opt.step()


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio eta * ||w|| / ||g + wd w|| for groups with ``lars=True``."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001,
                 backend: str = "auto"):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))
        self.backend = backend  # fusedssl.kernels.lars_step_: "torch" (foreach) or "cuda" (csrc/optim.cu)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            kernels.lars_step_(params, [p.grad for p in params], bufs, lr=group["lr"], momentum=group["momentum"],
                               weight_decay=group["weight_decay"], eta=group["eta"], adapt=group["lars"],
                               backend=self.backend)


def param_groups(model: torch.nn.Module, weight_decay: float, bias_lr_ratio: float = 1.0,
                 predictor_lr_ratio: float = 1.0, predictor_constant: bool = False) -> list[dict]:
    """Weights (ndim >= 2: decay, LARS) and biases/norms (no decay, no LARS, lr x ``bias_lr_ratio``); the
    predictor's (``model.predictor``, if any) in groups of their own with lr x ``predictor_lr_ratio``, held at the peak
    lr after warm-up if ``predictor_constant`` (``set_lr``'s ``peak``). Groups left empty are dropped."""
    pred = {id(p) for p in model.predictor.parameters()} if getattr(model, "predictor", None) is not None else set()
    groups = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in pred, p.ndim <= 1), []).append(p)
    out = []
    for (is_pred, is_norm), params in sorted(groups.items()):
        scale = (bias_lr_ratio if is_norm else 1.0) * (predictor_lr_ratio if is_pred else 1.0)
        out.append({"params": params, "weight_decay": 0.0 if is_norm else weight_decay, "lars": not is_norm,
                    "lr_scale": scale, "constant": is_pred and predictor_constant})
    return out


@dataclass
class Schedules:
    lr: np.ndarray          # per step
    ema: np.ndarray         # per step (teacher momentum tau)


def schedules(cfg, resolved, *, ema_base: float, ema_schedule: str) -> Schedules:
    """Per-step lr (warm-up from 0, cosine to ``min_lr_ratio`` x peak) and EMA momentum for ``resolved`` (a
    config.Resolved: the peak lr, total and warm-up steps)."""
    peak_lr, total_steps, warm = resolved.peak_lr, resolved.total_steps, resolved.warmup_steps
    lr = np.empty(total_steps)
    lr[:warm] = peak_lr * np.arange(warm) / max(warm, 1)
    rest = total_steps - warm
    floor = cfg.min_lr_ratio * peak_lr
    k = np.arange(rest)
    lr[warm:] = floor + (peak_lr - floor) * 0.5 * (1 + np.cos(np.pi * k / max(rest, 1)))
    k = np.arange(total_steps)
    if ema_schedule == "cosine":
        ema = 1 - (1 - ema_base) * (np.cos(np.pi * k / max(total_steps, 1)) + 1) / 2
    else:
        ema = np.full(total_steps, ema_base)
    return Schedules(lr=lr, ema=ema)


def build(cfg, model: torch.nn.Module, resolved, *, ema_base: float, ema_schedule: str, lars_backend: str = "torch"
          ) -> tuple[torch.optim.Optimizer, Schedules]:
    """Optimiser and schedules from the ``optim`` section and the run's config.Resolved (peak lr, lengths).
    ``lars_backend``: the resolved backend of ``kernels.lars_step_`` (train.build_stages)."""
    peak = resolved.peak_lr
    groups = param_groups(model, cfg.weight_decay, cfg.bias_lr_ratio, cfg.predictor_lr_ratio,
                          cfg.predictor_lr_schedule == "constant")
    if cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=peak, momentum=cfg.momentum, foreach=True)
    elif cfg.name == "lars":
        opt = LARS(groups, lr=peak, momentum=cfg.momentum, eta=cfg.lars_eta, backend=lars_backend)
    else:
        opt = torch.optim.AdamW(groups, lr=peak, foreach=True)
    sched = schedules(cfg, resolved, ema_base=ema_base, ema_schedule=ema_schedule)
    return opt, sched


def set_lr(opt: torch.optim.Optimizer, lr: float, peak: float | None = None) -> None:
    """Every group's lr: ``lr`` x its scale, or ``peak`` x its scale for a group kept constant (when ``peak`` is
    given: the run's peak lr times the non-finite policy's factor)."""
    for g in opt.param_groups:
        base = peak if g.get("constant") and peak is not None else lr
        g["lr"] = base * g.get("lr_scale", 1.0)
