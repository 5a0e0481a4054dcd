"""reste.integrations.lightning.BinarizationCallback: a real lightning.Trainer on digits."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import reste

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from reste.integrations.lightning import BinarizationCallback  # noqa: E402

EPOCHS = 2


def digits_loader(batch_size: int = 128) -> torch.utils.data.DataLoader:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    data = torch.utils.data.TensorDataset((x - 0.3) / 0.4, torch.tensor(y))
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def float_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = reste.binarize(float_net(), "reste", o_end=3.0)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def fit(tmp_path, callback: BinarizationCallback, module: pl.LightningModule | None = None, **trainer_kw):
    module = module or Classifier()
    trainer = pl.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, **trainer_kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers and the like
        trainer.fit(module, digits_loader())
    return module, trainer


def logged_epochs(trainer) -> list[dict[str, float]]:
    """The rows of the CSV logger's metrics.csv, merged per epoch."""
    rows: dict[int, dict[str, float]] = {}
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        for row in csv.DictReader(f):
            epoch = int(row["epoch"])
            rows.setdefault(epoch, {}).update({k: float(v) for k, v in row.items() if v != "" and k != "epoch"})
    return [rows[e] for e in sorted(rows)]


def test_schedule_moves_and_indicators_are_logged(tmp_path):
    callback = BinarizationCallback(indicators=True)
    module, trainer = fit(tmp_path, callback, limit_train_batches=8)
    layers = reste.binary_layers(module.model)
    assert [n for n, _ in layers] == ["3"]  # the second conv; first conv and last linear stay float

    expected = reste.get_estimator("reste", o_end=3.0)
    expected.set_progress(EPOCHS - 1, EPOCHS)
    o = layers[0][1].weight_estimator.o
    assert o == pytest.approx(expected.o) and o > 1.0  # moved from 1 to the last epoch's value

    rows = logged_epochs(trainer)
    assert len(rows) == EPOCHS
    assert rows[0]["reste/o"] == pytest.approx(1.0)
    assert rows[1]["reste/o"] == pytest.approx(o)
    for row, hist in zip(rows, callback.history):
        for key in ("estimating_error", "gradient_stability"):
            value = row[f"reste/{key}"]
            assert math.isfinite(value) and value > 0, (key, value)
            assert value == pytest.approx(hist[key], rel=1e-6)
        assert "train_loss" in row  # the module's own logging is untouched
    # the error shrinks as o grows (F comes closer to sign)
    assert rows[1]["reste/estimating_error"] < rows[0]["reste/estimating_error"]
    assert callback.state_dict() == {"history": callback.history, "epochs": EPOCHS, "mode": "general", "o_end": 3.0}


def test_a_resume_with_another_max_epochs_says_the_schedule_jumps(tmp_path):
    module, trainer = fit(tmp_path, BinarizationCallback(epochs=4), limit_train_batches=2)  # 2 of 4 epochs
    trainer.save_checkpoint(tmp_path / "two.ckpt")

    def resume(max_epochs: int) -> list[str]:
        longer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                            callbacks=[BinarizationCallback()], enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, limit_train_batches=2)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            longer.fit(Classifier(), digits_loader(), ckpt_path=tmp_path / "two.ckpt")
        return [str(w.message) for w in record if "BinarizationCallback" in str(w.message)]

    told = resume(6)
    assert len(told) == 1 and "trained on a 4-epoch schedule and continues on a 6-epoch one: from epoch 3" in told[0]
    assert "learning rate" not in told[0]  # the user's scheduler's, not the callback's
    assert resume(4) == []  # the schedule's length unchanged: nothing to say
    # the callback used again for a fresh fit of another length: nothing was resumed, nothing to say (review JJ)
    callback, told = BinarizationCallback(), []
    for max_epochs in (2, 3):
        trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                             limit_train_batches=1)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer.fit(Classifier(), digits_loader())
        told += [str(w.message) for w in record if "BinarizationCallback" in str(w.message)]
    assert told == []
    # (review mut6 #8) and after a resume that had nothing left to train: its epochs are forgotten at its end
    callback = BinarizationCallback()
    for max_epochs, ckpt in ((2, tmp_path / "two.ckpt"), (3, None)):
        trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                             limit_train_batches=1)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer.fit(Classifier(), digits_loader(), ckpt_path=ckpt)
        assert [str(w.message) for w in record if "BinarizationCallback" in str(w.message)] == [], max_epochs


