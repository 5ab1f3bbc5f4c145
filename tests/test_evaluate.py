"""Evaluation: kNN, linear probe, online probe, feature cache, export round trip, bad input, plots."""

import json

import pytest
import torch
import torchvision
from conftest import FLOAT32_REROUTE, tiny, tiny_cfg
from fusedssl.bench import bench_quality
from fusedssl.engine import checkpoint, cli, config, data, evaluate, export, probe, train
from fusedssl.engine.data import folder


@pytest.fixture(autouse=True)
def few_digits(monkeypatch):
    """Every 10th of the bundled digits (400 train / 100 held out): the protocols are the same, the tests 10x faster."""
    full = data.load_digits

    def subset(test_fraction, seed):
        tr, te = full(test_fraction, seed)
        return data.Split(tr.images[::10], tr.labels[::10]), data.Split(te.images[::10], te.labels[::10])

    monkeypatch.setattr(data, "load_digits", subset)
    monkeypatch.setitem(data.BUNDLED, "digits", subset)  # what training and BundledSet read


def _train(tmp_path, method="barlow", *extra, name=None):
    train.main(tiny_cfg(tmp_path, method, "run.steps=2", *extra, name=name))
    return tmp_path / (name or method) / "checkpoints" / "step_00000002.pt"


# ------------------------------------------------------------------------------------------------ the protocols


def test_knn_votes_by_weighted_similarity():
    # bank: two class-0 points near e1, one class-1 point exactly at the query; k=3. The class-1 neighbour has the
    # largest weight, but two class-0 neighbours outvote it at a high temperature and not at a low one.
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.6, 0.8]]), dim=1)
    y = torch.tensor([0, 0, 1])
    q = torch.nn.functional.normalize(torch.tensor([[0.6, 0.8]]), dim=1)
    assert evaluate.knn_accuracy(bank, y, q, torch.tensor([0]), k=3, temperature=10.0, num_classes=2) == 1.0
    assert evaluate.knn_accuracy(bank, y, q, torch.tensor([1]), k=3, temperature=0.05, num_classes=2) == 1.0
    assert evaluate.knn_accuracy(bank, y, q, torch.tensor([1]), k=1, temperature=10.0, num_classes=2) == 1.0


def test_few_shot_bank_takes_n_per_class_reproducibly():
    labels = torch.arange(10).repeat(30)
    bank = evaluate.few_shot_bank(labels, 4, seed=0)
    assert torch.equal(torch.bincount(labels[bank]), torch.full((10,), 4))
    assert torch.equal(bank, evaluate.few_shot_bank(labels, 4, seed=0))
    assert not torch.equal(bank, evaluate.few_shot_bank(labels, 4, seed=1))


@pytest.mark.parametrize("optimizer", ["sgd", "lars", "adam"])
def test_linear_probe_learns_separable_classes_and_not_noise(optimizer):
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(5, 32, generator=g)
    y, yv = torch.randint(0, 5, (600,), generator=g), torch.randint(0, 5, (300,), generator=g)
    x = centres[y] + torch.randn(600, 32, generator=g)
    xv = centres[yv] + torch.randn(300, 32, generator=g)
    lr = {"sgd": 0.1, "lars": 2.0, "adam": 1e-2}[optimizer]
    s = evaluate.ProbeSettings(epochs=20, batch_size=64, optimizer=optimizer, lr=lr)
    res, head = evaluate.linear_probe([x, x + 0.1 * torch.randn(600, 32, generator=g)], y, xv, yv, 5, s,
                                      torch.device("cpu"))
    assert res["top1"] > 0.95 and len(res["val_top1_per_epoch"]) == 20
    assert res["train_loss_per_epoch"][-1] < res["train_loss_per_epoch"][0]
    # the exported form (standardisation folded into the weights) gives the same logits on raw features
    w, b = head.folded()
    assert torch.allclose(xv @ w.T + b, head(xv), atol=1e-4)
    # the same features with shuffled labels: nothing to learn, about chance (1/5) on held-out data
    noise, _ = evaluate.linear_probe([x], y[torch.randperm(600, generator=g)], xv, yv, 5, s, torch.device("cpu"))
    assert noise["top1"] < 0.4


