"""Photometric augmentation of uint8 views: colour jitter, grayscale, Gaussian blur, solarisation, normalisation.

The CPU data pipeline's fused op (csrc/photometric.cpp, one pass per image): DALI decodes, crops, resizes and flips on
the CPU, and this op does every remaining step, writing the normalised float32 NHWC views (channels-last NCHW) the
model reads. ``photometric_augment_ref`` is the float64 reference of exactly the same function, which
``fusedssl verify`` and the tests compare the kernel against on fresh random data.

Per sample, on the 0..255 scale, in torchvision's order (methods.md §12.2):
  y = min(bright x, 255); y = clamp(contrast y + (1 - contrast) m) with m the mean ITU-R 601 luma of min(bright x, 255);
  y = clamp(M y) with M = YIQ^-1 R(hue) diag(1, s, s) YIQ (saturation s, 0 for grayscale; ``colour_matrix``) - only
  where ``colour``; separable Gaussian blur with reflect-101 borders (``gaussian_taps``); v -> 255 - v above 127.5 where
  ``solarize`` (ImageOps.solarize(128) on integers, continuous in between); out = (v / 255 - mean) / std.
Nothing is rounded between steps (DALI's operators and PIL round to uint8 after each), so the function is continuous in
its inputs and the float32 kernel agrees with float64 to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import _backend, _cuda

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights: the grayscale of every pipeline
TO_YIQ = (LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))  # RGB -> YIQ: the hue is a rotation of (I, Q)


# ----------------------------------------------------------------------------------------------------------- references


def photometric_augment_ref(x: torch.Tensor, p: PhotoParams, mean, std) -> torch.Tensor:
    """The float64 reference: uint8 (n, h, w, 3) -> float64 (n, h, w, 3), see the module note."""
    n, h, w, _ = x.shape
    v = x.double()
    b = p.bright.double().view(n, 1, 1, 1)
    c = p.contrast.double().view(n, 1, 1, 1)
    y = (v * b).clamp(max=255.0)
    luma = torch.tensor(LUMA, dtype=torch.float64)
    m = (y * luma).sum(-1).mean(dim=(1, 2)).view(n, 1, 1, 1)
    y = (c * y + (1 - c) * m).clamp(0.0, 255.0)
    y = torch.einsum("nij,nhwj->nhwi", p.matrix.double().view(n, 3, 3), y).clamp(0.0, 255.0)
    v = torch.where(p.colour.bool().view(n, 1, 1, 1), y, v)
    out = []
    for k in range(n):
        r, img = int(p.radius[k]), v[k]
        if r:
            g = p.taps[k, :2 * r + 1].double()
            cols = _reflect101(torch.arange(-r, w + r), w)
            img = sum(g[t] * img[:, cols[t:t + w]] for t in range(2 * r + 1))
            rows = _reflect101(torch.arange(-r, h + r), h)
            img = sum(g[t] * img[rows[t:t + h]] for t in range(2 * r + 1))
        out.append(img)
    v = torch.stack(out)
    v = torch.where(p.solarize.bool().view(n, 1, 1, 1) & (v > 127.5), 255.0 - v, v)
    mean_t, std_t = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return (v / 255.0 - mean_t) / std_t


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _reflect101(i: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i < n, i, period - i)


def _why_no_kernel(device: torch.device) -> str | None:
    """None if the C++ kernel can run on ``device`` (a CPU kernel: CUDA tensors are refused), else why not."""
    ext = _cuda.ext()
    if ext is None:
        return f"the C++ extension fusedssl.kernels._C is unavailable ({_cuda._IMPORT_ERROR}); build it: {_cuda.BUILD}"
    if not hasattr(ext, "photometric"):
        return f"the built fusedssl.kernels._C predates the photometric kernel; rebuild it: {_cuda.BUILD}"
    if device.type != "cpu":
        return f"the photometric kernel runs on the CPU after CPU decoding; the views are on {device.type}"
    return None


# ------------------------------------------------------------------------------------------ providers (one per backend)


@_backend.register("photometric_augment", "torch")
def photometric_augment_torch(x: torch.Tensor, p: PhotoParams, mean, std) -> torch.Tensor:
    """The reference, returned in float32 like the kernel (it computes in float64)."""
    return photometric_augment_ref(x, p, mean, std).float()


@_backend.register("photometric_augment", "cuda", why_not=_why_no_kernel, cpu_auto=True)
def photometric_augment_cpp(x: torch.Tensor, p: PhotoParams, mean, std) -> torch.Tensor:
    """The fused C++ kernel of the extension (csrc/photometric.cpp), on the CPU."""
    return _cuda.ext().photometric(x.contiguous(), p.bright, p.contrast, p.matrix, p.colour, p.taps, p.radius,
                                   p.solarize, [float(v) for v in mean], [float(v) for v in std])


# ----------------------------------------------------------------------------------------------------------- public ops


@dataclass
class PhotoParams:
    """Per-sample parameters of ``photometric_augment`` (CPU tensors, the batch first)."""

    bright: torch.Tensor    # (n,) float32, > 0
    contrast: torch.Tensor  # (n,) float32
    matrix: torch.Tensor    # (n, 9) float32: saturation, hue, grayscale (``colour_matrix``)
    colour: torch.Tensor    # (n,) uint8: 0 skips brightness, contrast and the matrix (identity jitter, no grayscale)
    taps: torch.Tensor      # (n, 2 R + 1) float32 Gaussian taps centred in the row (``gaussian_taps``)
    radius: torch.Tensor    # (n,) int32: 0 = not blurred
    solarize: torch.Tensor  # (n,) uint8


def colour_matrix(saturation: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """(n, 9) row-major 3x3 RGB matrices: chroma (I, Q of YIQ) scaled by ``saturation`` (a blend with luma; 0 is the
    grayscale) then rotated by ``hue`` turns, with the sign of DALI's ``fn.hsv``/``fn.color_twist`` hue."""
    a = -2 * np.pi * np.asarray(hue, np.float64)
    s = np.asarray(saturation, np.float64)
    n = len(a)
    rot = np.zeros((n, 3, 3))
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = s * np.cos(a), -s * np.sin(a)
    rot[:, 2, 1], rot[:, 2, 2] = s * np.sin(a), s * np.cos(a)
    yiq = np.array(TO_YIQ)
    m = np.linalg.inv(yiq) @ rot @ yiq
    return m.reshape(n, 9).astype(np.float32)


