"""Crash safety, exact resume after kill -9, divergence, bad input and unsafe checkpoints."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reste import engine, rundir
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
        (["--dataset", "no-such-set"], ["unknown dataset 'no-such-set'", "digits", "cifar10"]),
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
    # before the one line, with the same status (review ux1 #4)
    assert main(["--debug", "train", "--model", "resnet99"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "UsageError" in err
    assert err.splitlines()[-1].startswith("reste: error: unknown model 'resnet99'")


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
    assert_one_line_error(capsys, ["eval", str(garbage)], "not a checkpoint")
    garbage.write_bytes(b"PK" + random.Random(0).randbytes(2000))  # a zip's start, then noise
    assert_one_line_error(capsys, ["eval", str(garbage)], "truncated or corrupted")
    assert_one_line_error(capsys, ["eval", str(tmp_path / "missing.pt")], "does not exist")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert_one_line_error(capsys, ["eval", str(other)], "not a reste checkpoint")
    assert "Lightning" not in _load_error(other)


def _load_error(path) -> str:
    with pytest.raises(UsageError) as info:
        load_checkpoint(path)
    return str(info.value)


def test_a_lightning_checkpoint_says_how_to_export_its_module(capsys, tmp_path):
    """(Lightning review M5) `reste export` of a Lightning .ckpt said only 'not a reste checkpoint': it now says what
    the file is and how to export its module, whether its hyper-parameters load as plain data or not."""
    import argparse

    plain = tmp_path / "plain.ckpt"
    torch.save({"pytorch-lightning_version": "2.5.0", "epoch": 1, "state_dict": {"w": torch.zeros(2)}}, plain)
    assert_one_line_error(capsys, ["export", str(plain), str(tmp_path / "m.rbnn")],
                          "not a reste checkpoint (no 'reste-checkpoint' header); it is a PyTorch Lightning checkpoint:"
                          " load your LightningModule from it (load_from_checkpoint) and export the binarized model it "
                          "holds from Python, reste.export.export_model(model, OUT, "
                          "input_size=(C, H, W))")
    objects = tmp_path / "objects.ckpt"  # save_hyperparameters() of an argparse Namespace: a class to build on load
    torch.save({"pytorch-lightning_version": "2.5.0", "hyper_parameters": argparse.Namespace(lr=0.1)}, objects)
    text = _load_error(objects)
    assert text.startswith(f"refusing to load {objects}: it holds objects that would run code on load")
    assert text.endswith("it is a PyTorch Lightning checkpoint: load your LightningModule from it "
                         "(load_from_checkpoint) and export the binarized model it holds from Python, "
                         "reste.export.export_model(model, OUT, input_size=(C, H, W))")


def test_checkpoint_of_another_model_or_class_count(capsys, tmp_path, finished_run):
    ckpt = load_checkpoint(finished_run / "last.pt")
    wrong_model = dict(ckpt, model_name="digits")  # the float twin has other parameters
    save_checkpoint(wrong_model, tmp_path / "model.pt")
    assert_one_line_error(capsys, ["eval", str(tmp_path / "model.pt")],
                          "do not fit model 'digits' (Unexpected key(s) in state_dict:")  # what, not just where
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
    assert_one_line_error(capsys, ["train", "--resume", str(tmp_path), "--no-progress"],
                          "holds no run (no config.json); pass a run's folder")


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
    assert len(rundir.read_metrics(out)) == 1


def _wait_for(predicate, timeout=120.0):
    start = time.time()
    while not predicate():
        if time.time() - start > timeout:
            raise TimeoutError
        time.sleep(0.02)


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, command):
    args = ["--epochs", "4", "--seed", "5", "--no-progress", "--estimator", "reste"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert command("train", *args, "--out", str(full), cwd=tmp_path).returncode == 0

    # the child kills itself (SIGKILL, as kill -9) at step 7 of epoch 3: a real kill at a known step. Sending it
    # from here half an epoch after the second metrics line lost the race on a loaded machine (the run had ended).
    code = ("import os, signal, sys\n"
            "from reste import engine\n"
            "from reste.cli import main\n"
            "due = engine._Run._checkpoint_due\n"
            "def checkpoint_due(self, step, *rest):\n"
            "    if self.saved == (2, 0) and step == 6:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return due(self, step, *rest)\n"
            "engine._Run._checkpoint_due = checkpoint_due\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "train", *args, "--out", str(cut)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(cut / "last.pt")["epoch"] == 2  # the kill landed inside epoch 3
    assert command("train", "--resume", str(cut), "--no-progress", cwd=tmp_path).returncode == 0

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
    assert strip(rundir.read_metrics(full)) == strip(rundir.read_metrics(cut))


# ------------------------------------------------- the error contract, table-driven

def _idx(path: Path, magic: int, dims: tuple[int, ...]) -> None:
    import struct

    import numpy as np

    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + np.zeros(int(np.prod(dims)), np.uint8).tobytes())


def _empty_train_set(tmp_path: Path) -> list[str]:
    folder = tmp_path / "fmnist"
    folder.mkdir()
    _idx(folder / "train-images-idx3-ubyte", 2051, (0, 28, 28))
    _idx(folder / "train-labels-idx1-ubyte", 2049, (0,))
    _idx(folder / "t10k-images-idx3-ubyte", 2051, (4, 28, 28))
    _idx(folder / "t10k-labels-idx1-ubyte", 2049, (4,))
    return ["--dataset", "fashion-mnist", "--data-path", str(folder)]


def _garbage_jpeg(tmp_path: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(root / split / cls / "ok.JPEG")
    (root / "train" / "a" / "broken.JPEG").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    return ["--dataset", "imagenet", "--data-path", str(root), "--batch-size", "3", "--workers", "1",
            "--model", "imagenet_resnet18_1w1a"]


def _fashion_files(tmp_path: Path) -> list[str]:
    """A small Fashion-MNIST in its idx files: the case needs its images' shape, not Debian's package, which a
    machine may lack (a GPU machine did: the run stopped at "not found" before it built the model)."""
    from test_data import write_fashion

    write_fashion(tmp_path / "fashion", n_train=20, n_test=10)
    return ["--data-path", str(tmp_path / "fashion")]


def _null_config(tmp_path: Path) -> list[str]:
    run = tmp_path / "nulls"
    run.mkdir()
    cfg = TrainConfig(epochs=1).resolve().to_dict()
    cfg.update(weight_decay=None, estimator=None)
    (run / "config.json").write_text(json.dumps(cfg))
    return ["--resume", str(run)]


# (flags after `reste train --epochs 1 --no-progress --out DIR`, or a full argv; setup; needles)
ERROR_CASES = {
    "scaling": (["--scaling", "nope"], None, ["unknown --scaling 'nope'", "layer"]),
    "seed-2**70": (["--seed", str(2**70)], None, ["--seed must be in"]),
    "seed-negative": (["--seed", "-1"], None, ["--seed must be in"]),
    "model-data-mismatch": (["--model", "resnet20_1w1a"], None, ["does not fit digits images", "(1, 8, 8)",
                                                                  # (review newuser #7: it said to pick another model)
                                                                  "it is a cifar10 model: add --dataset cifar10"]),
    "empty-train-set": ([], _empty_train_set, ["training set of fashion-mnist is empty"]),
    "garbage-jpeg": ([], _garbage_jpeg, ["cannot read image", "broken.JPEG"]),
    "threads": (["--threads", "100000"], None, ["--threads must be in [1, "]),
    "o-end-nan": (["--o-end", "nan"], None, ["o_end must be a finite number"]),
    "o-end-inf": (["--o-end", "inf"], None, ["o_end must be a finite number"]),
    "weight-decay-nan": (["--weight-decay", "nan"], None, ["--weight-decay must be >= 0"]),
    "weight-decay-inf": (["--weight-decay", "inf"], None, ["--weight-decay must be >= 0"]),
    "epochs-2**70": (["--epochs", str(2**70)], None, ["--epochs must be at most"]),
    "a32-float-model": (["--model", "digits", "--a32"], None, ["--a32 applies to binary models"]),
    # (review docs #8) it trained, and made a sweep setting of its own that trains the same run
    "scaling-float-model": (["--model", "digits", "--scaling", "channel"], None,
                            ["'digits' is full precision: it has no estimator and no binary weights, so --scaling "
                             "would do nothing"]),
    "save-every-0": (["--save-every", "0"], None, ["--save-every must be a positive"]),
    # (review newuser #2) momentum did nothing with adam: a sweep over it tabulated equal runs as two settings
    "momentum-adam": (["--optimizer", "adam", "--momentum", "0.5"], None, ["--momentum is a setting of SGD; "
                                                                        "--optimizer adam has none"]),
    "force-new-run": (["--force"], None, ["--force goes with --resume or --auto-resume"]),  # (review newuser #9)
    # (review newuser #10) torch's allocator error, exit 1
    "model-too-big": (["--dataset", "fashion-mnist", "--model", "fmnist_vgg_1w1a", "--model-option",
                       "width=1000000"], _fashion_files,
                      ["'fmnist_vgg_1w1a' with num_classes=10, width=1000000 needs more memory than this machine has"]),
    # (10^13 classes: 2.6 PB of weights, past any machine's address space; 10^8 fitted the 128 GiB of a GPU machine)
    "summary-model-too-big": (["summary", "digits_1w1a", "--num-classes", str(10**13)], None,
                              ["needs more memory than this machine has for its parameters"]),
    # (review newuser #13) "got 5", a number the user never typed
    "typed-warm-up": (["--warm-up", "5"], None, ["got 5 for 1 epoch; give"]),  # (review rev12 #5: typed, not bare)
    "bare-warm-up": (["--warm-up"], None, ["got 5 (what a bare --warm-up means) for 1 epoch; give --warm-up N with "
                                           "N < 1"]),
    "out-empty": (["train", "--out", ""], None, ["empty"]),
    # (review fuzz1 #6) a width past what torch can size: its overflow was the last-resort line (status 1), or its
    # own words with no remedy
    "model-width-overflows": (["--dataset", "fashion-mnist", "--model", "fmnist_vgg_1w1a", "--model-option",
                               f"width={2**62}"], _fashion_files, ["needs more memory than this machine has"]),
    "model-width-past-int64": (["--dataset", "fashion-mnist", "--model", "fmnist_vgg_1w1a", "--model-option",
                                f"width={10**20}"], _fashion_files, ["needs more memory than this machine has"]),
    # (review fuzz1 #1) 10^8 terms: the run hung in its first step
    "fda-terms": (["--estimator", "fda", "--fda-n-end", str(10**8)], None, ["--fda-n-end must be in [0, 1000]"]),
    # (review fuzz1 #8) the run hung as its loader started, deaf to SIGTERM
    "workers-huge": (["--dataset", "imagenet", "--data-path", "/nowhere", "--workers", str(10**20)], None,
                     ["--workers must be a whole number in [0, "]),
    # (review fuzz1 #5) "" was dropped: a default run
    "preset-empty": (["--preset="], None, ["--preset is empty (an unset variable?); pass a preset's name"]),
    "data-path-empty": (["--data-path="], None, ["--data-path is empty (an unset variable?); pass a path"]),
    "null-config-fields": (None, _null_config, ["must be"]),
    "eval-batch-size-0": (["eval", "RUN", "--batch-size", "0"], None, ["--batch-size must be a positive integer"]),
    "summary-input-size-0": (["summary", "resnet20_1w1a", "--input-size", "0"], None, ["--input-size must be"]),
    "summary-input-size-small": (["summary", "digits_1w1a", "--input-size", "1"], None, ["pass a larger --input-size"]),
    # (review deploy #5) a model fixed to its own size was told to take a larger one
    "summary-input-size-fixed": (["summary", "fmnist_vgg_1w1a", "--input-size", "64"], None,
                                 ["it takes its own, 28x28; drop --input-size"]),
    "summary-a32-float": (["summary", "digits", "--a32"], None, ["--a32 applies to binary models"]),
    "summary-list-and-model": (["summary", "--list", "digits"], None, ["--list lists every model; drop it"]),
    # (review newuser) the list was printed and --a32 ignored
    "summary-list-a32": (["summary", "--list", "--a32"], None, ["--a32 shapes one model: name it (reste summary "
                                                                 "MODEL ...), or drop it to list the models"]),
    "summary-shaping-no-model": (["summary", "--input-size", "5", "--model-option", "width=3"], None,
                                 ["--input-size, --model-option shape one model: name it", "drop them"]),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_error_contract(capsys, tmp_path, finished_run, name):
    """Every case gets one line on stderr, exit status 2, and leaves no run directory behind."""
    flags, setup, needles = ERROR_CASES[name]
    out = tmp_path / "run"
    extra = setup(tmp_path) if setup else []
    if flags is None:  # the setup gives the whole train command
        argv = ["train", "--no-progress", *extra]
    elif flags and flags[0] in ("train", "eval", "summary"):
        argv = [str(finished_run) if a == "RUN" else a for a in flags] + extra
    else:
        argv = [*TRAIN, "--out", str(out), *flags, *extra]
    assert_one_line_error(capsys, argv, *needles)
    assert not out.exists()


def test_amp_fp16_on_the_cpu_warns_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(engine._Run, "run", lambda self: {})  # the warning comes at start-up
    engine.train(TrainConfig(epochs=1, amp="fp16", device="cpu"), tmp_path / "run", progress=False,
                 log=lambda _m: None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reste: warning: --amp fp16 on the CPU")


def test_eval_amp_fp16_on_the_cpu_warns_in_one_line(capsys, finished_run):
    assert main(["eval", str(finished_run / "last.pt"), "--amp", "fp16", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reste: warning: --amp fp16 on the CPU")


def test_divergence_in_epoch_1_leaves_no_run_directory(capsys, tmp_path, monkeypatch):
    original = engine.build_model

    def poisoned(config, num_classes):
        model = original(config, num_classes)
        forward = model.forward
        model.forward = lambda x: forward(x) * (float("nan") if model.training else 1.0)
        return model

    monkeypatch.setattr(engine, "build_model", poisoned)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--out", str(out))
    assert code == 1
    line = err.strip()
    assert "non-finite loss at epoch 1, step 1" in line and "no checkpoint was saved" in line
    assert "last good" not in line and "\n" not in line
    assert not out.exists()


def test_file_modes_agree(tmp_path, finished_run):
    modes = {p.name: p.stat().st_mode & 0o777 for p in finished_run.iterdir() if not p.name.startswith(".")}
    assert len(set(modes.values())) == 1, modes


# ------------------------------------------------------------------ integrity


def _flip(path: Path, position: int, bit: int = 0) -> bytes:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    return bytes(data)


def test_a_flipped_bit_anywhere_in_a_checkpoint_is_refused(capsys, tmp_path, finished_run):
    good = (finished_run / "best.pt").read_bytes()
    n = len(good)
    rng = random.Random(7)
    positions = sorted({0, 3, 30, 64, n // 3, n // 2, n - 120, n - 60, n - 23, n - 1,
                        *(rng.randrange(n) for _ in range(12))})
    bad = tmp_path / "bad.pt"
    for i, position in enumerate(positions):
        bad.write_bytes(_flip(finished_run / "best.pt", position, i % 8))
        assert_one_line_error(capsys, ["eval", str(bad)], str(bad))
        assert_one_line_error(capsys, ["export", str(bad), str(tmp_path / "m.rbnn")], str(bad))
    assert not (tmp_path / "m.rbnn").exists()


def test_a_flipped_float_bit_is_refused_in_format_1_checkpoints_too(capsys, tmp_path, finished_run):
    """Files of checkpoint format 1 carry no SHA-256: the zip's CRC-32 catches the issue's case, one
    exponent bit of a BatchNorm weight."""
    ckpt = load_checkpoint(finished_run / "best.pt")
    old = tmp_path / "v1.pt"
    torch.save({**ckpt, "version": 1}, old)
    assert engine.evaluate_checkpoint(old)["epoch"] == ckpt["epoch"]  # loads
    data = old.read_bytes()
    weight = next(v for k, v in ckpt["model"].items() if k.endswith("bn1.weight") or k.endswith("bn.weight"))
    raw = weight.numpy().tobytes()
    at = data.index(raw) + 3  # the high byte of the first float: sign and exponent
    flipped = bytearray(data)
    flipped[at] ^= 0x10
    old.write_bytes(bytes(flipped))
    assert_one_line_error(capsys, ["eval", str(old)], "CRC")
    # a file of format 2 or later without its checksum is refused too (review mut4 #4: format 2 itself untested)
    stripped = tmp_path / "v2.pt"
    for version in (2, ckpt["version"]):
        torch.save({**ckpt, "version": version}, stripped)
        assert_one_line_error(capsys, ["eval", str(stripped)], "SHA-256 is missing")


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "m.rbnn"
    assert main(["export", str(finished_run / "best.pt"), str(path)]) == 0
    return path


def test_a_flipped_bit_anywhere_in_a_packed_model_is_refused(capsys, tmp_path, exported):
    n = exported.stat().st_size
    rng = random.Random(3)
    bad = tmp_path / "bad.rbnn"
    for i, position in enumerate(sorted({0, 8, 12, 16, 40, n // 2, n - 33, n - 32, n - 1,
                                         *(rng.randrange(n) for _ in range(12))})):
        bad.write_bytes(_flip(exported, position, i % 8))
        assert_one_line_error(capsys, ["predict", str(bad)], str(bad))


def test_format_1_packed_models_still_load(capsys, tmp_path, exported):
    import struct

    import numpy as np

    from reste.export import PackedModel

    blob = exported.read_bytes()
    assert struct.unpack_from("<I", blob, 8)[0] == 2
    v1 = tmp_path / "v1.rbnn"
    v1.write_bytes(blob[:8] + struct.pack("<I", 1) + blob[12:-32])  # version 1: no SHA-256 trailer
    x = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(PackedModel.load(v1)(x), PackedModel.load(exported)(x))


# --------------------------------------------------------------------- predict


@pytest.mark.parametrize("shape", [(3, 1, 9, 9), (2, 1, 28, 28), (1, 1, 600, 600), (2, 3, 8, 8)])
def test_predict_refuses_images_of_another_shape(capsys, tmp_path, exported, shape):
    import numpy as np

    images = tmp_path / "x.npy"
    np.save(images, np.zeros(shape, np.float32))
    assert_one_line_error(capsys, ["predict", str(exported), str(images)], "(1, 8, 8)", str(shape[1:]))
    assert not (tmp_path / "x.pred.npy").exists()


def test_predict_refuses_a_data_set_of_another_shape(capsys, exported):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not on this machine")
    assert_one_line_error(capsys, ["predict", str(exported), "--dataset", "fashion-mnist"], "(1, 28, 28)",
                          "(1, 8, 8)")


def test_predict_writes_exactly_the_path_it_reports(capsys, tmp_path, exported, finished_run):
    import numpy as np

    images = tmp_path / "x.npy"
    np.save(images, np.random.default_rng(0).normal(size=(7, 1, 8, 8)).astype(np.float32))
    out = tmp_path / "preds"
    code, stdout, err = run_cli(capsys, "predict", str(exported), str(images), "-o", str(out))
    assert code == 0, err
    assert f"written to {out} " in stdout
    assert out.is_file() and not (tmp_path / "preds.npy").exists()
    assert np.load(out).shape == (7,)
    assert_one_line_error(capsys, ["predict", str(exported), str(images), "-o", "/proc/reste-preds.npy"],
                          "reste-preds.npy")
    assert_one_line_error(capsys, ["export", str(finished_run / "best.pt"), "/proc/m.rbnn"], "/proc/m.rbnn")
    assert_one_line_error(capsys, ["predict", str(exported), str(images), "-o", str(tmp_path / "no" / "p.npy")],
                          "does not exist")


def test_plot_takes_a_torn_last_line_and_a_switched_estimator(capsys, tmp_path, finished_run):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    second = {k: v for k, v in json.loads(lines[1]).items() if k != "o"}  # resumed with --force as ste
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + json.dumps(second) + "\n" + '{"epoch": 3, "lr": 0.')
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0, capsys.readouterr().err
    assert (tmp_path / "c.png").stat().st_size > 0
    assert [m["epoch"] for m in rundir.read_metrics(run)] == [1, 2]
    (run / "metrics.jsonl").write_text("not json\n" + lines[0] + "\n")  # damage inside the file is an error
    assert_one_line_error(capsys, ["plot", str(run)], "line 1 is not JSON")


# ------------------------------------------------------------------ unreadable image files (review FF)


def _image_folder(root: Path) -> Path:
    """An ImageNet-style folder: 2 classes, 4 train images each (4 batches of 2), 1 val image each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 1)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def _folder_config(root: Path, workers: int = 0) -> TrainConfig:
    return TrainConfig(dataset="imagenet", data_path=str(root), model="imagenet_resnet18_1w1a", epochs=1,
                       batch_size=2, eval_batch_size=2, workers=workers, threads=1)


