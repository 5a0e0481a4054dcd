"""Resume refuses, repairs or reports what a damaged or edited run directory holds, instead of going on as
if nothing were wrong: a removed lock file, a lost last.pt, an edited config.json, lost metrics lines,
damaged best/top checkpoints, a mid-epoch checkpoint resumed with settings it cannot take."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from reste import engine, rundir
from reste.checkpoint import load_checkpoint, save_checkpoint
from reste.cli import _unexpected, main
from reste.config import TrainConfig
from reste.cudagraph import load_optimizer_state
from reste.errors import UsageError
from reste.estimators import get_estimator
from reste.schedules import learning_rate


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 2-epoch digits run (keeps the two best epochs in top/)."""
    out = tmp_path_factory.mktemp("guards") / "run"
    engine.train(TrainConfig(epochs=2, seed=5, threads=1, keep_top=2), out, progress=False, log=lambda _m: None)
    return out


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    (copy / rundir.LOCK_NAME).unlink(missing_ok=True)
    return copy


def _resume(run_dir: Path, overrides=None, force=False) -> tuple[dict, list[str]]:
    lines: list[str] = []
    result = engine.resume(run_dir, overrides, force=force, progress=False, log=lines.append)
    return result, lines


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reste: error: "), err
    return err[0]


def test_a_removed_lock_file_lets_no_second_writer_in(run):
    holder = rundir.RunDirectory.open(run, fresh=False)
    try:
        (run / rundir.LOCK_NAME).unlink()
        with pytest.raises(UsageError, match="in use by another process"):
            rundir.RunDirectory.open(run, fresh=False)
        assert not (run / rundir.LOCK_NAME).exists()  # the refused process leaves no lock file naming itself
    finally:
        holder.close()
    rundir.RunDirectory.open(run, fresh=False).close()  # free again once the holder closed


def test_no_last_pt_after_finished_epochs_is_refused(capsys, run):
    (run / "last.pt").unlink()
    before = (run / "metrics.jsonl").read_text()
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "no last.pt" in line and "cannot continue" in line and "evaluate its best.pt" in line
    assert (run / "metrics.jsonl").read_text() == before and (run / "best.pt").exists()
    (run / "best.pt").unlink()
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "no last.pt" in line and "best.pt" not in line


def test_an_empty_last_pt_says_the_run_cannot_continue(capsys, run):
    (run / "last.pt").write_bytes(b"")
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "is not a checkpoint" in line and "cannot continue from it" in line and "pass a .pt file" not in line


def test_a_config_json_that_lost_a_setting_is_refused(capsys, run):
    cfg = json.loads((run / "config.json").read_text())
    lr = cfg.pop("lr")
    (run / "config.json").write_text(json.dumps(cfg))
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "config.json lacks lr, which last.pt holds" in line and "delete it and resume again" in line
    assert len(rundir.read_metrics(run)) == 2
    (run / "config.json").unlink()  # as the message says: written again from last.pt
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["lr"] == lr


def test_settings_written_by_a_forced_resume_that_crashed_before_saving(run):
    # `--resume --force --epochs 3 --lr 0.05` writes config.json first; a crash before its first save leaves
    # the older last.pt: a plain resume goes on with config.json's settings and says so
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "epochs": 3, "lr": 0.05}))
    result, lines = _resume(run)
    assert any("differs from the settings last.pt trained with" in m and "lr 0.05 (was 0.1)" in m for m in lines)
    warm_up = json.loads((run / "config.json").read_text())["warm_up"]
    assert result["epochs"] == 3
    assert rundir.read_metrics(run)[-1]["lr"] == pytest.approx(learning_rate(0.05, 2, 3, warm_up))


def test_a_forced_resume_over_such_settings_says_what_it_continues_with(run):
    """(review user9 #3) after a forced resume that diverged before saving (config.json: lr 1e30), the next forced
    resume with --lr 0.05 trains at 0.05; the note said it went on with config.json's 1e30."""
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "epochs": 3, "lr": 1e30}))
    _, lines = _resume(run, {"lr": 0.05}, force=True)
    note = next(m for m in lines if "differs from the settings last.pt trained with" in m)
    assert "epochs 3 (was 2), lr 1e+30 (was 0.1)" in note
    assert note.endswith("the run continues with lr 0.05 as this command gives, and config.json's other settings")
    assert rundir.read_metrics(run)[-1]["lr"] == pytest.approx(learning_rate(0.05, 2, 3, cfg["warm_up"]))


