"""reste.resumption without training: the settings a resume continues with and records, and its refusals.
The whole resume, through damaged and edited run directories, is tests/test_resume_guards.py."""

from __future__ import annotations

import dataclasses

import pytest

from reste import resumption, rundir, wording
from reste.config import OPTIMIZER_LR, TrainConfig
from reste.errors import UsageError, command_line


@pytest.fixture
def saved(tmp_path):
    config = TrainConfig(dataset="digits", epochs=4, lr=0.1, threads=1, estimator="reste",
                         estimator_options={"o_end": 3.0}).resolve()
    rundir.write_config(tmp_path, config)
    return config


def test_differences_compare_estimator_options_with_their_defaults(saved):
    assert resumption.config_differences(saved, {"lr": 0.1, "epochs": 4}) == {}
    assert resumption.config_differences(saved, {"lr": 0.05}) == {"lr": (0.1, 0.05)}
    assert resumption.config_differences(saved, {"estimator_options": {"o_end": 3.0}}) == {}
    assert resumption.config_differences(saved, {"estimator_options": {"o_end": 10.0}}) == {
        "estimator_options.o_end": (3.0, 10.0)}
    with pytest.raises(UsageError, match="unknown settings colour; valid: "):
        resumption.config_differences(saved, {"colour": "red"})


_OTHER = {"data_path": "/elsewhere", "download": True, "workers": 3, "device": "cpu", "data_device": "cpu",
          "eval_batch_size": 64, "threads": 2, "save_every": 5.0, "tensorboard": "tb", "keep_top": 3,
          "plugins": ["my_plugin"], "accumulate": 2}


@pytest.mark.parametrize("name", list(_OTHER))  # (written out: a name dropped from RESUME_FREE is still tried)
def test_each_setting_free_on_resume_is_taken_without_force(tmp_path, saved, name):
    """(review mut6 #2) Every setting free on resume may be given again with another value: dropped from
    RESUME_FREE, `--resume --save-every 5` or `--eval-batch-size 64` was refused, and no test saw it."""
    assert set(rundir.RESUME_FREE) == set(_OTHER)  # (a new free setting gets a value here)
    assert getattr(saved, name) != _OTHER[name]
    try:
        assert getattr(resumption.continue_config(tmp_path, saved, {name: _OTHER[name]}, force=False), name) == \
            _OTHER[name]
    except UsageError as err:  # a value digits cannot take (no files, no workers, no such plugin) is another matter
        assert "settings differ" not in str(err) and name in ("data_path", "download", "workers", "plugins"), err


def test_a_changed_setting_needs_force_and_the_data_set_never_changes(tmp_path, saved):
    with pytest.raises(UsageError, match=r"lr: saved 0.1, given 0.05\); drop them or pass force=True$"):
        resumption.continue_config(tmp_path, saved, {"lr": 0.05}, force=False)  # (review api #7) in Python
    with command_line(), pytest.raises(UsageError, match=r"drop them or pass --force$"):  # the command's words
        resumption.continue_config(tmp_path, saved, {"lr": 0.05}, force=False)
    assert resumption.continue_config(tmp_path, saved, {"lr": 0.05}, force=True).lr == 0.05
    assert resumption.continue_config(tmp_path, saved, {"threads": 2}, force=False).threads == 2  # RESUME_FREE
    assert resumption.continue_config(tmp_path, saved, {"dataset": "DIGITS"}, force=False) == saved
    assert resumption.continue_config(tmp_path, saved, {"estimator": "ReSTE"}, force=False) == saved
    with pytest.raises(UsageError, match="trained on digits, not fashion-mnist; a run keeps its data set"):
        resumption.continue_config(tmp_path, saved, {"dataset": "fashion-mnist"}, force=True)


