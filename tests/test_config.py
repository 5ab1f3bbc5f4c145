"""Config: recipes load, unknown keys and wrong types are rejected with the key named, YAML 1.1 pitfalls pinned."""

from pathlib import Path

import pytest
from fusedssl.engine import config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    """Every recipe (demo and published) validates and its model suits its method (predictor, teacher)."""
    from fusedssl.engine import methods

    cfg = config.load(path)
    assert cfg.method.name in methods.METHODS
    methods.check_model(methods.build(cfg.method, backends="torch"), cfg.model)


def test_published_recipes_cover_the_reference_settings():
    """The published settings the engine issue names, with their key numbers (methods.md §12.1)."""
    pub = {p.stem: config.load(p) for p in CONFIGS if p.parent.name == "published"}
    bt = pub["barlow_imagenet_r50_1000ep"]
    assert (bt.model.projector, bt.data.batch_size, bt.run.epochs, bt.optim.bias_lr_ratio) == \
        ("8192-8192-8192", 2048, 1000, 0.024)
    mssl = pub["matrix_ssl_imagenet_r50_100ep"]
    assert (mssl.model.backbone, mssl.data.batch_size, mssl.run.epochs, mssl.optim.base_lr) == \
        ("resnet50", 1024, 100, 0.5)
    assert pub["kernel_ssl_imagenet_r50_100ep"].method.kernel_ssl.hsic_weight == 0.003
    assert {k for k in pub if k.startswith("frossl")} == {"frossl_cifar10_r18_1000ep", "frossl_stl10_r18_500ep",
                                                          "frossl_imagenet100_r18_400ep"}
    assert pub["directpred_stl10_r18_100ep"].data.image_size == 96


def test_folder_source_needs_a_root():
    with pytest.raises(config.ConfigError, match="data.root"):
        config.load(None, ["data.source=folder"])


def test_overrides_are_typed():
    cfg = config.load(None, ["optim.base_lr=1e-4", "data.batch_size=64", "run.channels_last=false",
                             "data.crop_scale=[0.3, 1]", "method.name=vicreg"])
    assert cfg.optim.base_lr == 1e-4 and isinstance(cfg.optim.base_lr, float)  # PyYAML reads 1e-4 as a string
    assert cfg.data.batch_size == 64 and cfg.run.channels_last is False
    assert cfg.data.crop_scale == (0.3, 1.0) and cfg.method.name == "vicreg"


@pytest.mark.parametrize("override,message", [
    ("optim.base_rl=0.1", r"unknown config key optim.base_rl; did you mean optim.base_lr"),
    ("optimizer.name=sgd", r"unknown config key optimizer"),
    ("data.batch_size=12.5", r"data.batch_size: expected an integer"),
    ("data.batch_size=true", r"data.batch_size: expected an integer"),
    ("run.channels_last=no", r"run.channels_last: expected true or false"),  # YAML 1.1 'no' is False: rejected too
    ("run.channels_last=1", r"run.channels_last: expected true or false"),
    ("optim.base_lr=fast", r"optim.base_lr: expected a number"),
    ("model.projector=512", None),
    ("model.projector=big", r"model.projector='big'"),
    ("method.name=dino", r"method.name='dino' is not one of"),
    ("data.crop_scale=[0.5]", r"data.crop_scale: expected 2 values"),
    ("data.crop_scale=[0.9, 0.2]", r"data.crop_scale must satisfy"),
    ("data.flip_p=1.5", r"data.flip_p must be a probability"),
    ("run.name=3", r"run.name: expected a string"),
    ("method.barlow=3", r"method.barlow: expected a mapping"),
    ("nonsense", r"expected section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    if message is None:
        config.load(None, [override])
        return
    with pytest.raises(config.ConfigError, match=message):
        config.load(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(config.ConfigError, match=r"does not exist"):
        config.load(tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(config.ConfigError, match=r"must hold a mapping"):
        config.load(p)
    p.write_text("run: {name: [unclosed\n")
    with pytest.raises(config.ConfigError, match=r"not valid YAML"):
        config.load(p)


def test_round_trip_through_dict():
    cfg = config.load(None, ["method.name=kernel_ssl", "data.crop_scale=[0.3, 0.9]"])
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_method_defaults_follow_the_spec():
    cfg = config.Config()
    assert cfg.method.barlow.lam == 0.0051 and cfg.method.barlow_hsic.off_diagonal_target == -1.0
    assert cfg.method.barlow_hsic.lam == 1 / 128 and cfg.method.barlow_hsic.normalize == "tsai"
    assert cfg.method.kernel_ssl.hsic_weight == 0.003 and cfg.method.matrix_ssl.hsic_weight == 0.0
    assert (cfg.method.vicreg.sim_coeff, cfg.method.vicreg.std_coeff, cfg.method.vicreg.cov_coeff) == (25, 25, 1)
    assert cfg.method.directcopy.convert == 1.0 and cfg.method.directpred.rho == 0.3