@pytest.fixture(scope="module")
def folder_reference(tmp_path_factory):
    """The data set and an uninterrupted run's weights and metrics."""
    base = tmp_path_factory.mktemp("folder")
    root = _image_folder(base / "data")
    engine.train(_folder_config(root), base / "run", progress=False, log=lambda _m: None)
    return (root, load_checkpoint(base / "run" / "last.pt")["model"], rundir.read_metrics(base / "run")[0],
            base / "run")


def _with_a_bad_file(tmp_path: Path, reference, name: str) -> tuple[Path, Path, bytes]:
    """A copy of the reference data set whose file ``name`` is not an image: (root, that file, its bytes)."""
    root = tmp_path / "data"
    shutil.copytree(reference[0], root)
    bad = root / name
    good = bad.read_bytes()
    bad.write_bytes(b"not an image")
    return root, bad, good


def _same_run(run: Path, reference) -> None:
    _, weights, metrics, _ = reference
    state = load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(state[k], v) for k, v in weights.items() if isinstance(v, torch.Tensor))
    got = rundir.read_metrics(run)[0]
    assert {k: v for k, v in got.items() if k != "time"} == {k: v for k, v in metrics.items() if k != "time"}


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_test_image_keeps_the_trained_epoch(tmp_path, folder_reference, workers):
    """The test images are read after the epoch's training: one that cannot be read cost the whole epoch (and
    on the first, the run folder). last.pt now holds the trained epoch, and a resume only evaluates it: on a
    training set that changed meanwhile too (nothing of the epoch is left to train). A worker's error keeps its
    own line before ours (review JJ: it came back as "Caught UsageError in DataLoader worker process 0.")."""
    from reste.errors import one_line

    root, bad, good = _with_a_bad_file(tmp_path, folder_reference, "val/b/0.png")
    run = tmp_path / "run"
    with pytest.raises(UsageError) as caught:
        engine.train(_folder_config(root, workers), run, progress=False, log=lambda _m: None)
    assert re.fullmatch(r"cannot read image .*0\.png .*; .*last\.pt keeps epoch 1's training: continue with "
                        r"`reste train --resume .*` once the data is mended", one_line(caught.value))
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 4) and not rundir.read_metrics(run)
    bad.write_bytes(good)
    for extra in ("8.png", "9.png"):  # 10 images: 5 batches of 2 now
        (root / "train" / "a" / extra).write_bytes((root / "train" / "a" / "0.png").read_bytes())
    lines: list[str] = []
    engine.resume(run, progress=False, log=lines.append)
    assert lines[0] == f"resuming {run} at the evaluation of epoch 1/1 (its training is done)"
    _same_run(run, folder_reference)