def test_a_bad_value_in_config_json_names_the_file(capsys, run):
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "model_options": None}))
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "config.json" in line and "model_options" in line
    (run / "config.json").write_text(json.dumps({**cfg, "lr": "0.1"}))
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "config.json holds a bad setting" in line and "0.1" in line
    # a setting free on resume (threads) fixes its own bad value when given again
    (run / "config.json").write_text(json.dumps({**cfg, "threads": 0}))  # (one above this machine's limit: its default)
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "config.json holds a bad setting" in line and "--threads" in line
    assert main(["train", "--resume", str(run), "--threads", "1", "--no-progress"]) == 0
    # a string where a flag is a boolean ("false" is truthy) and a string where a list of plugins belongs
    (run / "config.json").write_text(json.dumps({**cfg, "cuda_graphs": "false"}))
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "config.json holds a bad setting" in line and "--cuda-graphs must be bool" in line
    (run / "config.json").write_text(json.dumps({**cfg, "plugins": "os"}))
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    # not read letter by letter ('o': no such module)
    assert "config.json is damaged: its plugins are 'os', not a list of module names or .py files" in line, line


def test_a_deleted_config_json_is_written_again_from_last_pt(capsys, run):
    saved = (run / "config.json").read_text()
    (run / "config.json").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # through the CLI
    assert "was missing; written again" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text()) == json.loads(saved)
    # a folder with last.pt alone still holds the run: --auto-resume continues it (review mut6 #1: it was taken
    # for an empty folder)
    (run / "config.json").unlink()
    assert rundir.holds_run(run)
    argv = ["train", "--out", str(run), "--auto-resume", "--epochs", "2", "--seed", "5", "--threads", "1",
            "--keep-top", "2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "was missing; written again" in out and "already finished 2 epochs; nothing to do" in out, out


def test_a_crash_between_epoch_1s_metrics_line_and_its_last_pt_starts_again(run):
    for name in ("last.pt", "best.pt"):
        (run / name).unlink()
    shutil.rmtree(run / "top")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # epoch 1's line, then the crash
    result, log = _resume(run)
    assert any("at epoch 1/2" in m for m in log) and len(rundir.read_metrics(run)) == 2
    again, before = rundir.read_metrics(run)[0], json.loads(lines[0])
    assert {**again, "time": 0} == {**before, "time": 0}  # the same epoch 1 again


def test_a_lost_last_metrics_line_comes_back_from_the_checkpoint(run):
    path = run / "metrics.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n" + second[: len(second) // 2])  # the last line torn
    _resume(run)
    assert path.read_text().splitlines() == [first, second]
    path.unlink()  # the whole file: the last epoch's line comes back, the first is reported lost
    _, lines = _resume(run)
    assert path.read_text().splitlines() == [second]
    assert any("no line for epoch(s) 1" in m and "lost" in m for m in lines)


def test_damaged_best_and_top_checkpoints_are_reported(run):
    tops = rundir.top_checkpoints(run)
    assert len(tops) == 2
    epoch, victim = sorted(tops.items())[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    best = load_checkpoint(run / "best.pt")["epoch"]
    (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:-10])
    _, lines = _resume(run, {"keep_top": 2})
    assert not victim.exists() and epoch not in rundir.top_checkpoints(run)
    assert any(f"removed {victim}" in m for m in lines)
    if best != 2:  # the last epoch's best.pt is rebuilt from last.pt; an older one is lost and said so
        assert any("best.pt" in m and "damaged" in m for m in lines)
    else:
        assert load_checkpoint(run / "best.pt")["epoch"] == 2


def _mid_epoch(run: Path) -> None:
    """Make last.pt a checkpoint taken after 5 batches of epoch 2 (its epoch-1 state, partial sums at zero)."""
    ckpt = load_checkpoint(run / "top" / next(p.name for p in (run / "top").iterdir() if "epoch0001" in p.name))
    ckpt.pop("format"), ckpt.pop("version")
    ckpt.update(step=5, partial={"ranks": [[0.0, 0, 0, -1]], "meter": None, "time": 0.0})
    save_checkpoint(ckpt, run / "last.pt")


def test_a_mid_epoch_checkpoint_keeps_its_batch_size_and_epoch(capsys, run):
    _mid_epoch(run)
    line = _error(capsys, "train", "--resume", str(run), "--batch-size", "32", "--force", "--no-progress")
    assert "inside epoch 2 at batch 5 of size 64" in line and "--batch-size 64" in line
    line = _error(capsys, "train", "--resume", str(run), "--epochs", "1", "--force", "--no-progress")
    assert "inside epoch 2" in line and "pass at least 2" in line
    assert load_checkpoint(run / "last.pt")["step"] == 5  # nothing was written


def test_another_optimizer_starts_afresh_and_new_settings_take_effect(run):
    result, lines = _resume(run, {"epochs": 3, "optimizer": "adam", "lr": 1e-3}, force=True)
    assert any("optimizer changes from sgd to adam" in m for m in lines) and result["epochs"] == 3
    state = load_checkpoint(run / "last.pt")["optimizer"]
    assert all("exp_avg" in s for s in state["state"].values())


def test_the_optimizer_state_loads_with_this_runs_settings():
    w = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=1e-4)
    w.grad = torch.ones(3)
    old.step()
    new = torch.optim.SGD([w], lr=0.1, momentum=0.5, weight_decay=0.0)
    load_optimizer_state(new, old.state_dict())
    assert new.param_groups[0]["momentum"] == 0.5 and new.param_groups[0]["weight_decay"] == 0.0
    assert torch.equal(new.state[w]["momentum_buffer"], old.state[w]["momentum_buffer"])


def test_a_resume_with_nothing_to_do_keeps_config_json(run):
    before = (run / "config.json").read_text()
    _, lines = _resume(run, {"lr": 0.5, "estimator": "ste", "threads": 2}, force=True)
    assert any("nothing to do" in m for m in lines)
    assert (run / "config.json").read_text() == before


def test_an_estimator_option_given_at_its_default_is_no_change(run):
    _, lines = _resume(run, {"estimator_options": {"o_end": 3.0}})
    assert any("nothing to do" in m for m in lines)
    with pytest.raises(UsageError, match="o_end: saved 3.0, given 4.0"):
        _resume(run, {"estimator_options": {"o_end": 4.0}})
    with pytest.raises(UsageError, match="unknown settings epochz"):
        _resume(run, {"epochz": 4})


def test_a_last_batch_of_one_sample_is_left_out(tmp_path):
    # digits has 1437 training images: batch 4 would leave one, which BatchNorm cannot train on
    lines: list[str] = []
    result = engine.train(TrainConfig(epochs=1, batch_size=4, threads=1), tmp_path / "b4", progress=False,
                          log=lines.append)
    assert any("left out (1436 of 1437 samples" in m for m in lines)
    assert result["final_acc"] > 0


def test_augment_on_a_data_set_without_augmentation(capsys, tmp_path):
    line = _error(capsys, "train", "--augment", "--out", str(tmp_path / "r"), "--no-progress")
    assert "digits has no train augmentation" in line
    assert TrainConfig.from_saved({"dataset": "digits", "augment": True}).augment is False


def test_a_file_that_is_not_a_checkpoint(capsys, run):
    line = _error(capsys, "eval", str(run / "metrics.jsonl"))
    assert "is not a checkpoint" in line


def test_a_full_disk_gets_one_line_with_what_to_do(capsys):
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/r/.last.pt.abc123.tmp")
    except OSError as err:
        assert _unexpected(err, debug=False, command="train") == 1
        assert _unexpected(err, debug=False, command="presets") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "No space left on device" in err[0] and "--resume" in err[0]
    assert "free some space and run it again" in err[1] and "--resume" not in err[1]  # no run to continue


def test_a_forced_resume_with_nothing_to_do_records_what_the_run_trained_with(run):
    # an earlier `--force --epochs 4 --lr 0.05` stopped before its first save left config.json so; giving
    # back --epochs 2 must not leave that abandoned extension in config.json for a later plain resume
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "epochs": 4, "lr": 0.05}))
    _, lines = _resume(run, {"epochs": 2}, force=True)
    assert any("nothing to do" in m for m in lines) and not any("differs from" in m for m in lines)
    after = json.loads((run / "config.json").read_text())
    assert after["epochs"] == 2 and after["lr"] == cfg["lr"]