def test_module_attribute_epochs_and_no_indicators(tmp_path):
    callback = BinarizationCallback(epochs=4, module="model", prefix="bnn.")
    module, trainer = fit(tmp_path, callback, limit_train_batches=3)
    expected = reste.get_estimator("reste", o_end=3.0)
    expected.set_progress(EPOCHS - 1, 4)  # schedule over 4 epochs, 2 run
    assert reste.schedule_values(module.model)["o"] == pytest.approx(expected.o)
    rows = logged_epochs(trainer)
    assert [r["bnn.o"] for r in rows] == pytest.approx([1.0, expected.o])
    assert not any("estimating_error" in k for r in rows for k in r)


def test_indicators_once_per_optimizer_step(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reste.EquilibriumMeter, "update", lambda self, *a, **k: calls.append(1))
    monkeypatch.setattr(reste.EquilibriumMeter, "epoch_end", lambda self: {})
    fit(tmp_path, BinarizationCallback(indicators="paper"), limit_train_batches=6, accumulate_grad_batches=3)
    assert len(calls) == EPOCHS * 2  # 6 batches, a step every 3


class ManualClassifier(Classifier):
    """The same model and optimizer, under manual optimization with zero_grad() right after step()."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        self.manual_backward(nn.functional.cross_entropy(self(x), y))
        opt.step()
        opt.zero_grad()  # the gradients are gone by on_train_batch_end


def test_indicators_under_manual_optimization_match_the_automatic_ones(tmp_path):
    automatic = BinarizationCallback(indicators=True)
    fit(tmp_path, automatic, limit_train_batches=4)
    manual = BinarizationCallback(indicators=True)
    fit(tmp_path, manual, ManualClassifier(), limit_train_batches=4)  # raised 'has no gradient' at the first batch
    assert len(manual.history) == EPOCHS
    for a, m in zip(automatic.history, manual.history):
        assert m == pytest.approx(a, rel=1e-5)


def test_frozen_binary_layers_are_left_out_and_all_frozen_is_refused(tmp_path):
    class TwoBinary(Classifier):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            net = float_net()
            net.insert(6, nn.Conv2d(16, 16, 3, padding=1, bias=False))  # a second binary conv
            self.model = reste.binarize(net, "reste", o_end=3.0)
            self.model[3].requires_grad_(False)  # a frozen backbone layer

    callback = BinarizationCallback(indicators=True)
    module, _ = fit(tmp_path, callback, TwoBinary(), limit_train_batches=2)  # raised 'frozen' at the first step
    assert [n for n, _ in reste.binary_layers(module.model)] == ["3", "6"]
    assert all(h["gradient_stability"] > 0 for h in callback.history) and len(callback.history) == EPOCHS

    frozen = Classifier()
    frozen.model[3].requires_grad_(False)  # its only binary layer
    with pytest.raises(ValueError, match="every binary layer of the 'general' indicators is frozen"):
        fit(tmp_path, BinarizationCallback(indicators=True), frozen, limit_train_batches=1)


def test_a_resume_in_another_indicator_mode_is_refused(tmp_path):
    module, trainer = fit(tmp_path, BinarizationCallback(epochs=4, indicators=True), limit_train_batches=2)
    trainer.save_checkpoint(tmp_path / "general.ckpt")

    def resume(callback: BinarizationCallback) -> BinarizationCallback:
        longer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            limit_train_batches=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            longer.fit(Classifier(), digits_loader(), ckpt_path=tmp_path / "general.ckpt")
        return callback

    with pytest.raises(ValueError, match="saved indicator history is in the 'general' mode, this run's is 'paper'"):
        resume(BinarizationCallback(epochs=4, indicators="paper"))
    assert len(resume(BinarizationCallback(epochs=4, indicators=True)).history) == 3  # the same mode carries on
    ckpt = torch.load(tmp_path / "general.ckpt", weights_only=False)
    for state in ckpt["callbacks"].values():  # a checkpoint of before the mode was saved
        del state["mode"], state["o_end"]
    torch.save(ckpt, tmp_path / "general.ckpt")
    assert len(resume(BinarizationCallback(epochs=4, indicators="paper")).history) == 3


class Recording(Classifier):
    """Records o at every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(reste.schedule_values(self.model)["o"])
        return super().training_step(batch, batch_idx)


