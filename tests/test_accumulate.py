"""Gradient accumulation (``--accumulate N``): a step of batch B trained as N micro-batches of B/N.

The gradient of an accumulated step is the whole batch's mean gradient, up to float rounding; everything counted
per step (the learning rate and estimator schedules, the step count, the indicators, the checkpoints' step) is as
without accumulation. BatchNorm normalises over each micro-batch, so only a model without batch statistics (here:
BatchNorm held in eval mode) trains the same weights either way.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import signal

import pytest
import torch
from torch import nn

from reste import engine, rundir
from reste.checkpoint import load_checkpoint
from reste.cli import main
from reste.config import TrainConfig
from reste.errors import UsageError
from reste.indicators import EquilibriumMeter
from cli_checks import one_line_error
from run_checks import stop_in_epoch_2

EPS64 = torch.finfo(torch.float64).eps


def quiet(_msg):
    pass


def small(**kw):
    base = dict(dataset="digits", epochs=2, batch_size=64, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_a_batch_splits_into_equal_micro_batches_and_a_short_one_into_near_equal_ones():
    assert engine.micro_batches(64, 16) == [16, 16, 16, 16]
    assert engine.micro_batches(750, 250) == [250, 250, 250]
    assert engine.micro_batches(100, 64) == [50, 50]  # an epoch's last batch: no micro-batch above 64
    assert engine.micro_batches(29, 16) == [15, 14]
    assert engine.micro_batches(5, 16) == [5]


@pytest.mark.parametrize("accumulate, batch, match", [
    (3, 64, "--accumulate 3 does not divide --batch-size 64"),
    (0, 64, "--accumulate must be a positive integer"),
    (-2, 64, "--accumulate must be a positive integer"),
    (2.0, 64, "--accumulate must be int"),
    (True, 64, "--accumulate must be int"),
])
def test_an_accumulate_that_is_not_a_positive_divisor_of_the_batch_is_refused(accumulate, batch, match):
    with pytest.raises(UsageError, match=match):
        small(accumulate=accumulate, batch_size=batch).resolve()


def test_the_command_line_refuses_a_bad_accumulate_in_one_line(capsys, tmp_path):
    line = one_line_error(capsys, "train", "--accumulate", "3", "--out", str(tmp_path / "r"))
    assert "--accumulate 3 does not divide --batch-size 64" in line and "pick a divisor of 64" in line
    line = one_line_error(capsys, "train", "--accumulate", "0", "--out", str(tmp_path / "r"))
    assert "--accumulate must be a positive integer" in line
    line = one_line_error(capsys, "train", "--accumulate", "2", "--cuda-graphs", "--out", str(tmp_path / "r"))
    assert "--cuda-graphs captures one batch's step" in line and "drop --cuda-graphs" in line
    assert not (tmp_path / "r").exists()


def test_micro_batches_of_one_sample_are_refused_or_left_out_for_batchnorm(capsys, tmp_path):
    """digits_1w1a has a BatchNorm1d: micro-batches of one sample cannot train; an epoch's last batch that would
    train one (1437 images, batches of 64: the last holds 29, in micro-batches of 2 ... 2 and 1) is left out."""
    line = one_line_error(capsys, "train", "--accumulate", "64", "--epochs", "1", "--threads", "1", "--out",
                          str(tmp_path / "r"))
    assert "cannot train on batches of one sample (--batch-size 64 in 64 micro-batches" in line
    assert "lower --accumulate" in line
    lines = []
    engine.train(small(epochs=1, accumulate=32), tmp_path / "ok", progress=False, log=lines.append)
    assert any("last batch of each epoch would train a micro-batch of one sample" in x and "(1408 of 1437" in x
               for x in lines), lines


def _float64_without_batch_statistics(monkeypatch):
    """Build each model in float64 with its BatchNorm layers held in eval mode (running statistics, which a
    fresh model holds at 0 and 1: an affine map), so that a micro-batch computes what the whole batch computes
    for its samples."""
    original = engine.build_model

    def build(config, num_classes):
        model = original(config, num_classes).double()
        forward, train = model.forward, model.train
        model.forward = lambda x: forward(x.double())

        def train_without_batch_statistics(mode=True):
            train(mode)
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
            return model

        model.train = train_without_batch_statistics
        return model

    monkeypatch.setattr(engine, "build_model", build)


def test_accumulated_steps_train_the_weights_of_whole_batches(tmp_path, monkeypatch, one_thread):
    """Two epochs of batch 64 (23 steps each, the last of 29 images) as 1, 4 and 8 micro-batches: the same
    weights, schedules, test metrics and indicators, to float64 rounding.

    1W/32A: with binary activations a binary layer's outputs are multiples of the weight scale, full of exact
    ties (max-pool, sign at 0) that the last bit of a differently blocked sum breaks one way or the other, and one
    broken tie changes the training; real activations have none. The rounding: each weight differs by a few
    float64 ulps per step (sums over 64 samples grouped differently), about 1e-14 after 46 steps of weights below
    1; 1e-12 leaves room and is nine orders of magnitude below one step's change (lr 0.1 times a gradient of
    1e-3 or more). The train loss is computed in float32 (the engine's cross-entropy), so it agrees to float32's
    rounding.
    """
    _float64_without_batch_statistics(monkeypatch)
    updates, real = [], EquilibriumMeter.update
    monkeypatch.setattr(EquilibriumMeter, "update", lambda self, *a, **k: updates.append(1) or real(self, *a, **k))
    runs, steps = {}, 2 * -(-1437 // 64)
    for n in (1, 4, 8):
        runs[n] = engine.train(small(accumulate=n, a32=True, indicators="general"), tmp_path / f"n{n}",
                               progress=False, log=quiet)
        assert len(updates) == steps  # once per optimizer step, not per micro-batch
        updates.clear()
    whole = load_checkpoint(tmp_path / "n1" / "last.pt")
    for n in (4, 8):
        micro = load_checkpoint(tmp_path / f"n{n}" / "last.pt")
        assert micro["model"].keys() == whole["model"].keys()
        for key, value in whole["model"].items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                torch.testing.assert_close(micro["model"][key], value, rtol=0, atol=1e-12, msg=key)
        for a, b in zip(rundir.read_metrics(tmp_path / "n1"), rundir.read_metrics(tmp_path / f"n{n}"),
                        strict=True):
            assert (a["epoch"], a["lr"], a["o"]) == (b["epoch"], b["lr"], b["o"])
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)  # float32 loss
            for key in ("train_acc", "test_acc", "test_top5"):
                assert b[key] == a[key], key
            # the meter read each step's accumulated gradient: the batch's, whatever the split
            for key in ("test_loss", "estimating_error", "gradient_stability"):
                assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e3 * EPS64), key
        assert runs[n]["indicators"] == pytest.approx(runs[1]["indicators"], rel=1e-9)


def test_an_accumulated_step_steps_the_optimizer_and_the_grad_scaler_once(tmp_path, monkeypatch, linear_digits):
    """--amp fp16 (emulated on the CPU, with its GradScaler): one optimizer step and one scaler update per step,
    the gradients unscaled once, whatever the micro-batches. (A model of linear layers: fp16's convolutions on the
    CPU take seconds a step.)"""
    counts = {"step": 0, "update": 0, "unscale": 0}
    for name in counts:
        real = getattr(torch.amp.GradScaler, "unscale_" if name == "unscale" else name)

        def counted(self, *args, _real=real, _name=name, **kw):
            counts[_name] += 1
            return _real(self, *args, **kw)

        monkeypatch.setattr(torch.amp.GradScaler, "unscale_" if name == "unscale" else name, counted)
    engine.train(small(epochs=1, accumulate=4, amp="fp16", threads=1, model=linear_digits), tmp_path / "r",
                 progress=False, log=quiet)
    steps = -(-1437 // 64)
    assert counts == {"step": steps, "update": steps, "unscale": steps}


def test_under_ddp_only_the_last_micro_batch_all_reduces(tmp_path):
    """A real DistributedDataParallel (one gloo process): its communication hook runs once per optimizer step
    (no_sync around the micro-batches before the last), and the step equals an unaccumulated one."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        base = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
        images, target = torch.randn(64, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (64,))
        weights = {}
        for n in (1, 4):
            net = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
            reduced = []

            def hook(state, bucket, _log=reduced):
                _log.append(bucket.index())
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut

            net.register_comm_hook(None, hook)
            run = engine._Run.__new__(engine._Run)
            run.config = small(accumulate=n)
            run.graphed, run.device, run.net, run.ddp = None, torch.device("cpu"), net, net
            run.optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
            run.scaler = torch.amp.GradScaler("cpu", enabled=False)
            for _ in range(3):
                run.step(images, target)
            assert len(reduced) == 3 * len(set(reduced)), (n, reduced)  # each bucket once a step
            weights[n] = net.module.state_dict()
        for key, value in weights[1].items():
            torch.testing.assert_close(weights[4][key], value, rtol=0, atol=1e-14)
    finally:
        dist.destroy_process_group()


def test_a_mid_epoch_checkpoint_of_an_accumulating_run_resumes_exactly(tmp_path, one_thread):
    """SIGUSR1 at step 3 of epoch 2 of an --accumulate 4 run: the checkpoint counts optimizer steps, and the
    resume ends with the metrics and weights of the uninterrupted run."""
    cfg = small(accumulate=4, indicators="general", batch_size=256)
    engine.train(cfg, tmp_path / "full", progress=False, log=quiet)
    stop_in_epoch_2(cfg, tmp_path / "cut", quiet, step=3, steps=6)
    engine.resume(tmp_path / "cut", progress=False, log=quiet)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "time"} for m in ms]  # noqa: E731
    assert strip(rundir.read_metrics(tmp_path / "full")) == strip(rundir.read_metrics(tmp_path / "cut"))
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("full", "cut"))
    assert all(torch.equal(v, b[k]) for k, v in a.items() if isinstance(v, torch.Tensor))


