"""Data stage for file datasets: the dataset check, the per-step plan, the DALI pipeline and the PIL fallback.

The trees are JPEGs cut from the real photographs bundled with scikit-learn and matplotlib. DALI runs its CPU
pipelines here (``device_id=None``); both of its graphs (the CPU one and the GPU one) are compared with the fallback.
"""

import dataclasses
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fusedssl import kernels
from fusedssl.engine import cli, config, train
from fusedssl.engine import data as data_stage
from fusedssl.engine.data import dali, files, folder, params
from fusedssl.engine.data.params import Plan
from PIL import Image

LOADERS = ["dali", "torch"] if dali.available() else ["torch"]
needs_dali = pytest.mark.skipif(not dali.available(), reason="NVIDIA DALI is not installed")
SIZE = 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = folder.write_photo_tree(tmp_path_factory.mktemp("photos"), 8, seed=1, sides=(64, 160))
    folder.check(root)
    return root


def _cfg(root, *extra):
    return config.load(None, ["data.source=folder", f"data.root={root}", "data.batch_size=6",
                              f"data.image_size={SIZE}", "data.workers=1", *extra]).data


def _stage(root, loader, *extra, rank=0, world=1):
    cfg = _cfg(root, f"data.loader={loader}", *extra)
    return data_stage.build(cfg, seed=5, rank=rank, world=world, device=torch.device("cpu"), channels_last=True)


def _pixels(root, loader, *extra, step: int, rank=0, world=1) -> list[torch.Tensor]:
    """The views of ``step`` as 8-bit images (n, size, size, 3): a stage normalising with mean 0 and std 1/255."""
    st = _stage(root, loader, "data.mean=[0,0,0]", f"data.std=[{1 / 255!r},{1 / 255!r},{1 / 255!r}]", *extra,
                rank=rank, world=world)
    return [v.permute(0, 2, 3, 1).round().to(torch.uint8) for v in st.views(step)]