def test_a_stop_signal_during_the_evaluation_stops_there(tmp_path, folder_reference, monkeypatch):
    """(review userD #3) The evaluation of image files (minutes on ImageNet's 50,000) went on to its end after a
    SIGTERM, past a scheduler's grace time (SIGKILL). last.pt holds the epoch's training by then: the run stops at
    once, and a resume evaluates the epoch, as the uninterrupted run did."""
    import signal

    root = folder_reference[0]
    real = engine._evaluate_batches

    def signalled(*args, **kwargs):  # the signal comes as the evaluation starts
        monkeypatch.setattr(engine.StopRequest, "signum", int(signal.SIGTERM))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_evaluate_batches", signalled)
    run = tmp_path / "run"
    with pytest.raises(engine.Preempted, match=r"stopped by SIGTERM at the evaluation of epoch 1; .*last\.pt holds "
                                               r"its training: continue with `reste train --resume"):
        engine.train(_folder_config(root), run, progress=False, log=lambda _m: None)
    assert not rundir.read_metrics(run)
    monkeypatch.undo()
    lines: list[str] = []
    engine.resume(run, progress=False, log=lines.append)
    assert lines[0] == f"resuming {run} at the evaluation of epoch 1/1 (its training is done)"
    _same_run(run, folder_reference)


