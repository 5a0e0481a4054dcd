"""Crash safety, exact resume after kill -9, divergence, bad input and unsafe checkpoints."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reste import engine
from reste.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from reste.cli import main
from reste.config import TrainConfig
from reste.errors import UsageError

TRAIN = ["train", "--epochs", "1", "--no-progress"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(capsys, argv, *needles):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("reste: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--model", "resnet99"], ["unknown model 'resnet99'", "resnet20_1w1a"]),
        (["--estimator", "magic"], ["unknown estimator 'magic'", "reste", "ste"]),
        (["--dataset", "mnist"], ["unknown dataset 'mnist'", "digits", "cifar10"]),
        (["--preset", "nope"], ["unknown preset 'nope'", "cifar10-resnet20-1w1a"]),
        (["--optimizer", "lamb"], ["unknown optimizer 'lamb'", "sgd", "adamw"]),
        (["--o-end", "0.5"], ["--o-end must be >= 1"]),
        (["--t", "0.05"], ["--t must be larger than the interval"]),
        (["--t", "0.1", "--interval", "0.1"], ["--t must be larger than the interval"]),
        (["--epochs", "0"], ["--epochs must be a positive integer"]),
        (["--epochs", "-3"], ["--epochs must be a positive integer"]),
        (["--batch-size", "0"], ["--batch-size must be a positive integer"]),
        (["--lr", "0"], ["--lr must be a positive number"]),
        (["--lr", "-0.1"], ["--lr must be a positive number"]),
        (["--beta", "3"], ["--beta applies to the sign_swish estimator, not 'reste'"]),
        (["--epochs", "two"], ["invalid int value: 'two'"]),
        (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    ],
)
def test_bad_train_flags_get_one_line(capsys, tmp_path, argv, needles):
    assert_one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *argv], *needles)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(UsageError):
        main(["--debug", "train", "--model", "resnet99"])


def test_bad_data_paths(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    line = assert_one_line_error(capsys, [*TRAIN, "--dataset", "cifar10", "--data-path", str(missing),
                                          "--out", str(tmp_path / "a")], str(missing))
    assert "download" in line.lower()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(capsys, [*TRAIN, "--dataset", "fashion-mnist", "--data-path", str(empty),
                                   "--out", str(tmp_path / "b")], str(empty))
    wrong = tmp_path / "wrong"
    (wrong / "cifar-10-batches-py").mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (wrong / "cifar-10-batches-py" / name).write_bytes(b"this is not a pickle")
    assert_one_line_error(capsys, [*TRAIN, "--dataset", "cifar10", "--data-path", str(wrong),
                                   "--out", str(tmp_path / "c")])
    assert_one_line_error(capsys, [*TRAIN, "--dataset", "imagenet", "--data-path", str(empty),
                                   "--out", str(tmp_path / "d")], str(empty))
    # a run that could not start leaves no empty run directory behind
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_unwritable_run_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert_one_line_error(capsys, [*TRAIN, "--out", str(blocker / "run")], "not writable")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    engine.train(TrainConfig(epochs=2, seed=3), out, progress=False, log=lambda _m: None)
    return out


def test_truncated_and_corrupted_checkpoints(capsys, tmp_path, finished_run):
    data = (finished_run / "last.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(capsys, ["eval", str(truncated)], "truncated or corrupted")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(random.Random(0).randbytes(2000))
    assert_one_line_error(capsys, ["eval", str(garbage)], "truncated or corrupted")
    assert_one_line_error(capsys, ["eval", str(tmp_path / "missing.pt")], "does not exist")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert_one_line_error(capsys, ["eval", str(other)], "not a reste checkpoint")


def test_checkpoint_of_another_model_or_class_count(capsys, tmp_path, finished_run):
    ckpt = load_checkpoint(finished_run / "last.pt")
    wrong_model = dict(ckpt, model_name="digits")  # the float twin has other parameters
    save_checkpoint(wrong_model, tmp_path / "model.pt")
    assert_one_line_error(capsys, ["eval", str(tmp_path / "model.pt")], "do not fit model 'digits'")
    wrong_classes = dict(ckpt, model_options=dict(ckpt["model_options"], num_classes=7))
    save_checkpoint(wrong_classes, tmp_path / "classes.pt")
    assert_one_line_error(capsys, ["eval", str(tmp_path / "classes.pt")], "do not fit")
    # resuming a run whose last.pt belongs to another model is refused too
    run = tmp_path / "swapped"
    run.mkdir()
    (run / "config.json").write_text((finished_run / "config.json").read_text())
    save_checkpoint(wrong_model, run / "last.pt")
    assert_one_line_error(capsys, ["train", "--resume", str(run), "--no-progress"], "digits")


def test_resume_with_different_settings_is_refused_unless_forced(capsys, tmp_path, finished_run):
    line = assert_one_line_error(capsys, ["train", "--resume", str(finished_run), "--lr", "0.3",
                                          "--estimator", "ste"], "differ")
    assert "lr: saved 0.1, given 0.3" in line and "estimator: saved 'reste', given 'ste'" in line
    assert_one_line_error(capsys, ["train", "--resume", str(tmp_path), "--no-progress"], "not a run directory")


class _Payload:
    """A pickle that would create a file when loaded."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