def _jpeg(path: Path, img: Image.Image, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


# ------------------------------------------------------------------------------------------------ the dataset check


def test_check_indexes_every_good_file_with_its_size(tree):
    idx = folder.load(folder.default_index_path(tree), tree)
    assert idx.classes == sorted(folder.photo_sources()) and len(idx) == 8 * len(idx.classes)
    assert sorted(set(idx.labels.tolist())) == list(range(len(idx.classes)))
    for rel, (w, h), y in zip(idx.files, idx.sizes, idx.labels, strict=True):
        with Image.open(tree / rel) as im:
            assert im.size == (w, h)
        assert rel.split("/")[0] == idx.classes[y]
    assert not idx.bad and not idx.skipped and not idx.empty_classes


def test_check_rejects_bad_files_and_names_the_reason(tmp_path):
    photo = Image.open(folder.photo_sources()["china"]).convert("RGB").resize((120, 90))
    good = tmp_path / "a"
    _jpeg(good / "ok.jpg", photo)
    _jpeg(good / "gray.jpg", photo.convert("L"))
    _jpeg(good / "cmyk.jpg", photo.convert("CMYK"))
    _jpeg(good / "palette.png", photo.convert("P"))
    _jpeg(good / "alpha.png", photo.convert("RGBA"))
    _jpeg(good / "big.jpg", photo.resize((300, 300)))
    _jpeg(good / "tiny.png", photo.resize((8, 8)))
    _jpeg(good / "anim.gif", photo)
    (good / "zero.jpg").write_bytes(b"")
    (good / "text.jpg").write_text("not a picture")
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (good / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (good / "notes.txt").write_text("labels")
    (good / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "b_empty").mkdir()
    idx = folder.check(tmp_path, max_pixels=200 * 200)
    reasons = dict(idx.bad)
    assert sorted(reasons) == ["a/anim.gif", "a/big.jpg", "a/text.jpg", "a/tiny.png", "a/truncated.jpg",
                               "a/zero.jpg"]
    assert reasons["a/zero.jpg"] == "zero bytes"
    assert reasons["a/text.jpg"].startswith("not an image")
    assert reasons["a/truncated.jpg"].startswith("corrupt")
    assert reasons["a/anim.gif"].startswith("unsupported format: GIF")
    assert reasons["a/tiny.png"].startswith("too small: 8x8")
    assert reasons["a/big.jpg"].startswith("too large: 300x300")
    assert dict(zip(idx.files, idx.modes, strict=True)) == {"a/alpha.png": "RGBA", "a/cmyk.jpg": "CMYK",
                                                             "a/gray.jpg": "L", "a/ok.jpg": "RGB",
                                                             "a/palette.png": "P"}
    assert idx.skipped == [("a/notes.txt", "not an image file name")]
    assert idx.classes == ["a", "b_empty"] and idx.empty_classes == ["b_empty"]
    summary = idx.summary()
    assert "5 good images" in summary and "6 rejected" in summary and "1 CMYK" in summary
    # Every accepted file, whatever its mode, goes through both pipelines as RGB.
    for loader in LOADERS:
        st = _stage(tmp_path, loader, "data.batch_size=5", "data.crop_scale=[0.5,1.0]")
        assert [tuple(v.shape) for v in st.views(0)] == [(5, 3, SIZE, SIZE)] * 2
        st.close()


@pytest.mark.parametrize("case", ["missing", "file", "no_classes", "no_images"])
def test_unusable_roots_fail_with_the_path(tmp_path, case):
    root = tmp_path / "root"
    if case == "file":
        root.write_text("x")
    elif case == "no_classes":
        root.mkdir()
        _jpeg(root / "loose.jpg", Image.new("RGB", (32, 32)))
    elif case == "no_images":
        (root / "cls").mkdir(parents=True)
        (root / "cls" / "readme.txt").write_text("x")
    expected = {"missing": "does not exist", "file": "is not a folder", "no_classes": "no class sub-folders",
                "no_images": "has no image files"}[case]
    with pytest.raises(folder.DatasetError, match=expected) as e:
        folder.check(root)
    assert str(root) in str(e.value)


def test_check_with_worker_processes_matches_serial(tree, tmp_path):
    a = folder.check(tree, out=tmp_path / "a.json")
    b = folder.check(tree, out=tmp_path / "b.json", workers=2)
    assert a.files == b.files and np.array_equal(a.sizes, b.sizes)


def test_cli_data_sample_and_check(tmp_path, capsys):
    assert cli.main(["data", "sample", str(tmp_path / "t"), "--per-class", "2"]) == 0
    assert cli.main(["data", "check", str(tmp_path / "t"), "--out", str(tmp_path / "i.json"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 good images in 3 classes" in out and str(tmp_path / "i.json") in out
    assert cli.main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_index_problems_are_named(tree, tmp_path):
    with pytest.raises(folder.DatasetError, match="does not exist: run `fusedssl data check"):
        folder.load(tmp_path / "none.json", tree)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(folder.DatasetError, match="unreadable"):
        folder.load(tmp_path / "bad.json", tree)
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(folder.DatasetError, match="not a fusedssl dataset index"):
        folder.load(tmp_path / "other.json", tree)


def test_unchecked_tree_is_checked_first_or_refused(tree, tmp_path):
    root = shutil.copytree(tree, tmp_path / "copy")
    (root / folder.INDEX_NAME).unlink()
    with pytest.raises(folder.DatasetError, match="has no dataset index .* data.check=require: run `fusedssl data"):
        _stage(root, "torch", "data.check=require")
    st = _stage(root, "torch")  # data.check=auto: the tree is checked, the index written, training goes on
    assert (root / folder.INDEX_NAME).is_file() and len(st.views(0)) == 2


@pytest.mark.parametrize("loader", LOADERS)
def test_a_file_removed_after_the_check_is_named(tree, tmp_path, loader):
    root = shutil.copytree(tree, tmp_path / "copy")
    st = _stage(root, loader, "data.batch_size=24")  # one step holds every file
    victim = folder.load(root / folder.INDEX_NAME, root).files[3]
    (root / victim).unlink()
    with pytest.raises(Exception, match=f"{victim}.* is listed in the dataset index .* no longer exists") as e:
        st.views(0)
    assert "rerun `fusedssl data check" in str(e.value)


# --------------------------------------------------------------------------------------------------------- the plan


def _plan(tree, batch=6, rank=0, world=1, local_crops=0, local_size=96, **over):
    cfg = dataclasses.replace(_cfg(tree), **over)
    idx = folder.load(folder.default_index_path(tree), tree)
    return Plan.of_index(idx, data_stage.recipes(cfg, local_crops, local_size), batch, 5, rank, world, "index")


def test_an_epoch_visits_every_image_at_most_once_and_shards_are_disjoint(tree):
    whole = _plan(tree)
    assert whole.steps_per_epoch == 24 // 6
    for epoch in range(2):
        rows = np.concatenate([whole.rows(epoch * 4 + i) for i in range(4)])
        assert sorted(rows.tolist()) == list(range(24))
    assert not np.array_equal(whole.rows(0), whole.rows(4))  # a new order each epoch
    parts = [_plan(tree, rank=r, world=3) for r in range(3)]
    for step in range(5):
        shards = [p.rows(step) for p in parts]
        assert np.array_equal(np.concatenate(shards), whole.rows(step))


def test_parameters_honour_the_probabilities(tree):
    recipe = dataclasses.replace(data_stage.recipes(_cfg(tree))[0], flip_p=0.5, jitter_p=0.8, gray_p=0.2,
                                 blur_p=0.1, solarize_p=0.3, crop_scale=(0.2, 0.9))
    n = 20000
    rng = np.random.default_rng(0)
    sizes = np.stack([rng.integers(40, 400, n), rng.integers(40, 400, n)], 1)
    p = params.draw(recipe, sizes, params.rng(0, "view", 3, 1))
    for flags, prob in ((p.flip, 0.5), (p.gray, 0.2), (p.blur, 0.1), (p.solarize, 0.3), (p.brightness != 1, 0.8)):
        assert abs(flags.mean() - prob) < 5 * np.sqrt(prob * (1 - prob) / n), (flags.mean(), prob)
    jit = p.brightness != 1
    assert np.all((p.contrast != 1) == jit) and np.all((p.hue != 0) == jit)
    assert np.all(np.abs(p.brightness - 1) <= 0.4 + 1e-6) and np.all(np.abs(p.hue) <= 0.1 + 1e-6)
    left, top, w, h = p.box.T
    assert np.all((left >= 0) & (top >= 0) & (left + w <= sizes[:, 0]) & (top + h <= sizes[:, 1]) & (w > 0) & (h > 0))
    area = w * h / (sizes[:, 0] * sizes[:, 1])
    ratio = w / h
    drawn = (area > 0.19) & (area < 0.91) & (ratio > 0.72) & (ratio < 1.38)  # rounding to pixels aside
    square = (sizes[:, 0] > 100) & (np.abs(sizes[:, 0] - sizes[:, 1]) < 0.1 * sizes[:, 0])
    assert drawn[square].mean() > 0.999  # elsewhere no draw may fit in 10 tries: the centred fall-back
    fell_back = ~drawn & (sizes.min(1) > 100)
    assert np.all((w[fell_back] == sizes[fell_back].min(1)) | (h[fell_back] == sizes[fell_back].min(1)))
    again = params.draw(recipe, sizes, params.rng(0, "view", 3, 1))
    assert np.array_equal(again.box, p.box) and np.array_equal(again.sigma, p.sigma)
    other = params.draw(recipe, sizes, params.rng(0, "view", 3, 0))
    assert not np.array_equal(other.box, p.box)


def test_subpixel_boxes_for_tensors_stay_inside_the_image():
    """The in-memory sources' boxes: inside the image, sub-pixel, area at most the drawn fraction and at least that
    fraction over the widest ratio's clamp."""
    rng = np.random.default_rng(0)
    sizes = np.stack([np.full(5000, 28), np.full(5000, 40)], 1)
    left, top, w, h = params.subpixel_boxes(rng, sizes, (0.3, 1.0)).T
    assert np.all((left >= 0) & (top >= 0) & (left + w <= sizes[:, 0] + 1e-9) & (top + h <= sizes[:, 1] + 1e-9))
    area = w * h / (sizes[:, 0] * sizes[:, 1])
    assert area.max() <= 1.0 + 1e-9 and area.min() >= 0.3 / (4 / 3) ** 0.5 - 1e-9
    free = w < sizes[:, 0]  # a side clamped to the image is whole and starts at 0
    assert 0.5 < free.mean() < 1 and np.mean(left[free] != np.round(left[free])) > 0.99
    assert np.mean(w[free] != np.round(w[free])) > 0.99
    again = params.subpixel_boxes(np.random.default_rng(0), sizes, (0.3, 1.0))
    assert np.array_equal(again[:, 2], w)


# ------------------------------------------------------------------------------------------------------ the loaders


@pytest.mark.parametrize("loader", LOADERS)
def test_views_are_channels_last_float_and_differ(tree, loader):
    st = _stage(tree, loader)
    v1, v2 = st.views(0)
    for v in (v1, v2):
        assert v.shape == (6, 3, SIZE, SIZE) and v.dtype == torch.float32
        assert v.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(v).all()
    assert (v1 - v2).abs().mean() > 0.1
    assert abs(float(v1.mean())) < 1.5 and 0.3 < float(v1.std()) < 2.0  # normalised
    assert not torch.equal(st.views(1)[0], v1)
    st.close()


@pytest.mark.parametrize("loader", LOADERS)
def test_resume_reproduces_the_same_batches(tree, loader):
    a = _stage(tree, loader)
    straight = [a.views(s) for s in range(6)]  # 6 steps: crosses the epoch boundary at step 4
    b = _stage(tree, loader)
    resumed = [b.views(s) for s in (3, 4, 5)]  # a fresh pipeline started at step 3, as after a resume
    for x, y in zip(straight[3:], resumed, strict=True):
        assert all(torch.equal(u, w) for u, w in zip(x, y, strict=True))
    assert all(torch.equal(u, w) for u, w in zip(b.views(1), straight[1], strict=True))  # going back restarts too


@pytest.mark.parametrize("loader", LOADERS)
def test_two_ranks_together_make_the_single_process_batch(tree, loader):
    whole = _stage(tree, loader).views(2)
    parts = [_stage(tree, loader, rank=r, world=2).views(2) for r in range(2)]
    for v in range(2):
        assert torch.equal(torch.cat([parts[0][v], parts[1][v]]), whole[v])


@pytest.mark.parametrize("loader", LOADERS)
def test_grayscale_and_solarisation_do_what_they_say(tree, loader):
    off = ["data.jitter_p=0", "data.blur_p=[0,0]", "data.solarize_p=[0,0]"]
    gray = _pixels(tree, loader, *off, "data.gray_p=1", step=0)[0].int()
    assert (gray[..., 0] - gray[..., 1]).abs().max() <= 1 and (gray[..., 1] - gray[..., 2]).abs().max() <= 1
    plain = _pixels(tree, loader, *off, "data.gray_p=0", step=0)
    sol = _pixels(tree, loader, *off[:2], "data.gray_p=0", "data.solarize_p=[0,1]", step=0)
    assert torch.equal(sol[0], plain[0])  # view 1 has p = 0
    assert torch.equal(sol[1], torch.where(plain[1] >= 128, 255 - plain[1], plain[1]))


@needs_dali
@pytest.mark.parametrize("graph", ["kernel", "cpu_ops", "gpu_ops"])  # not "gpu": that id is conftest's GPU marker
def test_dali_and_the_fallback_agree_sample_by_sample(tree, graph, monkeypatch):
    """Same parameters, two implementations: crops, flips, jitter, hue, grayscale, blur and solarisation agree.
    ``graph``: DALI's crop and resize then the fused photometric kernel (the CPU default), or every step in DALI
    operators with the CPU graph's or the GPU graph's colour and blur variants (all run on the CPU here)."""
    if graph == "kernel":
        why = kernels.why_not("photometric_augment", "cuda", torch.device("cpu"))
        if why:
            pytest.skip(why)
        extra = "data.photometric=kernel"
    else:
        pipeline = dali.pipeline
        monkeypatch.setattr(dali, "pipeline", lambda *a, **k: pipeline(*a, **{**k, "graph": graph[:3]}))
        extra = "data.photometric=dali"
    a = _pixels(tree, "dali", "data.batch_size=12", extra, step=1)
    b = _pixels(tree, "torch", "data.batch_size=12", step=1)
    for x, y in zip(a, b, strict=True):
        per_image = (x.float() - y.float()).abs().mean(dim=(1, 2, 3))
        assert per_image.max() < 6.0, per_image  # grey levels; measured mean 1.4, max 3.7 (decoders, filters, clamps)
    shifted = (a[0].float() - b[0].roll(1, 0).float()).abs().mean(dim=(1, 2, 3))
    assert shifted.min() > 10  # ...and a mismatched pairing is far apart


@needs_dali
def test_where_the_photometric_steps_run_is_chosen_and_checked(tree, monkeypatch):
    built = kernels.why_not("photometric_augment", "cuda", torch.device("cpu")) is None
    assert _stage(tree, "dali").photometric == ("kernel" if built else "dali")  # auto: the kernel on CPU decoding
    assert _stage(tree, "dali", "data.photometric=dali").photometric == "dali"
    with pytest.raises(folder.DatasetError, match="data.photometric=kernel runs on the CPU.*dali_device is mixed"):
        files.choose_photometric(_cfg(tree, "data.photometric=kernel"), "mixed", torch.device("cuda"))
    assert files.choose_photometric(_cfg(tree), "mixed", torch.device("cuda")) == "dali"
    # a GPU run decoding on the CPU: uint8 views from DALI go over PCIe, not the kernel's float32 ones
    assert files.choose_photometric(_cfg(tree), "cpu", torch.device("cuda")) == "dali"
    real = kernels.why_not
    monkeypatch.setattr(kernels, "why_not", lambda op, *a: "the extension is not built (test)"
                        if op == "photometric_augment" else real(op, *a))
    with pytest.raises(folder.DatasetError, match="data.photometric=kernel: the extension is not built"):
        _stage(tree, "dali", "data.photometric=kernel")
    assert _stage(tree, "dali").photometric == "dali"  # auto without the kernel: DALI's operators


@needs_dali
def test_roi_decode_and_full_decode_give_the_same_views(tree):
    a = _pixels(tree, "dali", "data.roi_decode=true", step=0)
    b = _pixels(tree, "dali", "data.roi_decode=false", step=0)
    for x, y in zip(a, b, strict=True):
        assert (x.float() - y.float()).abs().mean() < 1.0


@needs_dali
def test_dali_read_workers_give_the_same_views(tree):
    a = _stage(tree, "dali").views(2)
    b = _stage(tree, "dali", "data.read_workers=1").views(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("loader", LOADERS)
def test_exif_orientation_is_applied_before_cropping(tmp_path, loader):
    photo = Image.open(folder.photo_sources()["flower"]).convert("RGB").resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _jpeg(tmp_path / "c" / "rotated.jpg", photo, exif=exif.tobytes(), quality=95)
    _jpeg(tmp_path / "c" / "upright.jpg", photo.transpose(Image.ROTATE_270), quality=95)
    idx = folder.check(tmp_path)
    assert idx.sizes.tolist() == [[64, 96], [64, 96]]
    st = _stage(tmp_path, loader, "data.batch_size=2", "data.jitter_p=0", "data.gray_p=0", "data.blur_p=[0,0]",
                "data.solarize_p=[0,0]", "data.crop_scale=[1.0,1.0]", "data.flip_p=0", "data.mean=[0,0,0]",
                f"data.std=[{1 / 255!r},{1 / 255!r},{1 / 255!r}]")
    rotated, upright = st.views(0)[0][st.plan.rows(0).argsort()]
    assert (rotated - upright).abs().mean() < 6.0  # JPEG re-encoding of a rotated image differs a little


def test_multicrop_views_from_the_data_stage(tree):
    plan = _plan(tree, local_crops=2, local_size=16)
    assert [r.size for r in plan.recipes] == [SIZE, SIZE, 16, 16]
    st = files.FileViews(plan, _cfg(tree), torch.device("cpu"), True, loader=LOADERS[0])
    assert [tuple(v.shape[2:]) for v in st.views(0)] == [(SIZE, SIZE), (SIZE, SIZE), (16, 16), (16, 16)]
    with pytest.raises(config.ConfigError, match="data.local_crops"):  # not a training option
        config.load(None, ["data.local_crops=2"])


def test_loader_choice_without_dali(tree, monkeypatch, caplog):
    monkeypatch.setattr(dali, "available", lambda: False)
    with pytest.raises(folder.DatasetError, match="data.loader=dali but NVIDIA DALI is not installed: pip install"):
        _stage(tree, "dali")
    assert _stage(tree, "auto").loader == "torch"
    assert "using the PIL loader" in caplog.text
    with pytest.raises(folder.DatasetError, match="data.dali_device=mixed decodes on the GPU"):
        _stage(tree, "torch", "data.dali_device=mixed")


# ------------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("loader", LOADERS)
def test_training_reads_a_folder_and_resumes_exactly(tree, tmp_path, loader):
    over = ["data.source=folder", f"data.root={tree}", f"data.loader={loader}", "data.workers=1",
            "data.batch_size=8", "data.image_size=32", "model.projector=32-16", "evaluate.knn=false",
            "log.every=1", f"run.out_dir={tmp_path}", "run.steps=4", "method.name=barlow",
            "evaluate.online_probe=true"]  # the probe's labels come from the index (FileViews.labels)
    train.main(config.load(None, [*over, "run.name=a"]))
    train.main(config.load(None, [*over, "run.name=b", "checkpoint.every_steps=2"]))
    last = tmp_path / "b" / "checkpoints" / "step_00000004.pt"
    last.unlink()  # the run died after step 2 (mid-epoch: an epoch is 3 steps)
    last.with_suffix(".sha256").unlink()
    train.main(config.load(None, [*over, "run.name=b", "checkpoint.resume=auto"]))
    from fusedssl.engine import checkpoint

    a = checkpoint.load(tmp_path / "a" / "checkpoints" / "step_00000004.pt")["model"]
    b = checkpoint.load(tmp_path / "b" / "checkpoints" / "step_00000004.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa = checkpoint.load(tmp_path / "a" / "checkpoints" / "step_00000004.pt")["probe"]["head"]
    pb = checkpoint.load(tmp_path / "b" / "checkpoints" / "step_00000004.pt")["probe"]["head"]
    assert pa["weight"].shape == (3, 512) and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_a_gpu_run_without_dali_is_not_silently_fed_by_pil(tree, monkeypatch):
    """data.loader=auto without DALI: a warning and the PIL loader on a CPU run; on a GPU run (a few hundred images/s
    against thousands needed) an error that names the key."""
    monkeypatch.setattr(files.dali, "available", lambda: False)
    assert files.choose_loader(_cfg(tree), torch.device("cpu")) == "torch"
    with pytest.raises(folder.DatasetError, match=r"data.loader=auto on a GPU run .* set data.loader=torch"):
        files.choose_loader(_cfg(tree), torch.device("cuda"))
    assert files.choose_loader(_cfg(tree, "data.loader=torch"), torch.device("cuda")) == "torch"


def test_loader_workers_survive_a_group_signal_but_not_their_trainer(tree):
    """torchrun and SLURM send SIGTERM to every process of the group or step: the PIL loader's workers must live on
    until the trainer has written its checkpoint, yet still end when the trainer itself terminates them."""
    import subprocess
    import time

    stage = _stage(tree, "torch", "data.workers=2")
    first = stage.views(0)
    stage.views(1)  # each worker has delivered a step, so both have started (and set up their signal handling)
    workers = stage._it._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    servers = {int(Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for w in workers}
    assert len(servers) == 1 and os.getpid() not in servers  # the workers' parent is the forkserver
    group = [*servers, *(w.pid for w in workers)]
    subprocess.run(["kill", "-TERM", *map(str, group)], check=True)  # sent by another process, as torchrun does
    time.sleep(1.0)
    # is_alive() asks the server: a server dead of the signal reads as every worker dead (the run's crash)
    assert all(w.is_alive() for w in workers), "a data worker or the forkserver died of a SIGTERM meant for the trainer"
    again = stage.views(2)
    assert [v.shape for v in again] == [v.shape for v in first]
    for w in workers:
        w.terminate()  # from the trainer: multiprocessing's shutdown of daemonic workers
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers), "the trainer could not terminate its data workers"
    stage.close()


@pytest.mark.parametrize("loader", LOADERS)
def test_loader_workers_end_when_their_trainer_is_killed(tree, loader):
    """A trainer killed outright (SIGKILL, the OOM killer) cannot shut its workers down: they must notice and end, or
    every kill of a long run leaves its workers (and the PIL loader's forkserver) running with their memory held."""
    import subprocess
    import sys
    import time

    script = f"""
import sys, time, torch
from fusedssl.engine import config
from fusedssl.engine import data
cfg = config.load(None, ["data.source=folder", "data.root={tree}", "data.batch_size=6", "data.image_size={SIZE}",
                         "data.loader={loader}", "data.workers=2", "data.read_workers=2"]).data
stage = data.build(cfg, seed=5, rank=0, world=1, device=torch.device("cpu"), channels_last=True)
stage.views(0)
stage.views(1)
print("ready", flush=True)
time.sleep(600)
"""
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "ready"
        kids = _descendants(trainer.pid)
        assert kids, "the loader started no worker processes"
    finally:
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in kids):
        time.sleep(0.2)
    left = [p for p in kids if _alive(p)]
    for p in left:
        os.kill(p, 9)
    assert not left, f"{len(left)} of the {len(kids)} worker processes outlived their killed trainer"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), grandchildren included: forkserver workers are its grandchildren."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, frontier = [], [pid]
    while frontier:
        frontier = [c for c, p in parent.items() if p in frontier]
        out += frontier
    return out


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------ the bundled photographs set


def test_photos_split_by_cell_and_crops_stay_inside_their_cell():
    """Held-out and training crops of a photograph come from disjoint grid cells, so they never share a pixel."""
    from fusedssl.engine.data import photos

    for label in range(3):
        tr, te = photos.split_cells(0, label, 0.2)
        assert len(te) == 3 and len(tr) == 13 and not set(tr) & set(te)
        assert sorted(tr + te) == [(r, c) for r in range(photos.GRID) for c in range(photos.GRID)]
    assert photos.split_cells(0, 0, 0.2) != photos.split_cells(1, 0, 0.2)
    h, w = 192, 289
    ch, cw = h // photos.GRID, w // photos.GRID
    cells = [(0, 0), (3, 3), (1, 2)]
    boxes = photos.crop_boxes(h, w, cells, np.random.default_rng(0))
    assert len(boxes) == photos.CROPS * len(cells)
    for i, (y, x, s) in enumerate(boxes):
        r, c = cells[i // photos.CROPS]
        assert r * ch <= y and y + s <= (r + 1) * ch and c * cw <= x and x + s <= (c + 1) * cw
        assert min(ch, cw) // 2 <= s <= min(ch, cw)
    with pytest.raises(ValueError, match="data.test_fraction"):
        photos.split_cells(0, 0, 0.99)


def test_photos_source_trains_and_evaluates(tmp_path):
    from fusedssl.engine import evaluate
    from fusedssl.engine.data import photos

    tr, te = data_stage.BUNDLED["photos"](0.2, 0)
    n = len(photos.sources())
    assert n >= 15  # scikit-image's photographs plus scikit-learn's and matplotlib's
    assert tr.images.shape[1:] == (1, photos.STORED, photos.STORED) and tr.images.dtype == torch.uint8
    assert torch.equal(tr.labels.bincount(), torch.full((n,), 13 * photos.CROPS))
    assert torch.equal(te.labels.bincount(), torch.full((n,), 3 * photos.CROPS))
    again = data_stage.BUNDLED["photos"](0.2, 0)[1]
    assert torch.equal(again.images, te.images)
    assert not torch.equal(data_stage.BUNDLED["photos"](0.2, 1)[1].images, te.images)
    x = tr.images.float() / 255
    assert abs(x.mean() - photos.MEAN[0]) < 0.02 and abs(x.std() - photos.STD[0]) < 0.02
    cfg = config.load(None, [f"run.out_dir={tmp_path}", "run.name=p", "data.source=photos", "data.batch_size=16",
                             "data.image_size=16", "model.projector=32-16", "method.name=vicreg", "run.steps=2",
                             "log.progress=false", "evaluate.online_probe=true"])
    metrics = train.main(cfg)
    assert 0 < metrics["knn_trained"] <= 1 and torch.isfinite(torch.tensor(metrics["last_loss"]))
    lset = evaluate.BundledSet(cfg.data, cfg.run.seed)
    assert lset.name == "photos" and lset.classes == list(photos.sources()) and lset.key.startswith(f"photos{n}-")
    assert torch.equal(lset.val_y, te.labels)