def test_another_estimator_drops_the_old_ones_options(tmp_path):
    out = tmp_path / "r"
    engine.train(TrainConfig(epochs=1, threads=1, estimator_options={"o_end": 2.0}), out, progress=False,
                 log=lambda _m: None)
    result, _ = _resume(out, {"estimator": "ste", "epochs": 2}, force=True)
    saved = json.loads((out / "config.json").read_text())
    assert result["epochs"] == 2 and saved["estimator"] == "ste"
    assert saved["estimator_options"] == {"clip": 1.0}  # STE's own, ReSTE's o_end gone


def test_a_sweep_tells_a_clean_epoch_end_from_one_a_crash_cut(run):
    last = load_checkpoint(run / "last.pt")
    assert rundir.epoch_end_whole(run, last)
    tops = rundir.top_checkpoints(run)
    shutil.copy(tops[1], run / "top" / "epoch0003-acc1.00.pt")  # a copy too many (removals not done)
    assert not rundir.epoch_end_whole(run, last)
    (run / "top" / "epoch0003-acc1.00.pt").unlink()
    tops[2].unlink()  # the last epoch's copy missing (a crash before it)
    assert not rundir.epoch_end_whole(run, last)
    shutil.copy(run / "last.pt", tops[2])
    stale = load_checkpoint(run / "best.pt")
    stale.pop("format"), stale.pop("version")
    save_checkpoint({**stale, "epoch": 7}, run / "best.pt")  # not the best epoch's file
    assert not rundir.epoch_end_whole(run, last)


