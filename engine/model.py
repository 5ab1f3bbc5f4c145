"""Model stage: torchvision backbone, projector and predictor from width strings, and the EMA teacher.

The online network is backbone -> projector (-> predictor). Hidden MLP layers are Linear-BN-ReLU; the projector's last
layer is a Linear, optionally followed by BatchNorm(affine=False) (SimSiam / Matrix-SSL); the predictor's last layer
is a Linear. A predictor spec with a single width is one Linear layer (DirectPred's linear predictor, no bias).
The EMA teacher is a frozen copy of backbone + projector updated with ``kernels.ema_`` (one multi-tensor update for all
tensors, no per-parameter Python loop).

Under DDP every BatchNorm normalises with global-batch statistics (``sync_batchnorm``): torch's SyncBatchNorm on GPUs
(``model.sync_bn_impl=torch``), or ``GlobalBatchNorm``, which all-reduces the per-channel sums with an autograd-aware
all-reduce (on CPU, where SyncBatchNorm does not run, and on GPUs with ``sync_bn_impl=global``: SyncBatchNorm reads a
count mask on the host in every layer's forward, GlobalBatchNorm never syncs). So W ranks train exactly the model one
process trains on the global batch.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from fusedssl import kernels

from .config import widths
from .dist import all_reduce_sum


def _backbone(name: str, stem: str, zero_init_residual: bool) -> tuple[nn.Module, int]:
    net = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
    dim = net.fc.in_features
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, dim


def mlp(in_dim: int, spec: list[int], *, bias: bool = True, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU hidden layers then a Linear (+ BN(affine=False) if ``last_bn``)."""
    layers: list[nn.Module] = []
    d = in_dim
    for width in spec[:-1]:
        layers += [nn.Linear(d, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        d = width
    layers.append(nn.Linear(d, spec[-1], bias=bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(spec[-1], affine=False))
    return nn.Sequential(*layers)


class SSLModel(nn.Module):
    """backbone -> projector (-> predictor). ``forward`` returns (features, projections, predictions or None)."""

    def __init__(self, backbone: nn.Module, feat_dim: int, projector: nn.Module, predictor: nn.Module | None):
        super().__init__()
        self.backbone, self.feat_dim = backbone, feat_dim
        self.projector, self.predictor = projector, predictor

    def forward(self, x: torch.Tensor):
        h = self.backbone(x)
        z = self.projector(h)
        p = self.predictor(z) if self.predictor is not None else None
        return h, z, p


def build(cfg, *, predictor_required: bool) -> SSLModel:
    """Build the online network from the ``model`` config section.

    Args:
        cfg: the ``model`` section.
        predictor_required: whether the method needs a predictor (methods.build says so).
    """
    backbone, feat_dim = _backbone(cfg.backbone, cfg.stem, cfg.zero_init_residual)
    proj = widths(cfg.projector)
    projector = mlp(feat_dim, proj, bias=cfg.projector_bias, last_bn=cfg.projector_last_bn)
    pred = widths(cfg.predictor)
    if predictor_required and not pred:
        raise ValueError("this method needs a predictor: set model.predictor "
                         "(e.g. '512-128', or '128' for a linear one)")
    predictor = mlp(proj[-1], pred, bias=cfg.predictor_bias) if pred else None
    return SSLModel(backbone, feat_dim, projector, predictor)


class EMATeacher(nn.Module):
    """Frozen EMA copy of backbone + projector: teacher <- tau * teacher + (1 - tau) * online."""

    def __init__(self, online: SSLModel, backend: str = "torch"):
        """``backend``: the resolved backend of ``kernels.ema_`` (train.build_stages)."""
        super().__init__()
        self.backbone = copy.deepcopy(online.backbone)
        self.projector = copy.deepcopy(online.projector)
        self.backend = backend
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def update(self, online: SSLModel, tau: float) -> None:
        mine = list(self.backbone.parameters()) + list(self.projector.parameters())
        theirs = list(online.backbone.parameters()) + list(online.projector.parameters())
        kernels.ema_(mine, theirs, tau, backend=self.backend)  # one multi-tensor update (foreach or csrc/optim.cu)
        # BN running statistics follow the online network (they are not trained parameters): one foreach copy
        torch._foreach_copy_(list(self.backbone.buffers()) + list(self.projector.buffers()),
                             list(online.backbone.buffers()) + list(online.projector.buffers()))


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with statistics over the whole distributed batch, for any device and process-group backend.

    The per-channel (sum, sum of squares, count) are all-reduced in one differentiable collective (its backward
    all-reduces the gradient), so forward and backward equal BatchNorm on the concatenated batch. The variance is
    E[x^2] - E[x]^2 in fp32 from sums shifted by the running mean, which keeps it well conditioned.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        shift = self.running_mean.detach().to(torch.float32).view(shape)
        xs = x.float() - shift
        count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float32, device=x.device)
        stats = all_reduce_sum(torch.cat([xs.sum(dims), xs.pow(2).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean_s = stats[:c] / n
        var = (stats[c:2 * c] / n - mean_s * mean_s).clamp_min(0.0)
        mean = mean_s + shift.flatten()
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), m)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device, impl: str = "torch") -> nn.Module:
    """Global-batch BatchNorm for a distributed run: torch's SyncBatchNorm on CUDA with ``impl="torch"``, else
    GlobalBatchNorm (on CPU SyncBatchNorm does not run; on a GPU it avoids SyncBatchNorm's host read per layer)."""
    if device.type == "cuda" and impl == "torch":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        with torch.no_grad():
            if module.affine:
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            if module.track_running_stats:
                out.running_mean.copy_(module.running_mean)
                out.running_var.copy_(module.running_var)
                out.num_batches_tracked.copy_(module.num_batches_tracked)
    for name, child in module.named_children():
        out.add_module(name, sync_batchnorm(child, device, impl))
    return out