def test_an_unreadable_training_image_keeps_the_steps_before_it(tmp_path, folder_reference, monkeypatch):
    """A bad file mid-epoch keeps the steps done (one process), says how to go on; a resume over another number
    of images is refused (its epoch order would differ), and over the mended set gives the uninterrupted run."""
    from reste.data import sampling

    order = sampling.epoch_order(8, 0, 0).tolist()  # the first epoch's order; files sort as a/0..3, b/0..3
    index = order[5]  # in the third batch of two
    root, bad, good = _with_a_bad_file(tmp_path, folder_reference, f"train/{'ab'[index // 4]}/{index % 4}.png")
    run = tmp_path / "run"
    with pytest.raises(UsageError, match=r"^cannot read image .*; .*last\.pt keeps epoch 1 up to step 2/4: continue "
                                         r"with `reste train --resume"):
        engine.train(_folder_config(root), run, progress=False, log=lambda _m: None)
    assert load_checkpoint(run / "last.pt")["step"] == 2
    bad.write_bytes(good)
    extra = root / "train" / "a" / "9.png"
    shutil.copy(root / "train" / "a" / "0.png", extra)
    with pytest.raises(UsageError, match="saved inside epoch 1 over 8 training images, and the data set now has 9"):
        engine.resume(run, progress=False, log=lambda _m: None)
    extra.unlink()
    # the resume reads no image of the two batches done (each sample's augmentation is its own)
    read: list[int] = []
    original, batch = sampling.TransformDataset.__getitem__, sampling.TransformDataset.__getitems__
    monkeypatch.setattr(sampling.TransformDataset, "__getitem__",
                        lambda self, key: read.append(key) or original(self, key))
    # (and a batch's at once, as the DataLoader asks for them: review perf4)
    monkeypatch.setattr(sampling.TransformDataset, "__getitems__",
                        lambda self, keys: read.extend(keys) or batch(self, keys))
    engine.resume(run, progress=False, log=lambda _m: None)
    assert [k[2] for k in read if isinstance(k, tuple)] == order[4:]
    _same_run(run, folder_reference)


