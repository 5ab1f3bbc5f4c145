"""Evaluation stage: weighted kNN accuracy of frozen backbone features (Wu et al. 2018; DINO's monitor).

Features of the deterministic evaluation view are L2-normalised; each test sample takes its k most similar training
samples and votes with weights exp(sim / T). Used at the start of a run (the network at random initialisation: the
baseline) and at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import data as data_stage


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor, *, size: int, mean, std, device: torch.device,
             channels_last: bool, batch: int = 512) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    out = []
    for i in range(0, len(images), batch):
        x = data_stage.eval_view(images[i : i + batch].to(device), size, mean, std, channels_last)
        out.append(F.normalize(backbone(x).float(), dim=1))
    backbone.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, *,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> float:
    """Weighted kNN top-1 accuracy in [0, 1]."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    train_y, test_y = train_y.to(train_f.device), test_y.to(train_f.device)
    k = min(k, len(train_y))
    correct = 0
    for i in range(0, len(test_f), 1024):
        sim, idx = (test_f[i : i + 1024] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], torch.exp(sim / temperature))
        correct += int((votes.argmax(1) == test_y[i : i + 1024]).sum())
    return correct / len(test_y)


def knn(backbone, split_train, split_test, cfg, *, size: int, mean, std, device, channels_last: bool) -> float:
    """kNN accuracy of ``backbone`` with the ``evaluate`` section's k and temperature."""
    tr = features(backbone, split_train.images, size=size, mean=mean, std=std, device=device,
                  channels_last=channels_last)
    te = features(backbone, split_test.images, size=size, mean=mean, std=std, device=device,
                  channels_last=channels_last)
    return knn_accuracy(tr, split_train.labels, te, split_test.labels, k=cfg.knn_k, temperature=cfg.knn_temperature)