def test_a_one_epoch_schedule_warns_or_moves_per_step(tmp_path):
    def run(callback: BinarizationCallback, loader=None, limit=4) -> tuple[Recording, list[str]]:
        module = Recording()
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                             limit_train_batches=limit)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer.fit(module, digits_loader() if loader is None else loader)
        return module, [str(w.message) for w in record if "BinarizationCallback" in str(w.message)]

    module, told = run(BinarizationCallback())
    assert module.seen == [1.0] * 4  # o never moved, as before; now it is said
    assert len(told) == 1 and "per_step=True" in told[0]
    module, told = run(BinarizationCallback(per_step=True))
    expected = reste.get_estimator("reste", o_end=3.0)
    values = []
    for i in range(4):
        expected.set_progress(i / 4, 1)
        values.append(expected.o)
    assert module.seen == pytest.approx(values) and told == [] and values[-1] > values[1] > 1.0

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(digits_loader().dataset)

    with pytest.raises(ValueError, match="per_step=True.*needs the number of batches per epoch"):
        run(BinarizationCallback(per_step=True), torch.utils.data.DataLoader(Stream(), batch_size=64), limit=None)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="indicator mode"):
        BinarizationCallback(indicators="exact")
    with pytest.raises(ValueError, match="epochs"):
        BinarizationCallback(epochs=0)

    class FloatOnly(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.model = float_net()

    with pytest.raises(ValueError, match="no binary layers"):
        fit(tmp_path, BinarizationCallback(), FloatOnly())
    with pytest.raises(ValueError, match="no module attribute 'net'"):
        fit(tmp_path, BinarizationCallback(module="net"))


def test_core_does_not_import_lightning():
    code = ("import sys, reste; "
            "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_per_layer_logs_each_estimators_schedule_and_each_layers_indicators(tmp_path):
    """(Lightning review M3) per_layer=True logs what reste train --tensorboard logs per layer: every estimator's
    schedule values, so layers whose estimators differ each show theirs, and the two indicators of each layer at
    the epoch's last step; the run-level history stays the two indicators alone."""
    from reste.integrations.tensorboard import layer_schedules

    class TwoLayers(Classifier):
        def __init__(self) -> None:
            super().__init__()
            net = float_net()
            net.insert(6, nn.Conv2d(16, 16, 3, padding=1, bias=False))  # a second binary conv
            net.insert(7, nn.BatchNorm2d(16))
            self.model = reste.binarize(net, "reste", o_end=3.0)
            self.model[6].weight_estimator.o_end = 6.0  # one layer's own schedule

    callback = BinarizationCallback(indicators=True, per_layer=True)
    module, trainer = fit(tmp_path, callback, module=TwoLayers(), limit_train_batches=4)
    rows = logged_epochs(trainer)
    schedules = layer_schedules(module)  # the last epoch's values, named in the LightningModule, as logged
    assert {"schedule/model.3.weight_estimator/o", "schedule/model.6.weight_estimator/o"} <= set(schedules)
    for key, value in schedules.items():
        assert rows[-1][f"reste/{key}"] == pytest.approx(value)
    assert rows[-1]["reste/schedule/model.6.weight_estimator/o"] > rows[-1]["reste/schedule/model.3.weight_estimator/o"]
    for layer in ("model.3", "model.6"):
        for key in ("estimating_error", "gradient_stability"):
            assert all(math.isfinite(row[f"reste/indicators/{layer}/{key}"]) for row in rows)
    assert all(set(h) == {"estimating_error", "gradient_stability"} for h in callback.history)
    assert not any(k.startswith("reste/schedule/") for k in logged_epochs(fit(
        tmp_path / "plain", BinarizationCallback(), limit_train_batches=2)[1])[-1])  # off by default


def test_per_layer_indicators_are_read_at_the_last_step_though_validation_zeroes_the_gradients(tmp_path):
    """(review userE #3) Lightning zeroes the gradients before a validation run, which comes before the epoch's
    end: the per-layer gradient stability, read there, was never logged."""
    class Validated(Classifier):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    module = Validated()
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="logs"),
                         callbacks=[BinarizationCallback(indicators=True, per_layer=True)], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_train_batches=3,
                         limit_val_batches=1, num_sanity_val_steps=0)
    from reste.integrations import lightning as integration

    calls = []
    real = integration.layer_indicators

    def counted(meter, **kwargs):
        calls.append(1)
        return real(meter, **kwargs)

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setattr(integration, "layer_indicators", counted)
        warnings.simplefilter("ignore")
        trainer.fit(module, digits_loader(), digits_loader())
    assert len(calls) == EPOCHS  # once an epoch, at its last step (review rev11 #3: each step read them)
    rows = logged_epochs(trainer)
    assert all(math.isfinite(row["reste/indicators/model.3/gradient_stability"]) for row in rows), rows
    assert all("val_loss" in row for row in rows)