def test_eval_reads_image_files_with_worker_processes_by_default(folder_reference, monkeypatch):
    """reste eval decoded ImageNet's 50,000 test images in its own process unless told --workers."""
    from reste import config

    monkeypatch.setattr(config, "usable_cpus", lambda: 2)
    taken: list[int] = []
    real = engine.make_loaders
    monkeypatch.setattr(engine, "make_loaders", lambda *a, **k: taken.append(k["workers"]) or real(*a, **k))
    result = engine.evaluate_checkpoint(folder_reference[3] / "last.pt")
    assert taken == [2] and result["top1"] == folder_reference[2]["test_acc"]
    engine.evaluate_checkpoint(folder_reference[3] / "last.pt", workers=0)
    assert taken == [2, 0]


def test_a_loader_that_fails_otherwise_keeps_the_steps_and_blames_no_data(tmp_path, monkeypatch):
    """A DataLoader worker killed (the out-of-memory killer) is no file to mend: the steps done are kept, a note
    says where and how to go on, and the loader's own error follows (review JJ)."""
    from reste.data import memory

    real = memory.TensorLoader._batches

    def two_then_fail(self, order, gen):
        for i, batch in enumerate(real(self, order, gen)):
            if i == 2 and self.shuffle:  # the training loader, not the test one
                raise RuntimeError("DataLoader worker (pid(s) 1234) exited unexpectedly")
            yield batch

    monkeypatch.setattr(memory.TensorLoader, "_batches", two_then_fail)
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        engine.train(TrainConfig(epochs=1, threads=1), tmp_path / "run", progress=False, log=lines.append)
    note = next(line for line in lines if line.startswith("note: the training data's loader"))
    assert "failed in epoch 1 (RuntimeError)" in note and "keeps epoch 1 up to step 2/" in note
    assert "mended" not in note and load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


