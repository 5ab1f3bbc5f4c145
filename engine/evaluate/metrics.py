"""Evaluation metrics on frozen backbone features: weighted kNN, effective rank, the few-shot bank, the offline linear
probe, and the training run's held-out monitor. Pure functions of feature tensors (and the backbone that makes them).

* kNN (Wu et al. 2018; DINO's monitor): L2-normalised features; each test sample takes its k most similar bank samples,
  which vote with weights exp(sim / T). Used by the training loop (start, end, every ``knn_every_epochs``) and by
  ``fusedssl eval knn``.
* Offline linear probe (``fusedssl eval linear``): a linear classifier on frozen features, trained with SGD, LARS or
  Adam on a cosine schedule. The "standard train augmentation" (random resized crop + flip with the run's crop scale
  and flip probability) is kept while features stay cached: ``copies`` augmented passes over the training set are
  extracted once, and epoch e trains on copy e mod copies; the validation features come from the deterministic
  evaluation view. Features are standardised with the training statistics (StandardScaler, as DirectPred's probe;
  the head exported by ``fusedssl export`` has this folded into its weights).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as data_stage

log = logging.getLogger("fusedssl")


# --------------------------------------------------------------------------------------------------- features


@torch.no_grad()
def extract(backbone: nn.Module, batches, device: torch.device, channels_last: bool, *, on_device: bool = False
            ) -> torch.Tensor:
    """Raw float32 features of an iterable of normalised (n, 3, s, s) batches, eval mode, no grad: on the CPU (for
    the cache), or left on ``device`` with ``on_device`` (the training loop's monitor: no copy back per batch)."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for x in batches:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = backbone(x).float()
        out.append(f if on_device else f.cpu())
    backbone.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def features(backbone: nn.Module, images: torch.Tensor, *, size: int, mean, std, device: torch.device,
             channels_last: bool, batch: int = 512) -> torch.Tensor:
    """Raw features of the deterministic evaluation view of in-memory uint8 images, on ``device``."""
    views = (data_stage.eval_view(images[i:i + batch].to(device), size, mean, std, channels_last)
             for i in range(0, len(images), batch))
    return extract(backbone, views, device, channels_last, on_device=True)


# --------------------------------------------------------------------------------------------------------- kNN


@torch.no_grad()
def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, *,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> float:
    """Weighted kNN top-1 accuracy in [0, 1] (features L2-normalised by the caller)."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    train_y, test_y = train_y.to(train_f.device), test_y.to(train_f.device)
    test_f = test_f.to(train_f.device)
    k = min(k, len(train_y))
    correct = 0
    for i in range(0, len(test_f), 1024):
        sim, idx = (test_f[i : i + 1024] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], torch.exp(sim / temperature))
        correct += int((votes.argmax(1) == test_y[i : i + 1024]).sum())
    return correct / len(test_y)


def effective_rank(f: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred, row-L2-normalised features (Roy & Vetterli
    2007; RankMe, Garrido et al. 2023): about 1 for a collapsed representation, up to min(N, F) for a spread one."""
    f = F.normalize(f.double() - f.double().mean(0), dim=1)
    s = torch.linalg.svdvals(f)
    p = s / s.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


def few_shot_bank(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of ``shots`` labelled samples per class (seeded): the low-label kNN protocol."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    return torch.cat(picks).sort().values


# ------------------------------------------------------------------------------------------------ linear probe


@dataclass(frozen=True)
class ProbeSettings:
    epochs: int = 100                 # passes over the training features
    batch_size: int = 256
    optimizer: str = "sgd"            # sgd (momentum 0.9, Nesterov) | lars | adam
    lr: float = 0.1                   # peak learning rate (absolute), cosine to 0 per iteration
    weight_decay: float = 0.0
    copies: int = 4                   # augmented passes of the training set extracted once (0: eval view only)
    standardize: bool = True          # features standardised with the training mean/std
    seed: int = 0


@dataclass
class LinearHead:
    """A trained probe: logits = ((f - mean) / std) @ weight.T + bias, over ``classes``."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        return ((f - self.mean) / self.std) @ self.weight.T + self.bias

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) acting on raw features: the standardisation folded in (for a torchvision ``fc``)."""
        w = self.weight / self.std
        return w, self.bias - w @ self.mean


def _accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == y[:, None]).any(1).float().mean())