def test_online_probe_learns_and_resumes_exactly():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 16, generator=g)
    y = torch.randint(0, 4, (2000,), generator=g)
    h = centres[y] + torch.randn(2000, 16, generator=g)
    a = probe.OnlineProbe(16, 4, 0.1, torch.device("cpu"))
    for i in range(0, 1000, 50):
        a.step(h[i:i + 50], y[i:i + 50])
    first = a.read()
    assert set(first) == {"probe/train_acc", "probe/loss"} and a.read() == {}  # read resets the running sums
    b = probe.OnlineProbe(16, 4, 0.1, torch.device("cpu"))
    b.load(a.state())
    for i in range(1000, 2000, 50):
        a.step(h[i:i + 50], y[i:i + 50])
        b.step(h[i:i + 50], y[i:i + 50])
    assert torch.equal(a.head.weight, b.head.weight)
    assert a.accuracy(h[1500:], y[1500:]) > 0.95


def test_training_with_the_online_probe_logs_and_resumes(tmp_path):
    over = ["evaluate.online_probe=true", "run.steps=4"]
    _train(tmp_path / "a", "byol", *over)
    _train(tmp_path / "b", "byol", *over, "checkpoint.every_steps=2")
    recs = [json.loads(line) for line in (tmp_path / "a" / "byol" / "log.jsonl").read_text().splitlines()]
    assert all("probe/train_acc" in r and "probe/loss" in r for r in recs if "loss/total" in r)
    ck = tmp_path / "b" / "byol" / "checkpoints"
    (ck / "step_00000004.pt").unlink()
    (ck / "step_00000004.sha256").unlink()
    train.main(config.load(None, [*tiny("byol"), f"run.out_dir={tmp_path / 'b'}",
                                  "run.name=byol", *over, "checkpoint.resume=auto"]))
    pa = checkpoint.load(tmp_path / "a" / "byol" / "checkpoints" / "step_00000004.pt")["probe"]
    pb = checkpoint.load(ck / "step_00000004.pt")["probe"]
    for k in pa["head"]:
        assert torch.equal(pa["head"][k], pb["head"][k]), k
    # a checkpoint without the probe cannot resume a run that has one (the probe state would be made up)
    with pytest.raises(config.ConfigError, match="without the online probe"):
        train.main(config.load(None, [*tiny("barlow"), f"run.out_dir={tmp_path}", "run.name=c",
                                      "run.steps=4", f"checkpoint.resume={_train(tmp_path, name='c')}", *over]))


# --------------------------------------------------------------------------------------------- the commands


def test_eval_commands_on_the_bundled_digits(tmp_path, capsys, monkeypatch):
    ck = _train(tmp_path)
    assert cli.main(["eval", "knn", str(ck.parent.parent), "--shots", "2"]) == 0
    assert cli.main(["eval", "linear", str(ck), "--epochs", "3", "--copies", "1"]) == 0
    out = capsys.readouterr().out
    assert "knn/digits/backbone" in out and "knn2shot/digits/backbone" in out and "linear/digits/backbone" in out
    doc = json.loads(ck.with_suffix(".eval.json").read_text())
    assert doc["method"] == "barlow" and doc["step"] == 2
    res = doc["results"]
    assert res["knn2shot/digits/backbone"]["bank"] == 20 and res["knn/digits/backbone"]["bank"] == 400
    assert 0.1 < res["knn/digits/backbone"]["top1"] <= 1.0  # digits: far above chance even at 2 steps
    assert len(res["linear/digits/backbone"]["val_top1_per_epoch"]) == 3
    cached = list((ck.parent / "eval_cache").glob("*.pt"))
    assert len(cached) == 3  # train and val eval views, one augmented copy

    def no_extraction(*a, **k):
        raise AssertionError("features were extracted again despite the cache")

    monkeypatch.setattr(evaluate, "extract", no_extraction)
    assert cli.main(["eval", "knn", str(ck)]) == 0
    again = json.loads(ck.with_suffix(".eval.json").read_text())["results"]["knn/digits/backbone"]["top1"]
    assert again == res["knn/digits/backbone"]["top1"]