def test_given_options_refine_the_saved_ones_and_another_estimator_drops_them(tmp_path, saved):
    config = resumption.continue_config(tmp_path, saved, {"estimator_options": {"t": 1.2}}, force=True)
    assert config.estimator_options["o_end"] == 3.0 and config.estimator_options["t"] == 1.2
    config = resumption.continue_config(tmp_path, saved, {"estimator": "ste"}, force=True)
    assert config.estimator == "ste" and "o_end" not in config.estimator_options


def test_the_settings_recorded_after_a_resume(saved):
    given = dataclasses.replace(saved, lr=0.5, threads=2, keep_top=3, accumulate=4, eval_batch_size=7,
                                data_path="/elsewhere")
    assert resumption.settings_to_record(given, saved, idle=True).accumulate == saved.accumulate
    assert resumption.settings_to_record(given, saved, idle=False) == given
    # nothing left to train: what it trained with, and where its files are now (not the thread count, nor the
    # micro-batches or the evaluation's batch: review combos #7)
    assert resumption.settings_to_record(given, saved, idle=True) == dataclasses.replace(saved, keep_top=3,
                                                                                          data_path="/elsewhere")


def test_a_checkpoint_that_cannot_continue_as_configured(tmp_path, saved):
    last = tmp_path / rundir.LAST
    ckpt = {"model_name": saved.model, "epoch": 4, "step": 0, "config": saved.to_dict(), "best_acc": 91.5,
            "best_epoch": 3, "optimizer": {"state": {}, "param_groups": []},
            "rng": {"python": (), "numpy": {}, "torch": None}}
    resumption.check_checkpoint(ckpt, saved, last)
    resumption.check_checkpoint({**ckpt, "epoch": 0, "best_acc": -1.0, "best_epoch": -1}, saved, last)  # fresh
    resumption.check_checkpoint({**ckpt, "optimizer": None}, saved, last)  # (another optimizer's: it starts afresh)
    for name, value in (("epoch", -3), ("epoch", True), ("step", -5), ("step", 2.5), ("best_acc", "x"),
                        ("best_acc", float("nan")), ("best_acc", 100.5), ("best_acc", -1.5),
                        ("best_epoch", None),  # (an accuracy above 100: no epoch could beat it, review mut4 #2)
                        ("optimizer", {}), ("optimizer", [1]), ("rng", None), ("rng", {"python": ()})):  # (fuzz1 #2)
        with pytest.raises(UsageError, match=f"holds a malformed {name} .*it cannot continue"):
            resumption.check_checkpoint({**ckpt, name: value}, saved, last)
    with pytest.raises(UsageError, match="holds model 'resnet20', not"):
        resumption.check_checkpoint({**ckpt, "model_name": "resnet20"}, saved, last)
    with pytest.raises(UsageError,
                       match="already finished 4 epochs; overrides=.'epochs': 3. is fewer: pass at least 4"):
        resumption.check_checkpoint(ckpt, dataclasses.replace(saved, epochs=3), last, given={"epochs": 3})
    inside = {**ckpt, "epoch": 2, "step": 5}
    with pytest.raises(UsageError, match=f"cannot change there: resume with --batch-size {saved.batch_size},"):
        resumption.check_checkpoint(inside, dataclasses.replace(saved, batch_size=saved.batch_size + 1), last)
    # (review combos #5) --force --seed inside an epoch skipped batches of another order
    with pytest.raises(UsageError, match=f"the order seed {saved.seed} draws; the seed cannot change there: resume "
                                         f"with --seed {saved.seed}, and change it once"):
        resumption.check_checkpoint(inside, dataclasses.replace(saved, seed=saved.seed + 1), last)
    resumption.check_checkpoint(ckpt, dataclasses.replace(saved, seed=saved.seed + 1), last)  # at an epoch's end
    resumption.check_checkpoint(inside, saved, last)
    with pytest.raises(UsageError, match="ends before it: pass at least 3"):
        resumption.check_checkpoint(inside, dataclasses.replace(saved, epochs=2), last)
    # (review dist #4) fewer than the epochs finished, inside the next: the least that the next check takes
    with pytest.raises(UsageError,
                       match="already finished 2 epochs; overrides=.'epochs': 1. is fewer: pass at least 3"):
        resumption.check_checkpoint(inside, dataclasses.replace(saved, epochs=1), last, given={"epochs": 1})


