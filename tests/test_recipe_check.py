"""What of BatchNorm's grouping changes a preset's recipe (review paper #2): the images a BatchNorm normalises over,
the whole step's batch in the recipe. ``--no-sync-bn`` on one process changes nothing; ``--accumulate`` that splits
the batch of a model with BatchNorm does. One function decides (``reste.rundir.recipe_free``), for the
run's notes and for the report's published number alike."""

from __future__ import annotations

from torch import nn

from reste import engine
from reste.config import TrainConfig, config_from_preset
from reste.experiments.report import trained_preset
from reste.rundir import recipe_free

PRESET = "cifar10-resnet20-1w1a"


def test_no_sync_bn_on_one_process_keeps_the_recipe_and_under_torchrun_changes_it():
    idle = config_from_preset(PRESET, sync_bn=False)
    assert engine.preset_changes(idle) == {} and engine.recipe_notes(idle) == []
    assert trained_preset(idle) == PRESET  # the report gives the published number (a sweep's run is one process)
    apart = config_from_preset(PRESET, sync_bn=False, batch_size=64)  # 4 processes of 64, each normalised apart
    assert engine.preset_changes(apart, 4) == {"sync_bn": (True, False)}
    assert engine.recipe_notes(apart, 4) == [f"note: this run changes preset {PRESET}'s recipe: sync_bn False "
                                             "(preset: True)"]
    assert engine.preset_changes(config_from_preset(PRESET, batch_size=64), 4) == {}  # synchronised: the recipe


def test_accumulate_that_splits_the_batch_of_a_model_with_batch_norm_changes_the_recipe():
    split = config_from_preset(PRESET, accumulate=4)  # BatchNorm over micro-batches of 64, not the batch of 256
    assert engine.preset_changes(split) == {"accumulate": (1, 4)}
    assert engine.recipe_notes(split) == [f"note: this run changes preset {PRESET}'s recipe: accumulate 4 "
                                          "(preset: 1)"]  # (named by field in Python; --accumulate on the command line)
    assert trained_preset(split) is None and trained_preset(config_from_preset(PRESET, accumulate=1)) == PRESET
    assert "accumulate" in recipe_free(config_from_preset(PRESET).resolve())  # one batch: nothing split


def test_accumulate_keeps_the_recipe_of_a_model_without_batch_norm(isolated):
    from reste.models import ConvBuilder, register_model

    @register_model(dataset="digits")
    def recipe_check_mlp(*, num_classes: int, conv: ConvBuilder) -> nn.Module:
        return nn.Sequential(nn.Flatten(), conv.linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))

    plain = TrainConfig(model="recipe_check_mlp", epochs=1, batch_size=64, accumulate=4).resolve()
    assert "accumulate" in recipe_free(plain)
    assert "accumulate" not in recipe_free(TrainConfig(epochs=1, batch_size=64, accumulate=4).resolve())