def test_random_init_eval_is_the_runs_own_baseline(tmp_path, capsys):
    """eval --random-init builds exactly the network train.py starts from: the same kNN accuracy."""
    over = [f"run.out_dir={tmp_path}", "run.name=r", "run.steps=1", "evaluate.knn=true", "data.source=digits",
            "data.batch_size=64", "data.image_size=16", "model.projector=32-16", "log.progress=false"]
    metrics = train.main(config.load(None, over))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    assert cli.main(["eval", "knn", "--random-init", "--config", str(recipe), *sum((["--set", o] for o in over), [])
                     ]) == 0
    doc = json.loads((tmp_path / "r" / "random_init.eval.json").read_text())
    assert doc["results"]["knn/digits/backbone"]["top1"] == metrics["knn_random_init"]


def test_eval_on_imagefolder_trees(tmp_path, capsys):
    ck = _train(tmp_path)
    folder.write_photo_tree(tmp_path / "train", 6, seed=0, sides=(40, 80))
    folder.write_photo_tree(tmp_path / "val", 3, seed=1, sides=(40, 80))
    args = ["--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--workers", "0"]
    assert cli.main(["eval", "knn", str(ck), *args]) == 0
    assert cli.main(["eval", "linear", str(ck), *args, "--epochs", "2", "--copies", "1"]) == 0
    res = json.loads(ck.with_suffix(".eval.json").read_text())["results"]
    name = f"folder:{tmp_path / 'train'}|{tmp_path / 'val'}/backbone"
    assert res[f"knn/{name}"]["bank"] == 18 and 0 <= res[f"linear/{name}"]["top1"] <= 1
    # a validation class the training tree does not have is named
    (tmp_path / "val" / "zebra").mkdir()
    src = next((tmp_path / "val" / "china").iterdir())
    (tmp_path / "val" / "zebra" / "z.jpg").write_bytes(src.read_bytes())
    (tmp_path / "val" / folder.INDEX_NAME).unlink()
    assert cli.main(["eval", "knn", str(ck), *args]) == 2
    msg = capsys.readouterr().err
    assert "classes absent from the training tree" in msg and "zebra" in msg


def test_export_round_trips_through_torchvision(tmp_path):
    ck = _train(tmp_path, "byol")
    assert cli.main(["eval", "linear", str(ck), "--epochs", "2", "--copies", "0"]) == 0
    out = tmp_path / "export"
    assert cli.main(["export", str(ck), str(out)]) == 0
    net = evaluate.load_network(ck)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = net.model.backbone.eval()(x)
        m = torchvision.models.resnet18()
        m.fc = torch.nn.Identity()
        m.load_state_dict(torch.load(out / "backbone.pt"), strict=True)
        assert torch.allclose(m.eval()(x), ref, atol=FLOAT32_REROUTE)
        cls = torchvision.models.resnet18(num_classes=10)  # the probe as fc: a plain torchvision classifier
        cls.load_state_dict(torch.load(out / "classifier.pt"), strict=True)
        h = torch.load(ck.with_suffix(".linear_head.pt"))
        probe = evaluate.LinearHead(h["weight"], h["bias"], h["mean"], h["std"])
        assert torch.allclose(cls.eval()(x), probe(ref), atol=1e-4)
        proj = net.model.projector
        proj.load_state_dict(torch.load(out / "projector.pt"), strict=True)
    meta = json.loads((out / "export.json").read_text())
    assert meta["architecture"] == "resnet18" and meta["num_classes"] == 10 and meta["feature_dim"] == 512
    assert (out / "predictor.pt").exists() and json.loads((out / "config.json").read_text())["method"]["name"] == "byol"
    assert "evaluation" in json.loads((out / "metrics.json").read_text())
    assert torch.allclose(export.torchvision_model(out)(x), ref, atol=FLOAT32_REROUTE)
    # the EMA teacher's backbone, and a non-default stem through the helper
    assert cli.main(["export", str(ck), str(tmp_path / "t"), "--weights", "teacher"]) == 0
    ck2 = _train(tmp_path, "barlow", "model.stem=cifar", name="cifar")
    export.export(ck2, tmp_path / "c")
    with torch.no_grad():
        ref2 = evaluate.load_network(ck2).model.backbone.eval()(x)
        assert torch.allclose(export.torchvision_model(tmp_path / "c")(x), ref2, atol=FLOAT32_REROUTE)