def test_a_worker_killed_while_it_sends_a_batch_is_said_to_have_died(tmp_path, monkeypatch):
    """(review rev13 #8) a worker killed in the middle of sending its batch ended the run with a bare
    "ConnectionResetError: [Errno 104] Connection reset by peer" (or EOFError), which says nothing of a worker."""
    from reste.data import memory

    real = memory.TensorLoader._batches

    def two_then_cut(self, order, gen):
        for i, batch in enumerate(real(self, order, gen)):
            if i == 2 and self.shuffle:
                raise ConnectionResetError(104, "Connection reset by peer")
            yield batch

    monkeypatch.setattr(memory.TensorLoader, "_batches", two_then_cut)
    lines: list[str] = []
    with pytest.raises(RuntimeError, match=r"^a DataLoader worker died while sending a batch \(ConnectionResetError: "):
        engine.train(TrainConfig(epochs=1, threads=1), tmp_path / "run", progress=False, log=lines.append)
    assert any("keeps epoch 1 up to step 2/" in line for line in lines), lines


@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or sys.platform == "win32", reason="POSIX signals")
def test_a_loader_worker_killed_during_a_step_keeps_the_steps_done(tmp_path, folder_reference, monkeypatch):
    """(review imgdist #4) PyTorch's SIGCHLD handler raised a killed worker's death inside the step the main thread
    was in: the steps done were lost, and a first epoch's run folder removed. The death now comes from the batch
    the loader waits for, after the steps done are saved."""
    from reste.data import formats

    real_read, reads = formats._read_image, []

    def read(path):  # in the worker: it dies (as by the out-of-memory killer) at its 6th image, inside batch 3
        reads.append(path)
        if len(reads) == 6:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_read(path)

    real_step = engine._Run.step

    def slow_step(self, images, target):  # the main thread is inside a step when the worker dies
        time.sleep(0.5)
        return real_step(self, images, target)

    monkeypatch.setattr(formats, "_read_image", read)
    monkeypatch.setattr(engine._Run, "step", slow_step)
    lines: list[str] = []
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly"):
        engine.train(_folder_config(folder_reference[0], workers=1), tmp_path / "run", progress=False,
                     log=lines.append)
    # the batches trained before the death: 1 or 2 (batch 2 may die in the worker's queue with it)
    kept = load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    assert kept in (1, 2), lines
    note = next(line for line in lines if line.startswith("note: the training data's loader"))
    assert f"keeps epoch 1 up to step {kept}/4" in note
    assert callable(signal.getsignal(signal.SIGCHLD))  # the loader's own handler is back for other loaders


def test_a_trained_epoch_resumed_on_a_longer_schedule_keeps_the_values_it_trained_with(tmp_path, folder_reference,
                                                                                         monkeypatch, isolated):
    """An epoch saved before its evaluation trained on the old schedule: its line keeps that lr and o, and the
    note about the new length starts at the next epoch (review JJ: the line showed the new schedule's). (The
    folder's data, whose test images are files, on a model of one binary layer over pooled images: the checks
    read the schedule, not resnet18's steps, seconds each on the CPU.)"""
    import dataclasses

    from torch import nn

    from reste.models import register_model

    @register_model(dataset="imagenet")
    def pooled_imagenet_test(*, num_classes: int, conv) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), conv.linear(12, num_classes))

    real, calls = engine.evaluate, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise UsageError("cannot read image val/b/0.png (made up)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", second_fails)
    cfg = dataclasses.replace(_folder_config(folder_reference[0]), epochs=2, model="pooled_imagenet_test")
    with pytest.raises(UsageError):
        engine.train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    monkeypatch.undo()
    lines: list[str] = []
    engine.resume(tmp_path / "run", {"epochs": 3}, force=True, progress=False, log=lines.append)
    assert "continues on a 3-epoch one: from epoch 3 the learning rate" in lines[0]
    second = rundir.read_metrics(tmp_path / "run")[1]
    assert (second["lr"], second["o"]) == (0.05, pytest.approx(1.586, abs=1e-3))  # the 2-epoch schedule's epoch 2
    assert [m["epoch"] for m in rundir.read_metrics(tmp_path / "run")] == [1, 2, 3]


# ------------------------------------------------------------- a log file's lines


def _unbuffered_env_removed():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONUNBUFFERED", None)  # as under a scheduler: Python's own block buffering of a file
    return env


def test_a_log_file_holds_each_epoch_line_before_the_process_ends(tmp_path):
    """stdout a file (a cluster job's log): the epoch line is there while the run goes on, and a kill -9 after it
    keeps it (block buffering would hold every line until the process exits)."""
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reste", "train", "--epochs", "6", "--threads", "1",
                                 "--no-progress", "--out", str(tmp_path / "run")],
                                stdout=out, stderr=subprocess.STDOUT, env=_unbuffered_env_removed())
    try:
        _wait_for(lambda: "epoch 1/6" in log.read_text() or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == -signal.SIGKILL, text  # killed while it ran, not flushed at its exit
    assert "epoch 1/6" in text and "done:" not in text, text


def test_the_library_default_log_flushes_each_line(tmp_path):
    log = tmp_path / "out.log"
    with open(log, "wb") as out:  # os._exit: no flush at exit, as a kill -9
        subprocess.run([sys.executable, "-c", "import os; from reste.errors import print_line; "
                        "print_line('epoch 1/1'); os._exit(0)"], stdout=out, env=_unbuffered_env_removed(),
                       check=True)
    assert log.read_text() == "epoch 1/1\n"
    from reste.errors import print_line
    from reste.experiments.sweep import run_sweep
    import inspect

    for fn in (engine.train, engine.resume, engine.train_or_resume, run_sweep):
        assert inspect.signature(fn).parameters["log"].default is print_line, fn.__name__


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_file_size_limit_during_a_real_checkpoint_write_is_the_oserror(tmp_path):
    """torch.save's zip writer reports a failed write of a tensor of more than its buffer as a RuntimeError
    ("unexpected pos"); atomic_write gives the OSError that caused it, naming the file, as for a small one."""
    script = (
        "import resource, signal, sys, torch\n"
        "from reste.checkpoint import atomic_write\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "try:\n"
        "    atomic_write(sys.argv[1], lambda f: torch.save({'x': [torch.zeros(100_000)] * 4}, f))\n"
        "except OSError as err:\n"
        "    print('OSError', err.errno, err.filename)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(engine.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "last.pt")], env=env, capture_output=True,
                          text=True, timeout=300)
    import errno

    assert proc.stdout.split() == ["OSError", str(errno.EFBIG), str(tmp_path / "last.pt")], proc.stderr
    assert not list(tmp_path.iterdir())  # no temporary file left


@pytest.mark.parametrize("code, advice", [("ENOSPC", "free some space"), ("EFBIG", "ulimit -f")])
def test_a_full_disk_or_a_file_size_limit_names_the_file_and_its_run(capsys, tmp_path, monkeypatch, code, advice):
    """write() errors carry no file name: the line names the file being written (its final name, not the
    temporary one), which names the run, and EFBIG (ulimit -f) gets advice, not a traceback-style line."""
    import errno

    number = getattr(errno, code)

    def full(f):
        raise OSError(number, os.strerror(number))

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "last.pt", full)
    assert info.value.filename == str(tmp_path / "last.pt") and info.value.errno == number
    assert not [p for p in tmp_path.iterdir()]  # no temporary file left
    monkeypatch.setattr(os, "fsync", lambda _fd: full(None))
    with pytest.raises(OSError) as info:
        rundir.append_metrics(tmp_path, {"epoch": 1})
    assert info.value.filename == str(tmp_path / "metrics.jsonl")
    monkeypatch.undo()

    run = tmp_path / "run"
    real = atomic_write

    def failing(path, write):
        return real(path, full if Path(path).name == "last.pt" else write)

    monkeypatch.setattr("reste.checkpoint.atomic_write", failing)
    code_, _, err = run_cli(capsys, *TRAIN, "--out", str(run))
    assert code_ == 1 and len(err.strip().splitlines()) == 1, err
    assert f"writing {run / 'last.pt'}; " in err and advice in err and "--debug" not in err, err


