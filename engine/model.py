"""Model stage: torchvision backbone, projector and predictor from width strings, and the EMA teacher.

The online network is backbone -> projector (-> predictor). Hidden MLP layers are Linear-BN-ReLU; the projector's last
layer is a Linear, optionally followed by BatchNorm(affine=False) (SimSiam / Matrix-SSL); the predictor's last layer
is a Linear. A predictor spec with a single width is one Linear layer (DirectPred's linear predictor, no bias).
The EMA teacher is a frozen copy of backbone + projector updated with ``torch._foreach_lerp_`` (one fused update for all
tensors, no per-parameter Python loop).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torchvision

from .config import widths


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

    def __init__(self, online: SSLModel):
        super().__init__()
        self.backbone = copy.deepcopy(online.backbone)
        self.projector = copy.deepcopy(online.projector)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def update(self, online: SSLModel, tau: float) -> None:
        mine = list(self.backbone.parameters()) + list(self.projector.parameters())
        theirs = list(online.backbone.parameters()) + list(online.projector.parameters())
        torch._foreach_lerp_(mine, theirs, 1.0 - tau)
        # BN running statistics follow the online network (they are not trained parameters).
        for b_mine, b_theirs in zip(list(self.backbone.buffers()) + list(self.projector.buffers()),
                                    list(online.backbone.buffers()) + list(online.projector.buffers())):
            b_mine.copy_(b_theirs)
