"""Methods stage: one objective per method, composed from fusedssl.kernels ops and the dist collectives.

Each method states where its loss is computed (methods.md §13). The convention for every method: the value a rank
returns is its share of the global loss (the global loss is the mean over ranks of the returned values), and the
DDP-averaged parameter gradient equals the single-process gradient of that global loss on the global batch.

| method               | computed on                                         | objective op                          |
|----------------------|-----------------------------------------------------|---------------------------------------|
| barlow, barlow_hsic  | all-gathered batch, redundantly on every rank       | kernels.barlow_twins_loss             |
| vicreg               | invariance local; variance + covariance gathered    | kernels.vicreg_* terms                |
| frossl               | per GPU (gradient of the mean of per-GPU losses)    | kernels.frossl_loss                   |
| matrix_ssl, kernel_ssl | all-gathered, redundantly on every rank           | kernels.matrix_ssl_loss               |
| simclr               | local anchors vs all-gathered keys                  | kernels.nt_xent_loss                  |
| byol, directpred, directcopy | local per-sample mean                       | kernels.byol_loss                     |
| simsiam              | local per-sample mean                               | kernels.simsiam_loss                  |
DirectPred/DirectCopy also keep the EMA correlation F^ of the predictor inputs, averaged over ranks, and set the
predictor weight from it every ``freq`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fusedssl import kernels

from . import dist


@dataclass
class Outputs:
    """Model outputs per view: online projections z, online predictions p, teacher projections t, backbone
    features h (the online probe's input; the objectives do not read them)."""

    z: list[torch.Tensor]
    p: list[torch.Tensor] | None = None
    t: list[torch.Tensor] | None = None
    h: list[torch.Tensor] | None = None


class Method:
    name = ""
    teacher = False      # needs an EMA teacher
    predictor = False    # needs a predictor head
    gathered = False     # the objective's main cost runs on the all-gathered batch (on every rank under DDP)
    ops: tuple[str, ...] = ()  # the fusedssl.kernels ops the objective calls

    def __init__(self, params, backends: dict[str, str]):
        """``backends``: the backend of each op in ``ops``, resolved once by the caller (``kernels.resolve_all``)."""
        self.params = params
        missing = set(self.ops) - set(backends)
        if missing:
            raise ValueError(f"method {self.name}: no backend given for {sorted(missing)}")
        self._backends = dict(backends)

    def backend(self, op: str) -> str:
        return self._backends[op]

    def __call__(self, out: Outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (loss, detached terms for logging)."""
        raise NotImplementedError

    def after_step(self, model, step: int) -> None:
        """Hook after the optimiser step (DirectPred sets the predictor here)."""

    def drop_step(self) -> None:
        """The step was dropped (non-finite values, skip policy): forget any state its forward computed."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        pass


_KW = {"check_finite": False}  # the engine detects non-finite values itself; no host sync per call


class Barlow(Method):
    name = "barlow"
    gathered = True
    ops = ("barlow_twins_loss",)

    def __call__(self, out):
        p = self.params
        loss = kernels.barlow_twins_loss(dist.gather(out.z[0]), dist.gather(out.z[1]), lam=p.lam,
                                         normalize=p.normalize, off_diagonal_target=p.off_diagonal_target,
                                         backend=self.backend("barlow_twins_loss"), **_KW)
        return loss, {}


class BarlowHSIC(Barlow):
    name = "barlow_hsic"


class VICReg(Method):
    name = "vicreg"
    gathered = True
    ops = ("vicreg_invariance", "vicreg_variance", "vicreg_covariance")

    def __call__(self, out):
        p = self.params
        inv = kernels.vicreg_invariance(out.z[0], out.z[1], backend=self.backend("vicreg_invariance"), **_KW)
        za, zb = dist.gather(out.z[0]), dist.gather(out.z[1])
        bv, bc = self.backend("vicreg_variance"), self.backend("vicreg_covariance")
        var = 0.5 * (kernels.vicreg_variance(za, eps=p.eps, backend=bv, **_KW)
                     + kernels.vicreg_variance(zb, eps=p.eps, backend=bv, **_KW))
        cov = kernels.vicreg_covariance(za, backend=bc, **_KW) + kernels.vicreg_covariance(zb, backend=bc, **_KW)
        loss = p.sim_coeff * inv + p.std_coeff * var + p.cov_coeff * cov
        return loss, {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}


class FroSSL(Method):
    name = "frossl"
    ops = ("frossl_loss",)

    def __call__(self, out):
        views = [dist.gather(z) for z in out.z] if self.params.gather else out.z
        loss = kernels.frossl_loss(views, invariance_weight=self.params.invariance_weight,
                                   variant=self.params.variant, backend=self.backend("frossl_loss"), **_KW)
        return loss, {}


class MatrixSSL(Method):
    name = "matrix_ssl"
    gathered = True
    teacher = predictor = True
    ops = ("matrix_ssl_loss",)

    def __call__(self, out):
        p = self.params
        o1, o2 = dist.gather(out.p[0]), dist.gather(out.p[1])
        t1, t2 = dist.gather(out.t[0]), dist.gather(out.t[1])
        loss = kernels.matrix_ssl_loss(o1, o2, t1, t2, lam=p.lam, mu=p.mu, gamma=p.gamma, order=p.order,
                                       exact=p.exact, hsic_weight=p.hsic_weight,
                                       backend=self.backend("matrix_ssl_loss"), **_KW)
        return loss, {}


class KernelSSL(MatrixSSL):
    name = "kernel_ssl"


class SimCLR(Method):
    name = "simclr"
    ops = ("nt_xent_loss",)

    def __call__(self, out):
        za, zb = out.z
        keys_a, keys_b = dist.gather(za), dist.gather(zb)
        loss = kernels.nt_xent_loss(za, zb, temperature=self.params.temperature, keys_a=keys_a, keys_b=keys_b,
                                    offset=dist.rank() * za.shape[0], backend=self.backend("nt_xent_loss"), **_KW)
        return loss, {}


class BYOL(Method):
    name = "byol"
    teacher = predictor = True
    ops = ("byol_loss",)

    def __call__(self, out):
        return kernels.byol_loss(out.p[0], out.p[1], out.t[0], out.t[1], backend=self.backend("byol_loss"), **_KW), {}


class SimSiam(Method):
    name = "simsiam"
    predictor = True
    ops = ("simsiam_loss",)

    def __call__(self, out):
        return kernels.simsiam_loss(out.p[0], out.p[1], out.z[0], out.z[1], backend=self.backend("simsiam_loss"),
                                    **_KW), {}


class DirectPred(BYOL):
    """BYOL loss with the linear predictor set from the EMA correlation of its inputs (methods.md §6).

    The step's F^ update is held as pending until ``after_step``: a step that the skip policy drops (non-finite
    values) must not leave its F^ behind, or one bad batch would poison the predictor for the rest of the run. With
    gradient accumulation each micro-batch advances the pending F^ (one EMA step per micro-batch, as it sees one SSL
    batch each)."""

    name = "directpred"
    mode = "directpred"
    ops = ("byol_loss", "correlation_ema", "predictor_weight")

    def __init__(self, params, backends):
        super().__init__(params, backends)
        self.corr: torch.Tensor | None = None
        self.basis: torch.Tensor | None = None  # F^'s eigenvectors at the last reset: the cuda kernel's warm start
        self._pending: torch.Tensor | None = None

    def __call__(self, out):
        f = torch.cat([z.detach() for z in out.z])
        prev = self._pending if self._pending is not None else self.corr
        corr = kernels.correlation_ema(f, prev, rho=self.params.rho, check_finite=False)
        self._pending = dist.all_reduce_mean(corr)  # identical F^ on every rank, as DDP's replicas require
        return super().__call__(out)

    def drop_step(self) -> None:
        self._pending = None

    def after_step(self, model, step):
        if self._pending is not None:
            self.corr, self._pending = self._pending, None
        if self.corr is None or step % self.params.freq:
            return
        weight, self.basis = kernels.predictor_weight(
            self.corr, mode=self.mode, eps=self.params.eps, convert=self.params.convert, basis=self.basis,
            return_basis=True, backend=self.backend("predictor_weight"), check_finite=False)
        layer = model.predictor[0]
        with torch.no_grad():
            layer.weight.copy_(weight.to(layer.weight.dtype))

    def state_dict(self):
        return {"corr": self.corr, "basis": self.basis}

    def load_state_dict(self, state, device: torch.device | None = None):
        """Checkpoints are read onto the CPU; ``device`` is the run's, where the next step computes with F^."""
        self.corr, self.basis, self._pending = state["corr"], state["basis"], None
        if device is not None:
            self.corr = None if self.corr is None else self.corr.to(device)
            self.basis = None if self.basis is None else self.basis.to(device)


class DirectCopy(DirectPred):
    name = "directcopy"
    mode = "directcopy"


METHODS: dict[str, type[Method]] = {m.name: m for m in (Barlow, BarlowHSIC, VICReg, FroSSL, MatrixSSL, KernelSSL,
                                                       SimCLR, BYOL, SimSiam, DirectPred, DirectCopy)}


def build(cfg, *, backends: dict[str, str] | str) -> Method:
    """The objective of ``method.name`` with its parameter section (``method.<name>``); ``backends`` maps each of
    its ops to the backend that serves it (a single name: every op on that backend, as tests and scripts use it)."""
    cls = METHODS[cfg.name]
    params = getattr(cfg, cfg.name, None)
    if isinstance(backends, str):
        backends = {op: backends for op in cls.ops}
    return cls(params, backends)


def check_model(method: Method, model_cfg) -> None:
    """Combinations a method rules out, named by config key (raised before any work is done)."""
    from .config import ConfigError, widths

    pred = widths(model_cfg.predictor)
    if method.predictor and not pred:
        raise ConfigError(f"method.name={method.name} needs a predictor: set model.predictor")
    if not method.predictor and pred:
        raise ConfigError(f"method.name={method.name} has no predictor: set model.predictor to ''")
    if isinstance(method, DirectPred):
        proj = widths(model_cfg.projector)[-1]
        if pred != [proj] or model_cfg.predictor_bias:
            raise ConfigError(f"method.name={method.name} sets a linear {proj}x{proj} predictor directly: "
                              f"set model.predictor='{proj}' and model.predictor_bias=false")