@pytest.mark.parametrize("code, advice", [("EACCES", "make the folder writable again"),
                                         ("EROFS", "the file system has gone read-only"), ("EIO", "check the disk")])
def test_a_run_folder_that_stops_taking_writes_names_the_file_and_what_the_run_keeps(capsys, tmp_path, monkeypatch,
                                                                                      code, advice):
    """(review chaos #1) a run folder made read-only mid-run (its mode changed, a read-only remount, a failing disk)
    ended in "PermissionError: ... '.last.pt.rszwhx5h.tmp'": a temporary file that never existed, and nothing of
    what the run keeps. The line names last.pt, the cause and how to continue, as a full disk's does."""
    import errno
    import tempfile

    number = getattr(errno, code)
    real_mkstemp = tempfile.mkstemp
    calls = []

    def refused(*args, **kwargs):  # mkstemp's own error: the random name it tried
        if kwargs.get("prefix", "").startswith(".last.pt."):
            calls.append(1)
            if len(calls) == 2:  # the second epoch's checkpoint
                raise OSError(number, os.strerror(number), str(tmp_path / "run" / ".last.pt.rszwhx5h.tmp"))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    run = tmp_path / "run"
    code_, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", str(run))
    assert code_ == 1 and len(err.strip().splitlines()) == 1, err
    assert f"writing {run / 'last.pt'}; {advice}" in err and "rszwhx5h" not in err and "--debug" not in err, err
    assert "keeps" in err and "--resume" in err, err
    from reste import cli  # a read of the data set's files is no write of the run folder: not said as one

    assert cli._unexpected(OSError(number, os.strerror(number), "/data/imagenet/train/n01/x.JPEG"), False,
                           "train", []) == 1
    assert "writing" not in capsys.readouterr().err


def test_a_preemption_pickled_from_a_sweep_worker_keeps_what_run_again_words():
    stop = engine.Preempted("stopped by SIGTERM at epoch 2: continue with --resume R", signal.SIGTERM,
                            kept="stopped by SIGTERM at epoch 2")
    back = pickle.loads(pickle.dumps(stop))
    assert (str(back), back.signum, back.kept) == (str(stop), stop.signum, stop.kept)
    back.run_again()
    assert str(back).startswith("stopped by SIGTERM at epoch 2: ") and "--resume" not in str(back)


def test_under_torchrun_a_worker_says_rank_0s_stop_checkpoint_failed(tmp_path):
    """Rank 0 writes last.pt: when its save fails, the processes agree on it, so a worker (whose save_partial wrote
    nothing and succeeded) does not claim that last.pt holds the stop."""
    run = engine._Run.__new__(engine._Run)
    run.run_dir, run.saved, run.stop = tmp_path, (1, 0), engine.StopRequest()
    from reste.distributed import Dist

    run.dist = Dist(rank=1, world_size=2)  # (a worker: rank 0 writes last.pt)
    run.stop.signum = signal.SIGTERM

    def saved_nothing(epoch, step, sums):
        run.saved = (epoch, step)  # what save_partial records on a process that writes no file

    run.save_partial = saved_nothing
    run._agree = lambda local: 1  # rank 0 reported a failure
    with pytest.raises(engine.Preempted) as info:
        run._stop_saving(1, 7, 10, [0.0, 0, 0, 0])
    text = str(info.value)
    assert "but its checkpoint failed (on rank 0)" in text and "keeps epoch 1" in text, text
    assert run.saved == (1, 0)
    run._agree = lambda local: local  # no process failed: the usual stop line
    with pytest.raises(engine.Preempted) as info:
        run._stop_saving(1, 7, 10, [0.0, 0, 0, 0])
    assert "failed" not in str(info.value) and "holds it" in str(info.value), str(info.value)