def test_a_resume_may_change_accumulate_and_names_the_batchnorm_caveat(tmp_path, monkeypatch):
    """--accumulate is free to change on resume (a smaller GPU, the same step's gradient): no --force, a note on
    what BatchNorm now normalises over, config.json records the new value; inside an epoch too."""
    cfg = small(epochs=3, threads=1)
    original = engine._Run.train_epoch

    def stop_in_epoch_2(self, epoch, *args):
        if epoch == 1:
            self.stop.signum = signal.SIGTERM
        return original(self, epoch, *args)

    monkeypatch.setattr(engine._Run, "train_epoch", stop_in_epoch_2)
    with pytest.raises(engine.Preempted):
        engine.train(cfg, tmp_path / "r", progress=False, log=quiet)
    monkeypatch.setattr(engine._Run, "train_epoch", original)
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)  # inside epoch 2
    lines = []
    engine.resume(tmp_path / "r", {"accumulate": 4}, progress=False, log=lines.append)
    note = next(x for x in lines if "--accumulate" in x)
    assert ("the run trained with --accumulate 1 and continues with 4" in note
            and "BatchNorm now normalises over 16 images instead of 64" in note), note
    assert json.loads((tmp_path / "r" / "config.json").read_text())["accumulate"] == 4
    assert len(rundir.read_metrics(tmp_path / "r")) == 3