def test_checkpoint_that_runs_code_is_refused(capsys, tmp_path, finished_run):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    ckpt = load_checkpoint(finished_run / "last.pt")
    torch.save(dict(ckpt, extra=_Payload(target)), evil)
    line = assert_one_line_error(capsys, ["eval", str(evil)], "refusing to load")
    assert "run code" in line
    assert not target.exists()
    # the same payload as a plain pickle: torch.load(weights_only=True) refuses it as well
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps({"format": "reste-checkpoint", "x": _Payload(target)}))
    assert_one_line_error(capsys, ["eval", str(plain)])
    assert not target.exists()


# ----------------------------------------------------------- crash safety


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left behind


def test_non_finite_loss_stops_with_epoch_and_step(capsys, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = engine.build_model

    def poisoned(config, num_classes):
        model = original(config, num_classes)
        forward = model.forward

        def bad_forward(x):
            out = forward(x)
            if model.training:
                calls["n"] += 1
                if calls["n"] == 23 + 3:  # digits: 23 steps per epoch at batch 64 -> epoch 2, step 3
                    out = out * float("nan")
            return out

        model.forward = bad_forward
        return model

    monkeypatch.setattr(engine, "build_model", poisoned)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--epochs", "3", "--out", str(out), "--no-progress")
    assert code == 1
    assert "non-finite loss at epoch 2, step 3" in err and "Traceback" not in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert len(engine.read_metrics(out)) == 1


def _wait_for(predicate, timeout=120.0):
    start = time.time()
    while not predicate():
        if time.time() - start > timeout:
            raise TimeoutError
        time.sleep(0.02)


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    args = ["--epochs", "4", "--seed", "5", "--no-progress", "--estimator", "reste"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([sys.executable, "-m", "reste.cli", "train", *args, "--out", str(full)],
                   check=True, capture_output=True, env=env, timeout=300)

    proc = subprocess.Popen([sys.executable, "-m", "reste.cli", "train", *args, "--out", str(cut)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        metrics = cut / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2)
        time.sleep(0.3)  # into the third epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = load_checkpoint(cut / "last.pt")["epoch"]
    assert 2 <= done < 4, "the kill should land before the run finished"
    subprocess.run([sys.executable, "-m", "reste.cli", "train", "--resume", str(cut), "--no-progress"],
                   check=True, capture_output=True, env=env, timeout=300)

    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
    for key in ("exp_avg", "momentum_buffer"):
        sa = [s.get(key) for s in a["optimizer"]["state"].values()]
        sb = [s.get(key) for s in b["optimizer"]["state"].values()]
        assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(sa, sb))
    strip = lambda ms: [{k: v for k, v in m.items() if k != "time"} for m in ms]  # noqa: E731
    assert strip(engine.read_metrics(full)) == strip(engine.read_metrics(cut))
