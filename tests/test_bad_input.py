"""Bad input, as a demanding user and an adversary would give it: every case ends in a message that names the thing
and the fix, and nothing is lost (no partial output, no overwritten file). Cases already covered elsewhere: bad
config keys and types (test_config.py), zero-byte / fake / truncated / CMYK / GIF / tiny / huge files and unusable
roots (test_data.py), truncated and corrupt checkpoints and heads (test_evaluate.py, test_reliability.py)."""

import os

import numpy as np
import pytest
import torch
from conftest import tiny, tiny_cfg
from fusedssl.engine import checkpoint, cli, config, guard, train
from fusedssl.engine.data import fallback, folder
from PIL import Image


def _cfg(tmp_path, *extra):
    return tiny_cfg(tmp_path, "barlow", "run.steps=2", *extra, name="run")


# ---------------------------------------------------------------------------------------------------- recipes


def test_an_empty_recipe_file_is_named(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("\n# nothing but a comment\n")
    with pytest.raises(config.ConfigError, match=r"empty.yaml. is empty: .* \(write \{\} for the defaults\)"):
        config.load(p)


@pytest.mark.parametrize("over,message", [
    (["data.source=folder", "data.root=/nonexistent"], r"data.root='/nonexistent' is not a folder"),
    (["data.local_crops=2"], r"data.local_crops"),
    (["optim.accumulate_steps=5"], r"optim.accumulate_steps=5"),
    (["run.device=cuda"], r"run.device=cuda"),
])
def test_conflicting_options_stop_before_any_work(tmp_path, over, message):
    if "cuda" in " ".join(over) and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises((config.ConfigError, ValueError), match=message):
        train.main(_cfg(tmp_path, *over))
    assert not (tmp_path / "run" / "log.jsonl").exists()


# ------------------------------------------------------------------------------------------------ image trees


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)


def test_awkward_files_are_indexed_or_rejected_with_the_reason(tmp_path):
    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    _png(root / "a" / "ok.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _png(root / "a" / "wide16.png", (rng.integers(0, 65536, (40, 40))).astype(np.uint16))  # 16-bit grayscale
    _png(root / "a" / "one.png", np.zeros((1, 1, 3), np.uint8))
    _png(root / "a" / "deep32.tif", rng.random((40, 40)).astype(np.float32), "F")
    _png(root / "b" / "éèü_日本.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))  # non-ASCII name
    bomb = Image.new("1", (20000, 20000))  # 4e8 pixels: past twice PIL's decompression-bomb limit
    bomb.save(root / "b" / "bomb.png")
    os.symlink(root / "b", root / "b" / "loop")  # a symlink loop inside a class folder
    idx = folder.check(root)
    reasons = dict(idx.bad)
    assert reasons["a/one.png"].startswith("too small: 1x1")
    assert reasons["a/deep32.tif"].startswith("unsupported: F samples")
    assert reasons["b/bomb.png"].startswith("too large")
    assert sorted(idx.files) == ["a/ok.png", "a/wide16.png", "b/éèü_日本.png"]  # each once, despite the loop
    assert ("b/loop", "a folder already scanned (symlink loop or alias)") in idx.skipped


def test_a_16_bit_image_reads_as_its_top_8_bits_in_both_pipelines(tmp_path):
    """PIL's RGB conversion clips 16-bit samples at 255 (a white image); DALI keeps the top 8 bits. The fallback
    decodes as DALI does, so the two pipelines still agree."""
    arr = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    _png(tmp_path / "g.png", arr)
    got = np.asarray(fallback.decode(np.fromfile(tmp_path / "g.png", dtype=np.uint8)))
    assert got.shape == (64, 64, 3) and np.array_equal(got[..., 0], (arr >> 8).astype(np.uint8))


# ------------------------------------------------------------------------------------------- checkpoints, runs


def test_flipped_foreign_and_changed_checkpoints_are_named(tmp_path, capsys):
    train.main(_cfg(tmp_path))
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(data))
    flipped.with_suffix(".sha256").write_text(ckpt.with_suffix(".sha256").read_text())
    with pytest.raises(ValueError, match=r"flipped.pt' does not match its checksum"):
        train.main(_cfg(tmp_path, "run.name=a", f"checkpoint.resume={flipped}"))
    foreign = tmp_path / "torchvision.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, foreign)
    with pytest.raises(config.ConfigError, match=r"torchvision.pt is not a fusedssl training checkpoint"):
        train.main(_cfg(tmp_path, "run.name=b", f"checkpoint.resume={foreign}"))
    train.main(_cfg(tmp_path, "run.steps=3", "optim.base_lr=0.3", "checkpoint.resume=auto"))
    err = capsys.readouterr().err
    assert "with a recipe that differs in optim.base_lr, run.steps" in err


def test_an_unusable_output_folder_is_named_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(config.ConfigError, match=r"cannot create or write the run folder .*a_file/run"):
        train.main(config.load(None, tiny("barlow", "run.steps=2", f"run.out_dir={blocker}", "run.name=run")))


def test_two_runs_on_one_folder_are_refused(tmp_path):
    held = guard.RunLock(tmp_path / "run")  # as if another run were using the folder
    try:
        with pytest.raises(config.ConfigError, match=r"run folder .*run' is in use by pid \d+ on .*another run.name"):
            train.main(_cfg(tmp_path))
    finally:
        held.release()
    assert not (tmp_path / "run" / "checkpoints").exists()
    train.main(_cfg(tmp_path))  # the folder is free again


def test_export_never_overwrites_silently(tmp_path, capsys):
    train.main(_cfg(tmp_path))
    run = str(tmp_path / "run")
    a_file = tmp_path / "export.txt"
    a_file.write_text("keep me")
    assert cli.main(["export", run, str(a_file)]) == 2
    assert "is a file: give a folder path" in capsys.readouterr().err and a_file.read_text() == "keep me"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.md").write_text("keep me too")
    assert cli.main(["export", run, str(taken)]) == 2
    assert "is not empty: nothing was written (pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in taken.iterdir()) == ["notes.md"]
    assert cli.main(["export", run, str(taken), "--force"]) == 0
    assert (taken / "backbone.pt").is_file() and (taken / "notes.md").read_text() == "keep me too"
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "step_00000002.pt")["step"] == 2
