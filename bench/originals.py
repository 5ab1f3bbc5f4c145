"""Straightforward formulations of each objective as the reference repositories write them (methods.md §2-§10).

The second references of the tests and the "original code" provider of the benchmarks: dense D x D matrices, a dense
centring matrix J built on every call, explicit matrix powers, Python loops. They are written from the spec's
description of the code, not copied. The efficient references in fusedssl.kernels must equal them (tests/), and are
measured against them (bench/). Not part of the public op list.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    return c[~torch.eye(c.shape[0], dtype=torch.bool, device=c.device)]


def bn(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.batch_norm(z, None, None, training=True, eps=eps)


def barlow_twins(za, zb, lam=0.0051):
    """facebookresearch/barlowtwins main.py: BN(affine=False), c = za'zb / N, on-diag + lam * off-diag."""
    c = bn(za).T @ bn(zb) / za.shape[0]
    return (torch.diagonal(c) - 1).pow(2).sum() + lam * off_diagonal(c).pow(2).sum()


def barlow_twins_hsic_tsai(za, zb, lam=1 / 128):
    """yaohungt/Barlow-Twins-HSIC main.py --corr_neg_one: rowL2, then (z - mean)/std (unbiased), target -1 off-diag."""
    def norm(z):
        z = F.normalize(z, dim=1)
        return (z - z.mean(0)) / z.std(0)
    c = norm(za).T @ norm(zb) / za.shape[0]
    return (torch.diagonal(c) - 1).pow(2).sum() + lam * (off_diagonal(c) + 1).pow(2).sum()


def vicreg(x, y, sim=25.0, std=25.0, cov=1.0):
    """facebookresearch/vicreg main_vicreg.py (single process)."""
    n, d = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(0)
    y = y - y.mean(0)
    std_x = torch.sqrt(x.var(0) + 1e-4)
    std_y = torch.sqrt(y.var(0) + 1e-4)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = x.T @ x / (n - 1)
    cov_y = y.T @ y / (n - 1)
    cov_loss = off_diagonal(cov_x).pow(2).sum() / d + off_diagonal(cov_y).pow(2).sum() / d
    return sim * repr_loss + std * std_loss + cov * cov_loss


def frossl_multiview(views, w=1.0):
    """FroSSL multiview at HEAD 4942ce5: colL2, smaller kernel / trace, -(-2 log ||K||_F) + V D w mse(z, mean)."""
    n, d = views[0].shape
    zs = [F.normalize(z, dim=0) for z in views]
    avg = torch.stack(zs).mean(0)
    total = 0.0
    for z in zs:
        k = z.T @ z if n > d else z @ z.T
        k = k / torch.trace(k).detach()
        total = total + 2 * torch.log(torch.linalg.norm(k, ord="fro"))
        total = total + len(views) * d * w * F.mse_loss(z, avg)
    return total


def frossl_legacy(za, zb, w=1.0):
    """FroSSL two-view frossl_loss_func at HEAD: standardise, scale columns to norm sqrt(D), kernel / trace."""
    n, d = za.shape
    def norm(z):
        z = (z - z.mean(0)) / z.std(0)
        return d ** 0.5 * z / torch.norm(z, dim=0)
    za, zb = norm(za), norm(zb)
    total = w * F.mse_loss(za, zb)
    for z in (za, zb):
        k = z.T @ z if n > d else z @ z.T
        k = k / torch.trace(k).detach()
        total = total + 2 * torch.log(torch.linalg.norm(k, ord="fro"))
    return total


def _log_series(q, order):
    """Matrix-SSL's matrix_log: sum_k (-1)^(k+1)/k (Q - I)^k with explicit matrix powers."""
    eye = torch.eye(q.shape[0], dtype=q.dtype, device=q.device)
    x = q - eye
    out, power = torch.zeros_like(q), eye
    for k in range(1, order + 1):
        power = power @ x
        out = out + (-1) ** (k + 1) / k * power
    return out


def matrix_ssl(o1, o2, t1, t2, lam=1.0, mu=1.0, gamma=1.0, order=4, hsic_a=0.0):
    """yifanzhang-pro/Matrix-SSL main_pretrain.py: dense J, matrix powers; with hsic_a > 0 the --HSIC term of bf80b2e
    is added to each of the four calls (tr(TT'J OO'J) / m^2 as an m x m chain)."""
    def call(t, o, alignment):
        m, d = o.shape
        t, o = F.normalize(t.detach(), dim=1), F.normalize(o, dim=1)
        j = torch.eye(m, dtype=o.dtype, device=o.device) - torch.ones(m, m, dtype=o.dtype, device=o.device) / m
        eye = torch.eye(d, dtype=o.dtype, device=o.device)
        if alignment:
            ct = t.T @ j @ t / m
            co = o.T @ j @ o / m
            val = -torch.trace((ct + mu * eye) @ _log_series(co + mu * eye, order))
        else:
            cx = t.T @ j @ o / m
            val = -lam * torch.trace(_log_series(cx + mu * eye, order))
        if hsic_a:
            val = val - hsic_a * torch.trace(t @ t.T @ j @ o @ o.T @ j) / m**2
        return val
    return 0.5 * (call(t2, o1, False) + call(t1, o2, False)) + gamma / 2 * (call(t2, o1, True) + call(t1, o2, True))


def nt_xent(za, zb, tau):
    """SimCLR NT-Xent as a Python loop over the 2N anchors (mean)."""
    z = F.normalize(torch.cat([za, zb]), dim=1)
    n = za.shape[0]
    s = z @ z.T / tau
    losses = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        others = torch.cat([s[i, :i], s[i, i + 1:]])
        losses.append(-s[i, pos] + torch.logsumexp(others, 0))
    return torch.stack(losses).mean()


def directpred_weight(corr, eps=0.01, convert=2.0):
    """luckmatters byol_trainer.py, predictor_reg='corr', balance_type='boost_scale' (eig -> eigh)."""
    s, u = torch.linalg.eigh(corr)
    s = s.clamp(min=0)
    s = s / s.max()
    p = (s.pow(1 / convert) + eps).clamp(min=1e-4)
    return u @ torch.diag(p) @ u.T