def test_an_epoch_cut_short_logs_its_own_per_layer_indicators_not_the_last_epochs(tmp_path):
    """(review mut10 #8) max_steps ends epoch 2 before its last batch: the per-layer values its end logs are read
    then, from its own step, not those epoch 1's last batch read (kept, they were logged again)."""
    from reste.integrations.tensorboard import layer_indicators

    callback = BinarizationCallback(indicators=True, per_layer=True)
    trainer = pl.Trainer(max_epochs=2, max_steps=6, limit_train_batches=4, accelerator="cpu", devices=1,
                         logger=CSVLogger(tmp_path, name="logs"), callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(), digits_loader())
    assert trainer.global_step == 6
    key = "indicators/model.3/estimating_error"
    first, second = (row["reste/" + key] for row in logged_epochs(trainer))
    assert second != first and second == pytest.approx(layer_indicators(callback.meter)[key], rel=1e-6)


def test_lightning_draws_the_epochs_batches_of_an_in_memory_loader_and_resumes_exactly(tmp_path):
    """(review userE #1) reste's in-memory loader moved to the next epoch at every iteration, and Lightning iterates
    a loader more often than once an epoch: a fit resumed from its checkpoint drew other batches (weights 0.039
    apart). Lightning sets each epoch through loader.sampler.set_epoch, which the loader now takes."""
    from reste.data import load_datasets, make_loaders

    train, test, _ = load_datasets("digits")

    def run(max_epochs, ckpt=None, save=None):
        loader = make_loaders(train, test, batch_size=256, eval_batch_size=512, seed=3)[0]
        module = Classifier()
        trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                             callbacks=[BinarizationCallback()], enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, loader, ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return module.state_dict()

    whole = run(2)
    run(1, save=tmp_path / "one.ckpt")
    resumed = run(2, ckpt=tmp_path / "one.ckpt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole if torch.is_tensor(whole[k]))


def test_a_fit_resumed_inside_an_epoch_trains_the_epochs_remaining_batches(tmp_path):
    """(review integ1, suggestion 1) Lightning keeps a loader's state_dict in its checkpoints; reste's in-memory
    loader had none, so a fit resumed from a checkpoint written inside an epoch trained that epoch's first batches
    again (and Lightning warned the loader is not resumable). It now trains the batches an uninterrupted fit does,
    drawing the skipped ones again (an augmenting loader's generator moves as before), and ends with its weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from reste.data.memory import RandomCropFlip, TensorLoader
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0

    def loader(batch_size=256):
        return TensorLoader(images, torch.tensor(y), batch_size=batch_size, shuffle=True, seed=3,
                            augment=RandomCropFlip(8, 1))

    class Seen(Classifier):
        def __init__(self):
            super().__init__()
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch_idx, float(batch[0].sum()), int(batch[1].sum())))
            return super().training_step(batch, batch_idx)

    def run(ckpt=None, every=None, data=None):
        module = Seen()
        callbacks = [BinarizationCallback()]
        if every:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1))
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=bool(every))
        with warnings.catch_warnings(record=True) as told:
            warnings.simplefilter("always")
            trainer.fit(module, data or loader(), ckpt_path=ckpt)
        return module, [str(w.message) for w in told]

    whole, _ = run(every=4)  # 8 batches an epoch: checkpoints after 4 and 12 steps are inside epochs 0 and 1
    # (review diff28, suggestion 3) and from the checkpoint of an epoch's last batch, whose resume Lightning starts
    # without the next epoch's start hook: that epoch trained at the saved one's schedule
    for name, done in (("epoch=0-step=4.ckpt", 4), ("epoch=1-step=12.ckpt", 12), ("epoch=0-step=8.ckpt", 8)):
        resumed, told = run(ckpt=tmp_path / name)
        assert resumed.seen == whole.seen[done:]
        assert not any("not resumable" in m for m in told)
        want, got = whole.state_dict(), resumed.state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want if torch.is_tensor(want[k]))
    # (review diff28 #6) a checkpoint of an older reste, whose loader kept no state: said, as Lightning did
    for name in ("epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt"):
        old = torch.load(tmp_path / name, weights_only=False)
        del old["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        torch.save(old, tmp_path / f"old-{name}")
    _, told = run(ckpt=tmp_path / "old-epoch=0-step=4.ckpt")
    assert sum("holds no state of the train loader" in m for m in told) == 1  # (review mut11 #16) once, not a batch
    assert not any("holds no state" in m for m in run(ckpt=tmp_path / "epoch=0-step=4.ckpt")[1])
    # (review mut11 #16) not from an epoch's last batch (nothing is drawn again), nor to a plain DataLoader (of
    # which Lightning itself warns)
    assert not any("holds no state" in m for m in run(ckpt=tmp_path / "old-epoch=0-step=8.ckpt")[1])
    plain = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.tensor(y)), batch_size=256,
                                        shuffle=True)
    assert not any("holds no state" in m for m in run(ckpt=tmp_path / "old-epoch=0-step=4.ckpt", data=plain)[1])
    # a loader of another batch size cannot continue the checkpoint's epoch: it says so and starts it over
    other, told = run(ckpt=tmp_path / "epoch=0-step=4.ckpt", data=loader(200))
    assert any("draws its batches from its first again" in m for m in told)
    assert other.seen[0][:2] == (0, 4) and len(other.seen) == 9 - 4 + 9


class Evaluated(Classifier):
    def validation_step(self, batch, batch_idx):
        self.log("val_acc", (self(batch[0]).argmax(1) == batch[1]).float().mean())

    test_step = validation_step

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).argmax(1)


def test_lightning_validates_tests_and_predicts_with_reste_s_loaders():
    """(review models #1) Lightning reads loader.batch_sampler of an evaluation loader that has a sampler, which the
    in-memory loader lacked: its validation, test and predict failed with an AttributeError."""
    from reste.data import load_datasets, make_loaders

    train, test, _ = load_datasets("digits")
    loader, test_loader = make_loaders(train, test, batch_size=256, eval_batch_size=512, seed=3)
    module = Evaluated()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[BinarizationCallback()],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader, test_loader)
        tested = trainer.test(module, test_loader, verbose=False)
        predicted = torch.cat(trainer.predict(module, test_loader))
    assert len(predicted) == len(test)
    assert tested[0]["val_acc"] == pytest.approx(float((predicted == test.labels).float().mean()), abs=1e-6)


def test_warnings_come_once_from_rank_zero_and_two_callbacks_keep_their_states_apart(tmp_path, monkeypatch):
    """(Lightning review P1, P2) the callback's warnings go through rank_zero_warn (under DDP every process printed
    them); two callbacks (two modules, or two prefixes) have their own state keys in a checkpoint, and the default
    one keeps the key earlier checkpoints have."""
    from lightning.pytorch.utilities import rank_zero_only

    def one_epoch_warnings() -> list[str]:
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                             callbacks=[BinarizationCallback()], enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, limit_train_batches=1)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer.fit(Classifier(), digits_loader())
        return [str(w.message) for w in record if "BinarizationCallback" in str(w.message)]

    assert len(one_epoch_warnings()) == 1
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # as in any process of a DDP run but the first
    assert one_epoch_warnings() == []
    monkeypatch.undo()
    keys = {BinarizationCallback().state_key, BinarizationCallback(module="model").state_key,
            BinarizationCallback(module="teacher").state_key, BinarizationCallback(prefix="student/").state_key}
    assert len(keys) == 4 and BinarizationCallback().state_key == "BinarizationCallback"


def test_module_takes_a_dotted_path(tmp_path):
    """module="net.body" reaches a binary model nested inside another attribute (it took one attribute name only)."""

    class Nested(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.ModuleDict({"body": self.model})

    module, _ = fit(tmp_path, BinarizationCallback(module="net.body", epochs=4), Nested())
    assert reste.schedule_values(module.model)["o"] > 1.0
    with pytest.raises(ValueError, match="no module attribute 'net.head'"):
        fit(tmp_path, BinarizationCallback(module="net.head"), Nested())


def test_lightning_trains_each_epoch_on_that_epoch_s_batches():
    """(review models #8) Lightning makes an iterator it never reads (a check), then the epoch's, then calls
    set_epoch: the in-memory loader took its epoch when the iterator was made, so epoch 0 trained on epoch 1's
    batches and epoch 1 again on them. The epochs' first labels now match a plain loop's."""
    from reste.data import load_datasets, make_loaders

    train, test, _ = load_datasets("digits")

    def loader():
        return make_loaders(train, test, batch_size=256, eval_batch_size=512, seed=5)[0]

    plain = loader()
    want = [[int(y[:8].sum()) for _, y in plain] for _ in range(2)]
    assert want[0] != want[1]

    class Seen(Classifier):
        def __init__(self):
            super().__init__()
            self.seen = [[], []]

        def training_step(self, batch, batch_idx):
            self.seen[self.current_epoch].append(int(batch[1][:8].sum()))
            return super().training_step(batch, batch_idx)

    module = Seen()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader())
    assert module.seen == want


def test_a_loader_for_one_process_read_in_a_process_group_warns(monkeypatch):
    """(review models #10) Lightning shards a torch DataLoader, not reste's in-memory loader: given to a DDP run, each
    process read the whole data set in the same order, without a word."""
    import torch.distributed as dist

    from reste.data import load_datasets, make_loaders
    from reste.data import memory

    train, test, _ = load_datasets("digits")
    loader, test_loader = make_loaders(train, test, batch_size=256, eval_batch_size=512)
    monkeypatch.setattr(memory, "_TOLD_UNSHARDED", [False])
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (rev14) the test set read whole by one process of a group is meant
        next(iter(test_loader))
    with pytest.warns(UserWarning, match="process group of 2: each process reads the whole data set"):
        next(iter(loader))


@pytest.mark.parametrize("manual", [False, True])
def test_steps_fp16_s_scaler_skips_give_no_nan_indicators(manual):
    """(review math #1, rev14 #12, rev15 #10) a scaler whose scale overflows every step skips them all: the epoch's
    indicators came out NaN, and so did the per-layer stability (under manual optimization too)."""
    from lightning.pytorch.plugins import MixedPrecision

    class Overflowing(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = reste.binarize(nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.BatchNorm1d(16),
                                                    nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)))
            self.automatic_optimization = not manual

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            if manual:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
                return None
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    logged: dict[str, float] = {}

    class Kept(pl.loggers.logger.Logger):
        name, version, experiment = "kept", 0, None

        def log_metrics(self, metrics, step=None):
            logged.update(metrics)

        def log_hyperparams(self, *args, **kwargs):
            pass

    data = torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randint(0, 3, (64,)))
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1e30))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", plugins=[plugin], logger=Kept(),
                         callbacks=[BinarizationCallback(indicators=True, per_layer=True)], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Overflowing(), torch.utils.data.DataLoader(data, batch_size=16))
    per_layer = {k: v for k, v in logged.items() if "indicators/" in k}
    assert per_layer and not any("gradient_stability" in k for k in per_layer), per_layer
    assert all(math.isfinite(v) for v in per_layer.values()), per_layer


def _quiet_fit(trainer, module=None, ckpt_path=None, val=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module or Classifier(), digits_loader(), digits_loader(512) if val else None, ckpt_path=ckpt_path)


def _histories(folder) -> dict[str, list]:
    return {p.name: torch.load(p, weights_only=False)["callbacks"]["BinarizationCallback"]
            for p in sorted(folder.glob("*.ckpt"))}


class Validated(Classifier):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))


def test_a_checkpoint_written_before_the_epochs_end_hook_holds_the_epoch(tmp_path):
    """(review integ1 #1) Lightning writes a checkpoint at a validation that runs every other epoch (or by
    every_n_train_steps) before on_train_epoch_end, where the epoch joined the history: each such checkpoint lacked
    its last epoch, and a resume from it dropped that epoch unsaid. The epoch now joins at its last step."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for folder, kw, checkpoint in ((tmp_path / "val2", dict(check_val_every_n_epoch=2, limit_val_batches=1), {}),
                                   (tmp_path / "steps", {}, dict(every_n_train_steps=2))):
        trainer = pl.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_train_batches=2, num_sanity_val_steps=0,
                             callbacks=[BinarizationCallback(indicators=True),
                                        ModelCheckpoint(dirpath=folder, save_top_k=-1, **checkpoint)], **kw)
        _quiet_fit(trainer, Validated(), val="limit_val_batches" in kw)
        held = {name: len(state["history"]) for name, state in _histories(folder).items()}
        trained = {name: int(name.split("-")[0].split("=")[1]) + 1 for name in held}  # epoch=E: E + 1 trained
        assert held == trained and max(held.values()) == 4, held


def test_a_lightning_resume_keeps_the_schedules_length_and_the_historys_mode(tmp_path):
    """(review integ1 #2) a fit resumed inside an epoch starts no epoch before its next, so the checkpoints it wrote
    there recorded no schedule length, and a later resume on another max_epochs said nothing of the jump. (#3) a fit
    without indicators saved its history without its mode, so a later fit in the other mode joined it; an epoch
    trained without indicators now ends the history, as a metrics line without them ends reste train's."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def trainer(max_epochs, callback, folder=None, **kw):
        checkpoints = [ModelCheckpoint(dirpath=folder, save_top_k=-1, **kw)] if folder else []
        return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, limit_train_batches=2,
                          callbacks=[callback, *checkpoints], enable_progress_bar=False, enable_model_summary=False,
                          enable_checkpointing=bool(folder))

    _quiet_fit(trainer(3, BinarizationCallback(indicators=True), tmp_path / "a", every_n_train_steps=1))
    inside = tmp_path / "a" / "epoch=0-step=1.ckpt"  # one step into the first epoch
    _quiet_fit(trainer(1, BinarizationCallback(indicators=True), tmp_path / "b"), ckpt_path=inside)
    (end,) = _histories(tmp_path / "b").values()
    assert end["epochs"] == 3 and end["mode"] == "general"

    whole = tmp_path / "a" / "epoch=1-step=4.ckpt"  # two epochs measured in the general mode
    assert len(_histories(tmp_path / "a")["epoch=1-step=4.ckpt"]["history"]) == 2
    kept = BinarizationCallback(indicators=False)  # a fit with nothing left to train keeps the history and its mode
    _quiet_fit(trainer(2, kept), ckpt_path=whole)
    assert kept.state_dict()["mode"] == "general" and len(kept.state_dict()["history"]) == 2
    unmeasured = BinarizationCallback(indicators=False)  # one that trains an epoch unmeasured ends it
    _quiet_fit(trainer(3, unmeasured, tmp_path / "c"), ckpt_path=whole)
    (gap,) = _histories(tmp_path / "c").values()
    assert gap["history"] == [] and "mode" not in gap
    paper = BinarizationCallback(indicators="paper")  # another history, in the other mode: not refused, not joined
    _quiet_fit(trainer(4, paper), ckpt_path=tmp_path / "c" / "epoch=2-step=6.ckpt")
    assert len(paper.history) == 1


def test_a_compiled_models_per_layer_tags_are_an_eager_ones():
    """(review integ1, suggestion 4) under torch.compile the tags carried the wrapper's `_orig_mod.`, so a compiled
    run's per-layer curves did not share a chart with an eager run's."""
    from reste import EquilibriumMeter
    from reste.integrations.tensorboard import layer_indicators, layer_schedules

    torch.manual_seed(0)
    holder = nn.Module()
    holder.model = reste.binarize(float_net(), "reste", o_end=3.0)
    eager_tags = set(layer_schedules(holder)), set(layer_indicators(EquilibriumMeter(holder), stability=False))
    holder.model = torch.compile(holder.model)  # wrapped; not run, so nothing is compiled
    assert "model._orig_mod.3.weight_estimator" in dict(holder.named_modules())
    compiled_tags = set(layer_schedules(holder)), set(layer_indicators(EquilibriumMeter(holder), stability=False))
    assert compiled_tags == eager_tags and "schedule/model.3.weight_estimator/o" in eager_tags[0], compiled_tags