def test_an_epochs_line_is_told_once_last_pt_holds_it_even_where_best_pt_then_fails(tmp_path, monkeypatch):
    """(review userD #5) A full disk at best.pt: the epoch's line came after best.pt, so the log never showed an
    epoch that metrics.jsonl and last.pt kept (nor did the resume that repaired best.pt)."""
    from reste import checkpoint as ckpt_io

    real = ckpt_io.atomic_write

    def full_at_best(path, write, *args, **kwargs):
        if Path(path).name == "best.pt":
            raise OSError(28, "No space left on device")
        return real(path, write, *args, **kwargs)

    monkeypatch.setattr(ckpt_io, "atomic_write", full_at_best)
    lines = []
    with pytest.raises(OSError, match="No space left"):
        engine.train(TrainConfig(dataset="digits", epochs=2, threads=1), tmp_path / "r", progress=False,
                     log=lines.append)
    assert any(line.startswith("epoch 1/2") for line in lines), lines
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("at", ["train", "eval", "first"])
def test_a_loader_process_the_stop_signal_killed_as_it_started_is_a_stop(tmp_path, monkeypatch, at):
    """(review portable #8) a worker started by spawn (macOS, Windows; forkserver, Linux from Python 3.14) sets its
    handlers only after importing torch: the job's SIGTERM (or a terminal's Ctrl-C) in those seconds killed it, and
    the run, its step saved, ended as an error (exit 1) instead of a stop (143). Here the loader fails the way the
    killed worker makes it fail, after the signal reached the run."""
    import os

    from reste.data import memory

    real = memory.TensorLoader._batches

    def killed(self, order, gen):
        for i, batch in enumerate(real(self, order, gen)):
            if (i == {"train": 2, "first": 0}[at] and self.shuffle) if at != "eval" else not self.shuffle:
                os.kill(os.getpid(), signal.SIGTERM)
                raise RuntimeError("DataLoader worker (pid(s) 1234) exited unexpectedly")
            yield batch

    monkeypatch.setattr(memory.TensorLoader, "_batches", killed)
    monkeypatch.setattr(engine, "data_device", lambda *a: None)  # read as image files are (eval: training saved first)
    lines: list[str] = []
    with pytest.raises(engine.Preempted) as stopped:
        engine.train(TrainConfig(epochs=1, threads=1), tmp_path / "run", progress=False, log=lines.append)
    assert stopped.value.signum == signal.SIGTERM
    if at == "train":
        assert "stopped by SIGTERM at epoch 1, step 2/" in str(stopped.value)
        assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    elif at == "first":  # (review rev14 #5) before any step: a stop all the same, the new run's folder removed
        assert str(stopped.value) == "stopped by SIGTERM before its first step; nothing was saved: call train again"
        assert not (tmp_path / "run" / "config.json").exists()
    else:
        assert "stopped by SIGTERM at the evaluation of epoch 1" in str(stopped.value)


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_a_run_file_that_cannot_be_read_is_said_as_a_read(capsys, tmp_path, monkeypatch, finished_run, name):
    """(review diff10 #5) an unreadable config.json or metrics.jsonl (mode 000, which root's tests cannot make:
    the read is refused here as the kernel refuses it) was said as a refused write, "make the folder writable
    again", which the folder already was."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    real = Path.read_bytes

    def refused(self):
        if self == run / name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refused)
    for argv in (["train", "--resume", str(run), "--epochs", "3", "--force"], ["show", str(run)]):
        assert_one_line_error(capsys, argv, f"cannot read {run / name} (Permission denied); make it readable")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_for_metrics_is_refused_by_show_as_by_the_resume(capsys, tmp_path, finished_run):
    """(review diff10 #6) the resume refused a FIFO metrics.jsonl, while show took it for no lines and told to
    resume, and a sweep's plan to continue it: each says the same now."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    for argv in (["show", str(run)], ["train", "--resume", str(run)]):
        assert_one_line_error(capsys, argv, f"{run / 'metrics.jsonl'} is not a file (a FIFO")
    with pytest.raises(UsageError, match="is not a file"):
        rundir.read_metrics(run, missing_ok=True)
    (run / "metrics.jsonl").unlink()
    shutil.copy(finished_run / "metrics.jsonl", run / "metrics.jsonl")
    (run / "top").write_text("a file")  # (review chaos2 #4) its FileExistsError was exit 1, the generic line
    assert_one_line_error(capsys, ["train", "--resume", str(run), "--epochs", "3", "--force"],
                          f"{run / 'top'} is not a folder")


def test_a_top_folder_that_is_a_link_is_refused_and_its_target_left_alone(tmp_path, capsys):
    """(review sec3 #2) a received run folder whose top/ linked to another run's: a resume with nothing to train
    deleted that run's best checkpoints through the link, unsaid. A top that is a link is refused, its target kept.
    (review mut11 #10) keep_top and top_checkpoints refuse it themselves, not only through the run folder's check
    that comes first: keep_top clears no orphaned temporary file through it."""
    from reste.cli import main

    victim, received = tmp_path / "victim", tmp_path / "received"
    assert main(["train", "--epochs", "3", "--keep-top", "3", "--out", str(victim), "--threads", "1",
                 "--no-progress"]) == 0
    assert main(["train", "--epochs", "1", "--keep-top", "1", "--seed", "1", "--out", str(received), "--threads", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    kept = sorted(p.name for p in (victim / "top").iterdir())
    assert len(kept) == 3
    shutil.rmtree(received / "top")
    (received / "top").symlink_to(victim / "top")
    for argv in (["train", "--resume", str(received)], ["train", "--resume", str(received), "--epochs", "2",
                                                        "--force"]):
        assert_one_line_error(capsys, argv, f"{received / 'top'} is a link: a run's top is a folder of its own")
    assert sorted(p.name for p in (victim / "top").iterdir()) == kept
    orphan = victim / "top" / f".{kept[0]}.abcdef.tmp"  # (what atomic_write leaves when it is killed)
    orphan.write_bytes(b"x")
    with pytest.raises(UsageError, match="is a link"):
        rundir.keep_top(received, 1, 1, b"x")
    with pytest.raises(UsageError, match="is a link"):
        rundir.top_checkpoints(received)
    assert orphan.exists()
    orphan.unlink()
    assert sorted(p.name for p in (victim / "top").iterdir()) == kept