def test_a_moved_plugin_of_a_resumed_run_says_what_to_do(capsys, run):
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "plugins": [str(run / "gone.py")]}))
    line = _error(capsys, "train", "--resume", str(run), "--no-progress")
    assert "config.json names plugins" in line and f"pass --plugin {run / 'gone.py'} (or where they are now)" in line


def test_a_crafted_step_past_the_epoch_is_refused(capsys, run):
    """A last.pt with a valid checksum can still hold values no run wrote (the checksum catches accidents)."""
    ckpt = load_checkpoint(run / "last.pt")
    save_checkpoint({**ckpt, "step": 10 ** 9}, run / "last.pt")
    line = _error(capsys, "train", "--resume", str(run), "--epochs", "3", "--force", "--no-progress")
    assert "was saved after batch 1000000000 of an epoch of" in line and "cannot continue" in line
    save_checkpoint({**ckpt, "epoch": -3}, run / "last.pt")
    assert "holds a malformed epoch (-3)" in _error(capsys, "train", "--resume", str(run), "--no-progress")


def test_a_forced_change_of_activations_carries_the_weights(tmp_path):
    """--a32 --force (1W1A to 1W32A and back): the weights go on, not the estimators' states, which a layer
    without (or with a new) input estimator cannot take (review JJ: last.pt did not fit the model)."""
    out = tmp_path / "r"
    engine.train(TrainConfig(epochs=1, threads=1), out, progress=False, log=lambda _m: None)
    weight = load_checkpoint(out / "last.pt")["model"]["conv1.weight"]
    result, _ = _resume(out, {"a32": True, "epochs": 2}, force=True)
    assert result["epochs"] == 2 and json.loads((out / "config.json").read_text())["a32"] is True
    state = load_checkpoint(out / "last.pt")["model"]
    assert not any("input_estimator" in k for k in state) and not torch.equal(state["conv1.weight"], weight)
    result, _ = _resume(out, {"a32": False, "epochs": 3}, force=True)
    assert result["epochs"] == 3 and any("input_estimator" in k for k in load_checkpoint(out / "last.pt")["model"])


