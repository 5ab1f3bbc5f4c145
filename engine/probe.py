"""The online linear probe (``evaluate.online_probe``): a linear head on the detached backbone features of the first
view, with its own SGD, updated every training step. Its running accuracy and loss sit on the device and are read at
the log interval only (no extra host sync). Under DDP its gradient is averaged over ranks in one flat all-reduce, so W
ranks equal one process here too, and it is checkpointed with the run (exact resume).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import dist


class OnlineProbe(nn.Module):
    """Linear head on detached backbone features with its own SGD; metrics accumulate on the device."""

    def __init__(self, feat_dim: int, num_classes: int, lr: float, device: torch.device):
        super().__init__()
        self.head = nn.Linear(feat_dim, num_classes).to(device)
        self.opt = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=0.9)
        self.register_buffer("_sums", torch.zeros(2, device=device))  # correct, loss * n (on the device)
        self._seen = 0  # samples since the last read, counted on the host (no per-step copy to the device)

    def step(self, h: torch.Tensor, y: torch.Tensor) -> None:
        logits = self.head(h.detach().float())
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if dist.world_size() > 1:  # average over ranks in one flat collective: W ranks == one process
            grads = [p.grad for p in self.head.parameters()]
            flat = dist.all_reduce_mean(torch.cat([g.flatten() for g in grads]))
            for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(part.view_as(g))
        self.opt.step()
        with torch.no_grad():
            self._sums += torch.stack([(logits.argmax(1) == y).sum().float(), loss.detach() * len(y)])
        self._seen += len(y)

    def read(self) -> dict[str, float]:
        """Running accuracy and loss since the last read (one host sync: call at the log interval)."""
        s = dist.all_reduce_mean(self._sums) * dist.world_size()
        seen = self._seen * dist.world_size()  # every rank steps on the same number of samples
        out = {} if seen == 0 else {"probe/train_acc": float(s[0]) / seen, "probe/loss": float(s[1]) / seen}
        self._sums.zero_()
        self._seen = 0
        return out

    @torch.no_grad()
    def accuracy(self, f: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.head(f.to(self.head.weight.device)).argmax(1) == y.to(self.head.weight.device))
                     .float().mean())

    def state(self) -> dict:
        """A copy (optimizer state_dicts alias the live momentum buffers, and loading does not copy them)."""
        return copy.deepcopy({"head": self.head.state_dict(), "opt": self.opt.state_dict(), "sums": self._sums,
                              "seen": self._seen})

    def load(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["opt"])
        self._sums.copy_(state["sums"])
        self._seen = state["seen"]
