"""The fused photometric kernel (csrc/photometric.cpp) against its float64 reference, and the reference's semantics.

The kernel is checked on fresh random images and parameters at shapes that reach every code path: rows that are not a
multiple of the 24-value vector pattern, blur windows wider than the image (repeated reflection), 1-pixel images,
saturating brightness, grayscale and solarisation. The reference itself is checked against what each step means
(identity, grayscale, solarisation of integers, blur of a constant, contrast 0, PIL's hue rotation).
"""

import numpy as np
import pytest
import torch
from conftest import FLOAT32_VS_FLOAT64
from fusedssl import kernels
from fusedssl.bench.verify import random_photo_params
from fusedssl.engine.data import fallback
from fusedssl.kernels import photometric as photo
from PIL import Image, ImageOps

WHY = kernels.why_not("photometric_augment", "cuda", torch.device("cpu"))
needs_kernel = pytest.mark.skipif(WHY is not None, reason=str(WHY))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IDENTITY = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # out on the 0..255 scale


@needs_kernel
@pytest.mark.parametrize("shape", [(6, 32, 32), (5, 17, 23), (3, 1, 1), (4, 2, 9), (3, 40, 5), (2, 64, 57)])
def test_kernel_matches_the_float64_reference(shape):
    seed = int(torch.randint(2**31, ()))  # fresh data every run; the seed is printed on failure
    gen = torch.Generator().manual_seed(seed)
    n, h, w = shape
    x = torch.randint(0, 256, (n, h, w, 3), generator=gen, dtype=torch.uint8)
    x[0] = 255  # a saturated image: brightness clamps everywhere
    p = random_photo_params(gen, n, max_sigma=max(h, w) / 2)  # windows up to several times the image
    ref = photo.photometric_augment_ref(x, p, MEAN, STD)
    out = photo.photometric_augment(x, p, MEAN, STD, backend="cuda")
    assert out.dtype == torch.float32 and out.shape == x.shape
    err = (out.double() - ref).abs().max().item()
    assert err < FLOAT32_VS_FLOAT64 * ref.abs().max().item(), (seed, err)


@needs_kernel
def test_kernel_at_training_size_and_identity():
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (4, 224, 224, 3), generator=gen, dtype=torch.uint8)
    p = random_photo_params(gen, 4, max_sigma=2.0)
    ref = photo.photometric_augment_ref(x, p, MEAN, STD)
    assert (photo.photometric_augment(x, p, MEAN, STD).double() - ref).abs().max() < FLOAT32_VS_FLOAT64
    ident = photo.photo_params(np.ones(4), np.ones(4), np.ones(4), np.zeros(4), np.zeros(4, bool), np.zeros(4, bool),
                         np.ones(4), np.zeros(4, bool))
    assert not ident.colour.any() and not ident.radius.any()
    assert torch.equal(photo.photometric_augment(x, ident, *IDENTITY), x.float())  # every step skipped: exact


def test_reference_steps_mean_what_they_say():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.integers(0, 256, (4, 12, 10, 3), dtype=np.uint8))
    ones, zeros, no = np.ones(4), np.zeros(4), np.zeros(4, bool)
    gray = photo.photometric_augment_ref(x, photo.photo_params(ones, ones, ones, zeros, ~no, no, ones, no), *IDENTITY)
    luma = (x.double() * torch.tensor(photo.LUMA, dtype=torch.float64)).sum(-1, keepdim=True)
    assert torch.allclose(gray, luma.expand_as(gray), atol=1e-9)  # grayscale = ITU-R 601 luma in every channel
    flat = photo.photometric_augment_ref(x, photo.photo_params(ones, zeros, ones, zeros, no, no, ones, no), *IDENTITY)
    assert torch.allclose(flat, luma.mean(dim=(1, 2, 3), keepdim=True).expand_as(flat), atol=1e-9)  # contrast 0
    sol = photo.photometric_augment_ref(x, photo.photo_params(ones, ones, ones, zeros, no, no, ones, ~no), *IDENTITY)
    pil = np.stack([np.asarray(ImageOps.solarize(Image.fromarray(a), 128)) for a in x.numpy()])
    assert torch.equal(sol, torch.from_numpy(pil).double())
    const = torch.full((4, 12, 10, 3), 77, dtype=torch.uint8)
    blur = photo.photo_params(ones, ones, ones, zeros, no, ~no, 4 * ones, no)
    blurred = photo.photometric_augment_ref(const, blur, *IDENTITY)
    assert torch.allclose(blurred, const.double(), atol=1e-9)
    normed = photo.photometric_augment_ref(x, photo.photo_params(ones, ones, ones, zeros, no, no, ones, no), MEAN, STD)
    assert torch.allclose(normed, (x.double() / 255 - torch.tensor(MEAN)) / torch.tensor(STD), atol=1e-6)