def test_notes_on_what_last_pt_trained_with(tmp_path, saved):
    edited = dataclasses.replace(saved, lr=0.05)
    ckpt = {"epoch": 2, "config": saved.to_dict()}
    trained, notes = resumption.trained_settings(ckpt, edited, edited, tmp_path)
    assert trained == saved
    assert len(notes) == 1 and "(lr 0.05 (was 0.1)); the run continues with config.json's" in notes[0]
    sgd = dataclasses.replace(saved, optimizer="sgd" if saved.optimizer != "sgd" else "adam")
    _, notes = resumption.trained_settings(ckpt, saved, sgd, tmp_path)
    usual = OPTIMIZER_LR[sgd.optimizer]
    advice = f" (--lr changes it; {sgd.optimizer}'s usual one is {usual:g})" if usual != sgd.lr else ""
    assert notes == [f"note: the optimizer changes from {saved.optimizer} to {sgd.optimizer}; its state "
                     f"(momentum, moments) starts afresh, at lr {sgd.lr:g}{advice}"]
    assert resumption.trained_settings({"epoch": 2}, saved, saved, tmp_path) == (saved, [])


def test_lost_last_pt(tmp_path, saved):
    rundir.start_metrics(tmp_path)
    rundir.append_metrics(tmp_path, {"epoch": 1, "test_acc": 50.0})
    resumption.check_last_kept(tmp_path)  # epoch 1's line and no last.pt: a crash before its first save
    rundir.append_metrics(tmp_path, {"epoch": 2, "test_acc": 60.0})
    with pytest.raises(UsageError, match="has finished epochs but no last.pt .* start a new run$"):
        resumption.check_last_kept(tmp_path)


def test_spans():
    assert wording.spans([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert wording.spans([]) == ""


def test_a_bad_estimator_in_config_json_can_be_replaced(tmp_path, saved):
    import dataclasses as dc

    damaged = dc.replace(saved, estimator="bogus", estimator_options={})
    assert resumption.continue_config(tmp_path, damaged, {"estimator": "STE"}, force=True).estimator == "ste"
    with command_line(), pytest.raises(UsageError, match="trained with estimator 'bogus', which no module loaded "
                                                         "here registers: pass --plugin MODULE.*; or, where "
                                                         "config.json was edited, give that setting again to "
                                                         r"replace it \(with --force\)"):
        resumption.continue_config(tmp_path, damaged, {}, force=False)
    with pytest.raises(UsageError, match=r"registers: import the module that does \(or "
                                         r"reste.plugins.load_plugins\(\['MODULE'\]\).*with force=True\)"):
        resumption.continue_config(tmp_path, damaged, {}, force=False)


def test_workers_recorded_on_a_bigger_machine_resume_with_this_ones_default(tmp_path, monkeypatch):
    """(review fuzz1 #8) --workers has this machine's bound now, as --threads has: a count recorded on a bigger
    machine is not refused at the resume; it takes this machine's default. One given again is checked."""
    from reste import config as config_module

    monkeypatch.setattr(config_module, "usable_cpus", lambda: 4)
    big = TrainConfig(dataset="imagenet", data_path=str(tmp_path / "in"), epochs=4, workers=16, threads=1).resolve()
    monkeypatch.setattr(config_module, "usable_cpus", lambda: 1)
    again = resumption.continue_config(tmp_path, big, {}, force=False)
    assert again.workers == config_module.default_workers("imagenet") and again.epochs == 4
    with pytest.raises(UsageError, match=r"--workers must be a whole number in \[0, 4\]"):
        resumption.continue_config(tmp_path, big, {"workers": 16}, force=False)