def test_bad_checkpoints_and_heads_are_named(tmp_path, capsys):
    ck = _train(tmp_path)

    def err(*argv):
        assert cli.main(list(argv)) == 2
        return capsys.readouterr().err

    assert "does not exist" in err("eval", "knn", str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert "bad.pt" in err("eval", "knn", str(bad)) and "cannot be read" in err("export", str(bad), str(tmp_path / "e"))
    torn = tmp_path / "torn" / "step_00000002.pt"
    torn.parent.mkdir()
    torn.write_bytes(ck.read_bytes()[:-100])
    (torn.with_suffix(".sha256")).write_text(ck.with_suffix(".sha256").read_text())
    assert "checksum" in err("eval", "knn", str(torn))
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert "not a fusedssl training checkpoint" in err("eval", "knn", str(other))
    recipe = tmp_path / "byol.yaml"
    recipe.write_text("method: {name: byol}\nmodel: {predictor: '32-16'}\n")
    assert "method.name='barlow'" in err("eval", "knn", str(ck), "--config", str(recipe))
    r50 = tmp_path / "r50.yaml"
    r50.write_text("model: {backbone: resnet50}\n")
    assert "model.backbone" in err("export", str(ck), str(tmp_path / "e"), "--config", str(r50))
    state = checkpoint.load(ck)
    state["model"].pop("backbone.layer4.1.bn2.weight")
    checkpoint.save(tmp_path / "cut", 2, state, keep=1)
    assert "missing 1 keys (backbone.layer4.1.bn2.weight" in err("eval", "knn", str(tmp_path / "cut"))
    (tmp_path / "empty").mkdir()
    assert "no valid checkpoint" in err("eval", "knn", str(tmp_path / "empty"))
    head = tmp_path / "head.pt"
    torch.save({"weight": torch.zeros(10, 2048), "bias": torch.zeros(10), "mean": torch.zeros(2048),
                "std": torch.ones(2048), "classes": list("0123456789")}, head)
    assert "2048-d features" in err("export", str(ck), str(tmp_path / "e"), "--head", str(head))
    assert "teacher" in err("eval", "knn", str(ck), "--weights", "teacher")


def test_plots_and_quality_table(tmp_path, capsys):
    assert cli.main(["bench", "quality", "--methods", "barlow", "--data", "digits,photos", "--epochs", "1",
                     "--linear-epochs", "2", "--out-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
                     "--set", "run.steps=2", "--set", "data.batch_size=32", "--set", "data.image_size=16", "--set",
                     "model.projector=32-16", "--copies", "1"]) == 0
    table = (tmp_path / "res" / "quality.md").read_text()
    for source in ("digits", "photos"):
        part = table.split(f"**{source}**")[1].split("**")[0]
        for name in ("| barlow | 2 |", "| random_init | 0 |", "| supervised | 2 |"):
            assert name in part, (source, name)
        for png in ("training", "linear"):
            assert (tmp_path / "res" / f"quality_{source}_{png}.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "res" / "quality.csv").read_text().splitlines()
    assert rows[0].startswith("op,provider,mode")
    assert sum(",digits/knn10shot/seed0," in r for r in rows) == 3
    assert sum(",photos/linear/seed0," in r for r in rows) == 3
    runs = str(tmp_path / "runs" / "digits" / "seed0")
    assert cli.main(["eval", "plot", runs, "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "quality_training.png").exists()
    with pytest.raises(ValueError, match="no run folders"):
        bench_quality.plots.quality_plots([str(tmp_path / "res")], tmp_path / "x")
    with pytest.raises(SystemExit, match="--data"):
        bench_quality.main(["--data", "cifar"])
    with pytest.raises(SystemExit, match="--seeds"):
        bench_quality.main(["--seeds", "0,x"])


def test_quality_table_spread_over_seeds_and_the_learns_column():
    """Means over seeds with the sample standard deviation; gains paired by seed; 'learns' needs every seed to clear
    every bar."""
    def run(knn10, linear, erank):
        return {"knn": 80.0, "knn10shot": knn10, "linear": linear, "erank": erank, "steps": 5, "train_s": 10.0}

    table = {"digits": {"a": {0: run(70, 90, 150), 1: run(72, 92, 120)},
                        "b": {0: run(70, 90, 150), 1: run(60, 92, 150)},
                        "random_init": {0: run(58, 85, 200), 1: run(60, 87, 200)}},
             "photos": {"a": {0: run(30, 50, 100)}, "random_init": {0: run(20, 40, 100)}}}
    md = bench_quality.render(table, {"device": "d", "torch": "t", "fusedssl": "f", "git": "g", "date": "x"}, 5)
    assert "seeds 0, 1 (digits); 0 (photos)" in md
    a = next(line for line in md.splitlines() if line.startswith("| a |"))
    b = next(line for line in md.splitlines() if line.startswith("| b |"))
    assert "| 71.0 ± 1.4 % | +12.0 ± 0.0 pts |" in a and "| 91.0 ± 1.4 % | +5.0 ± 0.0 pts |" in a
    assert "| 135.0 ± 21.2 | yes |" in a
    assert "| no (1/2 seeds) |" in b  # seed 1 gains 0 points on 10-shot kNN


def test_quality_table_only_joins_seeds_measured_by_separate_calls(tmp_path):
    """--table-only renders quality.md from quality.csv alone: seeds appended by separate calls (other commits) make
    one row per method, a re-measured number replaces the older one, and a data set or method not asked for stays
    out; without the CSV it says which file is missing."""
    from fusedssl.bench import harness

    def rows(name, seed, knn10, git, steps=5):
        env = {"n": steps, "d": 28, "dtype": "fp32", "device": "d", "torch": "t", "triton": "tr", "fusedssl": "f",
               "git": git, "date": "x"}
        top1 = {"knn": 80.0, "knn10shot": knn10, "linear": 90.0, "online_probe": 70.0}
        out = [{"op": "quality", "provider": name, "mode": f"digits/{k}/seed{seed}", "metric": "top1",
                "value": f"{v:.2f}", "unit": "%", **env} for k, v in top1.items()]
        out += [{"op": "quality", "provider": name, "mode": f"digits/pretrain/seed{seed}", "metric": "train_s",
                 "value": "12", "unit": "s", **env},
                {"op": "quality", "provider": name, "mode": f"digits/val_features/seed{seed}",
                 "metric": "effective_rank", "value": "150.0", "unit": "dims", **env}]
        return out

    csv_path = tmp_path / "quality.csv"
    harness.append_csv(csv_path, rows("barlow", 0, 71.0, "g1") + rows("random_init", 0, 60.0, "g1", 0)
                       + rows("vicreg", 0, 99.0, "g1"))
    harness.append_csv(csv_path, rows("barlow", 1, 50.0, "g2") + rows("random_init", 1, 62.0, "g2", 0))
    harness.append_csv(csv_path, rows("barlow", 1, 73.0, "g3"))  # seed 1 measured again: this one counts
    photos = [{**r, "mode": r["mode"].replace("digits/", "photos/")} for r in rows("barlow", 0, 10.0, "g1")]
    harness.append_csv(csv_path, photos)
    assert bench_quality.main(["--methods", "barlow", "--results", str(tmp_path), "--table-only",
                               "--out-dir", str(tmp_path / "no-runs")]) == 0
    md = (tmp_path / "quality.md").read_text()
    assert "seeds 0, 1." in md and "git g1, g2, g3" in md and "photos" not in md and "vicreg" not in md
    barlow = next(line for line in md.splitlines() if line.startswith("| barlow |"))
    assert "| 72.0 ± 1.4 % | +11.0 ± 0.0 pts |" in barlow
    assert bench_quality.main(["--methods", "barlow", "--results", str(tmp_path), "--table-only", "--seeds", "1",
                               "--out-dir", str(tmp_path / "no-runs")]) == 0
    assert "| 73.0 % | +11.0 pts |" in (tmp_path / "quality.md").read_text()
    with pytest.raises(SystemExit, match="quality.csv"):
        bench_quality.main(["--results", str(tmp_path / "empty"), "--table-only"])