def test_colour_matrix_is_the_fallback_hue_rotation_and_saturation():
    m = photo.colour_matrix(np.array([1.0, 0.0, 0.5]), np.array([0.0, 0.3, 0.0])).reshape(3, 3, 3)
    assert np.allclose(m[0], np.eye(3), atol=1e-6)
    assert np.allclose(m[1], np.tile(np.array(photo.LUMA), (3, 1)), atol=1e-6)  # saturation 0: luma, any hue
    assert np.allclose(m[2], 0.5 * np.eye(3) + 0.5 * np.tile(np.array(photo.LUMA), (3, 1)), atol=1e-6)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    turned = np.asarray(fallback._rotate_hue(im, 0.2)).astype(np.float64)
    ours = np.clip(np.asarray(im, np.float64) @ photo.colour_matrix(np.ones(1), np.array([0.2]))[0].reshape(3, 3).T,
                   0, 255)
    assert np.abs(turned - ours).max() <= 0.5 + 1e-3  # the fallback rounds once


def test_gaussian_taps():
    taps, radius = photo.gaussian_taps(np.array([0.5, 2.0, 1.0]), np.array([True, True, False]))
    assert radius.tolist() == [2, 6, 0] and taps.shape == (3, 13)
    assert np.allclose(taps.sum(1), 1.0) and np.allclose(taps[1], taps[1, ::-1])
    assert taps[2, 6] == 1.0 and taps[0, 5:].sum() == 0  # row 0 reads taps[0..4]


def test_reference_path_and_argument_errors():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (3, 9, 7, 3), generator=gen, dtype=torch.uint8)
    p = random_photo_params(gen, 3)
    ref = photo.photometric_augment_ref(x, p, MEAN, STD).float()
    assert torch.equal(photo.photometric_augment(x, p, MEAN, STD, backend="torch"), ref)
    with pytest.raises(ValueError, match="x: expected uint8"):
        photo.photometric_augment(x.float(), p, MEAN, STD)
    with pytest.raises(ValueError, match="x: expected uint8"):
        photo.photometric_augment(x[..., :2], p, MEAN, STD)
    with pytest.raises(ValueError, match="mean, std"):
        photo.photometric_augment(x, p, MEAN[:2], STD)


@needs_kernel
def test_kernel_argument_errors_name_the_argument():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (3, 9, 7, 3), generator=gen, dtype=torch.uint8)
    p = random_photo_params(gen, 3, p=1.0)
    ext = photo._cuda.ext()
    args = [p.bright, p.contrast, p.matrix, p.colour, p.taps, p.radius, p.solarize]
    with pytest.raises(RuntimeError, match="bright: expected 3 rows"):
        ext.photometric(x, p.bright[:2], *args[1:], list(MEAN), list(STD))
    with pytest.raises(RuntimeError, match="radius: expected a contiguous CPU Int"):
        ext.photometric(x, *args[:5], p.radius.long(), p.solarize, list(MEAN), list(STD))
    with pytest.raises(RuntimeError, match="taps: a radius of"):
        ext.photometric(x, *args[:4], p.taps[:, :1].contiguous(), p.radius, p.solarize, list(MEAN), list(STD))
    with pytest.raises(RuntimeError, match="std: expected > 0"):
        ext.photometric(x, *args, list(MEAN), [0.2, 0.0, 0.2])


def test_the_kernel_is_the_registry_s_cpu_choice_where_it_is_built(monkeypatch):
    """"auto" takes the extension's CPU kernel where it can run and the reference where not; asking for the kernel
    where it cannot run names why."""
    from fusedssl.kernels import _backend

    cpu = torch.device("cpu")
    assert kernels.available("photometric_augment") == ["torch", "cuda"]
    assert _backend.resolve("photometric_augment", "auto", cpu) == ("cuda" if WHY is None else "torch")
    assert _backend.resolve("barlow_twins_loss", "auto", cpu) == "torch"  # the other ops keep the reference on CPU
    monkeypatch.setattr(photo._cuda, "ext", lambda: None)
    assert _backend.resolve("photometric_augment", "auto", cpu) == "torch"
    x = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    p = random_photo_params(torch.Generator().manual_seed(3), 2)
    with pytest.raises(kernels.BackendUnavailable, match=r"cannot run photometric_augment: the C\+\+ extension"):
        photo.photometric_augment(x, p, MEAN, STD, backend="cuda")