def test_a_run_says_how_it_splits_its_batch(tmp_path):
    lines = []
    engine.train(small(epochs=1, accumulate=4, threads=1), tmp_path / "r", progress=False, log=lines.append)
    assert "batch 64, in 4 micro-batches of 16, sgd" in lines[0]
    assert any(x.startswith("note: --accumulate 4: each step's gradient is the batch of 64's")
               and "BatchNorm normalises over each micro-batch of 16 images" in x for x in lines), lines
    from reste.runinfo import show_run

    assert "1 epoch, batch 64, in 4 micro-batches of 16, sgd lr 0.1" in show_run(tmp_path / "r")


def test_accumulate_is_a_machine_setting_not_a_recipe_or_identity_change():
    """Free on resume, and no part of a sweep run's identity (nor a grid axis): the same step's gradient, split to
    fit memory. For a model with BatchNorm it is a change of a preset's recipe all the same (review paper #2)."""
    from reste.experiments.identity import config_key
    from reste.experiments.sweep import axis_kind

    assert "accumulate" in rundir.RESUME_FREE
    cfg = small().resolve()
    assert config_key(dataclasses.replace(cfg, accumulate=4)) == config_key(cfg)
    preset = TrainConfig(preset="cifar10-resnet20-1w1a", dataset="cifar10", model="resnet20_1w1a", epochs=1000,
                         batch_size=256, eval_batch_size=128, warm_up=5, optimizer="sgd", lr=0.1, weight_decay=1e-4,
                         augment=True, estimator_options={"o_end": 3.0}, accumulate=4)
    # (review paper #2) BatchNorm then normalises over each micro-batch: a change of the recipe, which the run names
    assert engine.preset_changes(preset) == {"accumulate": (1, 4)}
    with pytest.raises(UsageError, match="'accumulate' is not a grid axis"):
        axis_kind("accumulate", ["digits_1w1a"])


def test_help_names_accumulate(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--accumulate N" in text and "not with --cuda-graphs" in text and "may change when a run is resumed" in text