def test_a_forced_change_of_an_estimator_option_carries_the_weights(tmp_path):
    """--o-end 5 --force on a run of o_end 3: the estimators' states now record their hyper-parameters and refuse
    other ones, so the resume drops them as it does for another estimator; the new o_end's schedule trains on."""
    out = tmp_path / "r"
    engine.train(TrainConfig(epochs=1, threads=1), out, progress=False, log=lambda _m: None)
    result, _ = _resume(out, {"estimator_options": {"o_end": 5.0}, "epochs": 2}, force=True)
    assert result["epochs"] == 2 and json.loads((out / "config.json").read_text())["estimator_options"]["o_end"] == 5
    state = load_checkpoint(out / "last.pt")["model"]["conv1.weight_estimator._extra_state"]
    fresh = get_estimator("reste", o_end=5.0)
    fresh.set_progress(1, 2)  # the last epoch's o on the new schedule
    assert state["config"]["o_end"] == 5.0 and state["o"] == fresh.o


def test_a_forced_change_of_scaling_carries_the_weights(tmp_path):
    """(review rev11 #1) The binary layers' state names their scaling, and refuses another: --scaling channel --force
    took the refusal's advice for an answer. The weights go on, and so do the estimators' schedules."""
    out = tmp_path / "r"
    engine.train(TrainConfig(epochs=1, threads=1), out, progress=False, log=lambda _m: None)
    result, _ = _resume(out, {"scaling": "channel", "epochs": 2}, force=True)
    assert result["epochs"] == 2 and json.loads((out / "config.json").read_text())["scaling"] == "channel"
    state = load_checkpoint(out / "last.pt")["model"]
    assert state["conv1._extra_state"] == {"scaling": "channel"}
    assert state["conv1.weight_estimator._extra_state"]["o"] > 1  # the schedule goes on


def test_a_resume_says_where_config_json_sends_its_tensorboard_events(run, tmp_path):
    """sec2 9: a received run's config.json chooses the TensorBoard folder (any absolute path); a resume that was
    not given --tensorboard again says where the events go, so the place is not chosen in silence."""
    pytest.importorskip("torch.utils.tensorboard")
    elsewhere = tmp_path / "elsewhere"
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "tensorboard": str(elsewhere)}))
    _, lines = _resume(run, {"epochs": 3}, force=True)
    assert f"note: TensorBoard events go to {elsewhere}, as config.json records (--tensorboard DIR moves them)" \
        in lines, lines
    _, lines = _resume(run, {"epochs": 4, "tensorboard": str(elsewhere)}, force=True)  # given again: the user's
    assert not any("TensorBoard events go to" in line for line in lines), lines
    (run / "config.json").write_text(json.dumps({**cfg, "epochs": 4, "tensorboard": str(run / "tb")}))
    _, lines = _resume(run, {"epochs": 5}, force=True)  # inside the run folder
    assert not any("TensorBoard events go to" in line for line in lines), lines
    from reste.resumption import recorded_places_notes

    fmnist = TrainConfig(dataset="fashion-mnist", download=True, data_path=str(elsewhere))
    assert recorded_places_notes(run, fmnist, {}) == [
        f"note: missing data is downloaded into {elsewhere}, as config.json records (--data-path DIR moves it)"]
    assert recorded_places_notes(run, fmnist, {"download": True}) == []


def test_a_resume_to_another_optimizer_leaves_sgds_momentum_behind(tmp_path, capsys):
    """(review rev12 #13) an SGD run saved with --momentum 0.5, resumed with --optimizer adam --force: refused for
    a --momentum that was not on the command line (the saved one, which Adam has no use for)."""
    out = tmp_path / "mo"
    assert main(["train", "--epochs", "1", "--momentum", "0.5", "--threads", "1", "--no-progress", "--out",
                 str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--optimizer", "adam", "--force",
                 "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["optimizer"], saved["momentum"]) == ("adam", 0.9)


def test_resuming_a_file_or_a_missing_folder_says_which(tmp_path):
    """(review apifuzz1) engine.resume(a file) said "no such folder" of a file that exists; a missing folder still
    says how to start one."""
    (tmp_path / "best.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"best.pt is not a run directory: it is a file; pass the run's folder"):
        engine.resume(tmp_path / "best.pt", progress=False, log=lambda _: None)
    with pytest.raises(UsageError, match=r"gone is not a run directory \(no such folder\); start one with --out"):
        engine.resume(tmp_path / "gone", progress=False, log=lambda _: None)