def gaussian_taps(sigma: np.ndarray, blur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised Gaussian taps of radius ceil(3 sigma) per sample, (n, 2 R + 1) with R the largest radius (each row
    centred, zero-padded), and the radii (0 where ``blur`` is false)."""
    sigma = np.asarray(sigma, np.float64)
    radius = np.where(blur, np.ceil(3 * sigma), 0).astype(np.int32)
    big = int(radius.max(initial=0))
    taps = np.zeros((len(sigma), 2 * big + 1), np.float32)
    taps[:, big] = 1.0
    for k in np.flatnonzero(radius):
        r = int(radius[k])
        g = np.exp(-np.arange(-r, r + 1, dtype=np.float64) ** 2 / (2 * sigma[k] ** 2))
        taps[k] = 0.0
        taps[k, :2 * r + 1] = g / g.sum()  # the kernel reads taps[0 .. 2 r]
    return taps, radius


def photo_params(bright, contrast, saturation, hue, gray, blur, sigma, solarize) -> PhotoParams:
    """``PhotoParams`` from per-sample jitter factors (identity: 1, 1, 1, 0), flags and blur sigmas (numpy arrays)."""
    bright, contrast = np.asarray(bright, np.float32), np.asarray(contrast, np.float32)
    saturation, hue, gray = np.asarray(saturation), np.asarray(hue), np.asarray(gray, bool)
    colour = (bright != 1) | (contrast != 1) | (saturation != 1) | (hue != 0) | gray
    taps, radius = gaussian_taps(sigma, blur)
    return PhotoParams(
        bright=torch.from_numpy(bright.copy()), contrast=torch.from_numpy(contrast.copy()),
        matrix=torch.from_numpy(colour_matrix(np.where(gray, 0.0, saturation), hue)),
        colour=torch.from_numpy(colour.astype(np.uint8)), taps=torch.from_numpy(taps),
        radius=torch.from_numpy(radius), solarize=torch.from_numpy(np.asarray(solarize, np.uint8)))



def photometric_augment(x: torch.Tensor, p: PhotoParams, mean, std, *, backend: str = "auto") -> torch.Tensor:
    """Normalised float32 (n, h, w, 3) views from uint8 (n, h, w, 3) ``x`` on the CPU (see the module note).

    ``backend``: "cuda" the extension's fused C++ kernel (an error saying why where it is not built), "torch" the
    reference in float32, "auto" the kernel where it is built.
    """
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3 or x.device.type != "cpu":
        raise ValueError(f"x: expected uint8 (n, h, w, 3) on the CPU, got {x.dtype} {tuple(x.shape)} on {x.device}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean, std: expected 3 values each, got {len(mean)} and {len(std)}")
    return _backend.dispatch("photometric_augment", backend, x.device)(x, p, mean, std)