def linear_probe(train_copies: list[torch.Tensor], train_y: torch.Tensor, val_f: torch.Tensor, val_y: torch.Tensor,
                 num_classes: int, s: ProbeSettings, device: torch.device) -> tuple[dict, LinearHead]:
    """Train a linear head on cached features; returns (results, head).

    ``train_copies``: one (N, F) feature matrix per augmented copy of the training set (epoch e uses copy e mod len).
    Results: top-1/top-5 after the last epoch (the number to report), the best epoch's top-1 (reported separately, as
    some papers report it), and the per-epoch validation top-1 and training loss.
    """
    from ..optim import LARS

    g = torch.Generator().manual_seed(s.seed)
    allf = torch.cat(train_copies)
    mean = allf.mean(0) if s.standardize else torch.zeros(allf.shape[1])
    std = allf.std(0).clamp_min(1e-6) if s.standardize else torch.ones(allf.shape[1])
    copies = [((c - mean) / std).to(device) for c in train_copies]
    ty, vy = train_y.to(device), val_y.to(device)
    vf = ((val_f - mean) / std).to(device)
    torch.manual_seed(s.seed)
    head = nn.Linear(allf.shape[1], num_classes).to(device)
    nn.init.zeros_(head.bias)
    nn.init.normal_(head.weight, std=0.01)
    params = [{"params": [head.weight], "weight_decay": s.weight_decay, "lars": True},
              {"params": [head.bias], "weight_decay": 0.0, "lars": False}]
    if s.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=s.lr, momentum=0.9, nesterov=True)
    elif s.optimizer == "lars":
        opt = LARS(params, lr=s.lr, momentum=0.9, eta=0.001)
    elif s.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=s.lr)
    else:
        raise ValueError(f"linear probe optimizer {s.optimizer!r} is not one of sgd, lars, adam")
    n = len(ty)
    per_epoch = max(1, math.ceil(n / s.batch_size))
    total = s.epochs * per_epoch
    curve, losses, it = [], [], 0
    for epoch in range(s.epochs):
        x = copies[epoch % len(copies)]
        order = torch.randperm(n, generator=g).to(device)
        run_loss = 0.0
        for i in range(per_epoch):
            idx = order[i * s.batch_size:(i + 1) * s.batch_size]
            for grp in opt.param_groups:
                grp["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * it / total))
            loss = F.cross_entropy(head(x[idx]), ty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += float(loss.detach()) * len(idx)
            it += 1
        with torch.no_grad():
            curve.append(_accuracy(head(vf), vy, 1))
        losses.append(run_loss / n)
    with torch.no_grad():
        logits = head(vf)
    res = {"top1": _accuracy(logits, vy, 1), "top5": _accuracy(logits, vy, 5), "best_top1": max(curve),
           "best_epoch": int(np.argmax(curve)) + 1, "val_top1_per_epoch": curve, "train_loss_per_epoch": losses,
           "settings": asdict(s)}
    out = LinearHead(head.weight.detach().cpu(), head.bias.detach().cpu(), mean, std)
    return res, out


def held_out(backbone: nn.Module, probe, data, cfg, device: torch.device) -> dict[str, float]:
    """The training run's monitor: kNN accuracy (the full bank, and 10 labelled images per class: ``knn10shot``)
    and the online probe's accuracy on the held-out split of an in-memory source (empty for other sources, or when
    neither is on)."""
    if data.test is None or not (cfg.evaluate.knn or probe is not None):
        return {}
    c = cfg.data
    tr, te = (features(backbone, s.images, size=c.image_size, mean=c.mean, std=c.std, device=device,
                       channels_last=cfg.run.channels_last) for s in (data.train, data.test))
    out = {}
    if cfg.evaluate.knn:
        trn, ten, kw = F.normalize(tr, dim=1), F.normalize(te, dim=1), {"temperature": cfg.evaluate.knn_temperature}
        out["knn"] = knn_accuracy(trn, data.train.labels, ten, data.test.labels, k=cfg.evaluate.knn_k, **kw)
        bank = few_shot_bank(data.train.labels, 10, seed=0)
        if len(bank) < len(data.train.labels):
            out["knn10shot"] = knn_accuracy(trn[bank], data.train.labels[bank], ten, data.test.labels,
                                            k=min(cfg.evaluate.knn_k, len(bank)), **kw)
    if probe is not None:
        out["probe"] = probe.accuracy(te, data.test.labels)
    return out
