"""The paper's presets, golden: every recipe field and every published number, against a table written from
/work/shared/SPEC.md sections 6 and 7 (not from reste.config), and independent of the data sets' defaults."""

from __future__ import annotations

import dataclasses

import pytest

from reste import datasets
from reste.config import PRESETS, TrainConfig, config_from_preset
from reste.engine import planned_config

# SPEC section 6: SGD, momentum 0.9, weight decay 1e-4 on all parameters, lr 0.1, cosine decay; CIFAR-10: crop and
# flip, 1000 epochs, batch 256 (ResNet-18: 96 and 2000 epochs), eval batch 128, warm-up (5 epochs: 0.02 .. 0.10),
# o_end 3; ImageNet: random resized crop and flip, 250 epochs, batch 750, eval batch 128, no warm-up, o_end 3.
# Section 4: one weight scale per layer (mean |W|). Every preset trains fp32, eager.
COMMON = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, augment=True, scaling="layer", amp="none",
              cuda_graphs=False, seed=0)
CIFAR = dict(COMMON, dataset="cifar10", epochs=1000, batch_size=256, eval_batch_size=128, warm_up=5)
IMAGENET = dict(COMMON, dataset="imagenet", epochs=250, batch_size=750, eval_batch_size=128, warm_up=0)
RESTE = dict(o=1.0, o_end=3.0, t=1.5, interval=0.1, schedule="cosine")  # section 2's defaults, o from 1 to 3

# name: (base recipe, model, a32, estimator, the estimator options section 2 or 8 gives, top-1, top-5)
GOLDEN = {
    "cifar10-resnet20-1w1a": (CIFAR, "resnet20_1w1a", False, "reste", RESTE, 86.75, None),
    "cifar10-resnet20-1w32a": (CIFAR, "resnet20_1w1a", True, "reste", RESTE, 91.32, None),
    "cifar10-resnet20-bireal-1w1a": (CIFAR, "resnet20_bireal_1w1a", False, "reste", RESTE, 87.92, None),
    "cifar10-resnet18-1w1a": (dict(CIFAR, epochs=2000, batch_size=96), "resnet18_1w1a", False, "reste", RESTE,
                              92.63, None),
    "cifar10-vgg-small-1w1a": (CIFAR, "vgg_small_1w1a", False, "reste", RESTE, 92.55, None),
    "cifar10-resnet20-ste": (CIFAR, "resnet20_1w1a", False, "ste", dict(clip=1.0), 84.44, None),
    "cifar10-resnet20-dsq": (CIFAR, "resnet20_1w1a", False, "dsq", dict(alpha=0.2), 84.11, None),
    "cifar10-resnet20-ede": (CIFAR, "resnet20_1w1a", False, "ede", dict(t_min=0.1, t_max=10.0), 85.20, None),
    "cifar10-resnet20-fda": (CIFAR, "resnet20_1w1a", False, "fda", dict(w=0.1, n=9, n_end=18), 85.80, None),
    "cifar10-resnet20-rbnn": (CIFAR, "resnet20_1w1a", False, "rbnn", dict(t_min=0.01, t_max=10.0), 85.87, None),
    "cifar10-resnet20-o10": (CIFAR, "resnet20_1w1a", False, "reste", dict(RESTE, o_end=10.0), 82.86, None),
    "imagenet-resnet18-1w1a": (IMAGENET, "imagenet_resnet18_1w1a", False, "reste", RESTE, 60.88, 82.59),
    "imagenet-resnet18-1w32a": (IMAGENET, "imagenet_resnet18_1w1a", True, "reste", RESTE, 67.40, 87.20),
    "imagenet-resnet34-1w1a": (IMAGENET, "imagenet_resnet34_1w1a", False, "reste", RESTE, 65.05, 85.78),
    "imagenet-resnet34-1w32a": (IMAGENET, "imagenet_resnet34_1w1a", True, "reste", RESTE, 70.74, 89.50),
}


def test_the_golden_table_covers_every_preset():
    assert set(GOLDEN) == set(PRESETS)


def _check(name: str) -> None:
    recipe, model, a32, estimator, options, top1, top5 = GOLDEN[name]
    config = planned_config(config_from_preset(name))
    want = dict(recipe, model=model, a32=a32, estimator=estimator, preset=name)
    got = {key: getattr(config, key) for key in want}
    assert got == want, name
    assert {k: config.estimator_options[k] for k in options} == options, name
    assert (PRESETS[name].top1, PRESETS[name].top5) == (top1, top5), name


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_each_preset_resolves_to_the_papers_recipe_and_numbers(name):
    _check(name)


def test_a_change_of_a_data_sets_defaults_moves_no_preset(monkeypatch):
    """The presets write their recipe out: defaults changed for quick runs (a cifar10 and an imagenet that train Adam
    for 10 epochs without augmentation) leave every preset as the paper's."""
    quick = dict(model="resnet20", augment=False, optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=10,
                 batch_size=64, eval_batch_size=64, warm_up=0)
    for name in ("cifar10", "imagenet"):
        monkeypatch.setitem(datasets.SPECS, name, dataclasses.replace(datasets.SPECS[name], defaults=quick))
    assert TrainConfig(dataset="cifar10").resolve().optimizer == "adam"  # the patch takes
    for name in GOLDEN:
        _check(name)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_each_preset_names_the_settings_it_would_otherwise_take_from_trainconfigs_defaults(name):
    """momentum, scaling and a32 have TrainConfig defaults rather than a data set's: a preset sets them itself."""
    recipe, _, a32, *_ = GOLDEN[name]
    settings = PRESETS[name].settings
    assert {k: settings.get(k) for k in ("momentum", "scaling", "a32")} == dict(
        momentum=recipe["momentum"], scaling=recipe["scaling"], a32=a32), name


def test_a_flag_left_out_overrides_nothing():
    """(review mut7 #12) With `--a32`'s default False instead of None, the 1W/32A presets trained 1W1A, and every
    test passed (they read the presets, not the parser)."""
    from reste.cli import build_parser
    from reste.flags import overrides_from_args

    assert overrides_from_args(build_parser().parse_args(["train"])) == {}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_reste_train_preset_gives_the_preset_itself(name):
    from reste.cli import build_parser
    from reste.flags import config_from_args

    assert config_from_args(build_parser().parse_args(["train", "--preset", name])) == config_from_preset(name)


def test_a_path_is_taken_where_a_config_means_one():
    """(review types1, suggestion 1) TrainConfig(data_path=Path(...)) was refused ("--data-path must be str"), where
    every other path-taking function takes one; it is recorded as the string it is."""
    from pathlib import Path

    config = TrainConfig(dataset="fashion-mnist", data_path=Path("/data/fm"), tensorboard=Path("tb"))
    assert (config.data_path, config.tensorboard) == ("/data/fm", "tb")
    assert config.to_dict()["data_path"] == "/data/fm"
    assert config_from_preset("cifar10-resnet20-1w1a", data_path=Path("c10")).data_path == "c10"
    assert TrainConfig(plugins=[Path("mine.py"), "their_module"]).plugins == ["mine.py", "their_module"]
    assert TrainConfig(plugins=("their_module",)).plugins == ["their_module"]
