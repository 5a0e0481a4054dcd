"""The reste command: output of train, eval, presets and summary."""

from __future__ import annotations

import json
import re

import pytest

from reste import models
from reste.cli import main
from reste.config import PRESETS


def test_train_then_eval(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--seed", "4", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("training digits_1w1a (reste) on digits: 2 epochs")
    assert re.match(r"epoch 1/2  lr 0\.1  o 1  train loss \d\.\d{4} acc [\d.]+  test loss", lines[1])
    assert "o 1.586" in lines[2]  # cosine ramp at e/E = 1/2
    final = re.search(r"best test acc ([\d.]+)% \(epoch (\d), top-5 [\d.]+%\), final test acc ([\d.]+)%", lines[-1])
    assert final and float(final.group(1)) >= float(final.group(3))

    assert main(["eval", str(out)]) == 0
    text = capsys.readouterr().out
    top1, stored = re.search(r"top-1 ([\d.]+)%.*stored at training: ([\d.]+)%", text).groups()
    assert top1 == stored and top1 == final.group(3)
    assert ", amp" not in text
    # (review mut7 #14) another precision than the run's: the line says so, beside the figure it may move
    assert main(["eval", str(out), "--amp", "bf16"]) == 0
    assert "digits_1w1a on digits test, epoch 2, amp bf16: top-1 " in capsys.readouterr().out


def test_eval_takes_threads(capsys, tmp_path, monkeypatch):
    """(review docs, suggestion) The README's first commands advise `--threads 1`, which eval refused; by default
    it keeps the run's own count (its logged accuracy to the bit), and it puts torch's back after."""
    import torch

    from cli_checks import one_line_error

    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "2"]) == 0
    capsys.readouterr()
    asked, before = [], torch.get_num_threads()
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (asked.append(n), real(n))[1])
    assert main(["eval", str(out), "--threads", "1", "--device", "cpu"]) == 0
    assert asked[0] == 1 and torch.get_num_threads() == before
    asked.clear()
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    assert asked[0] == 2
    capsys.readouterr()
    assert "--threads must be in [1, " in one_line_error(capsys, "eval", str(out), "--threads", "0")


def test_resume_a_finished_run_does_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "already finished 1 epoch;" in capsys.readouterr().out


def test_presets_lists_every_row_with_its_accuracy(capsys):
    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    for preset in PRESETS.values():
        row = next(line for line in text.splitlines() if line.startswith(preset.name + " "))
        assert f"{preset.top1:.2f}" in row


def test_the_authors_cal_ind_flag_asks_for_their_indicators(capsys):
    """(review mut7 #5) README: `--cal_ind` is `--indicators paper`, the authors' definition."""
    for flag in ("--cal_ind", "--cal-ind"):
        assert main(["train", flag, "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["indicators"] == "paper"


def test_print_config_shows_every_setting_the_run_records(capsys, tmp_path):
    assert main(["train", "--preset", "cifar10-resnet20-1w1a", "--lr", "0.05", "--print-config"]) == 0
    shown = capsys.readouterr()
    config = json.loads(shown.out)
    assert config["estimator_options"] == {"o": 1.0, "t": 1.5, "interval": 0.1, "o_end": 3.0, "schedule": "cosine"}
    assert (config["lr"], config["epochs"], config["warm_up"], config["batch_size"]) == (0.05, 1000, 5, 256)
    assert "changes preset cifar10-resnet20-1w1a's recipe: --lr 0.05 (preset: 0.1)" in shown.err
    assert "full precision" not in shown.err
    assert main(["train", "--model", "digits", "--print-config"]) == 0  # (review userB #1) a float twin
    assert "note: digits is full precision: estimator, estimator_options, a32 and scaling are recorded but train " \
           "nothing" in capsys.readouterr().err
    out = tmp_path / "run"
    flags = ["train", "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "1", "--alpha", "0.3"]
    assert main([*flags, "--estimator", "dsq", "--print-config"]) == 0 and not out.exists()
    shown = json.loads(capsys.readouterr().out)
    assert shown["estimator_options"] == {"alpha": 0.3, "alpha_end": 0.05, "schedule": "linear"}
    assert main([*flags, "--estimator", "dsq"]) == 0
    assert json.loads((out / "config.json").read_text()) == shown  # defaults included: a later default cannot move it
    assert main(["train", "--resume", str(out), "--print-config"]) == 2
    assert "a run's own are in its" in capsys.readouterr().err
    # (review combos #6) --auto-resume on a folder holding a run continues that run: not a new run's settings
    assert main(["train", "--out", str(out), "--auto-resume", "--print-config"]) == 2
    assert f"a run's own are in its {out}/config.json" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "new"), "--auto-resume", "--print-config"]) == 0  # starts one


def test_summary_totals(capsys):
    assert main(["summary", "resnet20_1w1a"]) == 0
    text = capsys.readouterr().out
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "269,850" in total
    lines = text.splitlines()
    assert lines[0] == "resnet20_1w1a (cifar10): expects 3x32x32 images (C x H x W)"
    model = models.create("resnet20_1w1a")
    totals = models.summary_totals(models.layer_summary(model, (3, 32, 32)), (3, 32, 32))
    assert models.format_totals(totals) in text
    assert f"compression {totals['compression']:.1f}x" in lines[-1] and totals["compression"] > 20
    assert main(["summary", "digits_1w1a", "--input-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "expects 1x8x8 images (C x H x W), summarised at 1x16x16" in text and "input       1x16x16" in text
    assert main(["summary", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in models.list_models())


def test_summary_takes_model_options_as_train_does(capsys):
    """reste summary fmnist_vgg_1w1a --model-option width=8 summarises the model a run with that option
    trains; an option the model lacks, a bad value and a malformed one are one-line errors."""
    assert main(["summary", "fmnist_vgg_1w1a", "--model-option", "width=8"]) == 0
    total = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("parameters"))
    params = sum(p.numel() for p in models.create("fmnist_vgg_1w1a", width=8).parameters())
    assert f"parameters  {params:,}" in total
    assert params != sum(p.numel() for p in models.create("fmnist_vgg_1w1a").parameters())
    for option, message in (("depth=8", "has no option depth; valid: width"),
                            ("width=-3", "bad --model-option for 'fmnist_vgg_1w1a'"),
                            ("width", "expects KEY=VALUE")):
        assert main(["summary", "fmnist_vgg_1w1a", "--model-option", option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_summary_of_a_run_folder_or_a_file_says_it_takes_a_model_name(capsys, tmp_path, monkeypatch):
    """(review install2) `reste summary runs/digits` said "unknown model 'runs/digits'; did you mean 'digits'?" (the
    float model): a path is named as one, with the run's own model as a command that works."""
    run = tmp_path / "runs" / "c"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "fmnist_vgg_1w1a", "a32": True,
                                                 "model_options": {"width": 8}}))
    (run / "best.pt").write_bytes(b"")
    assert main(["summary", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder; `reste summary` takes a model's name" in err[0], err
    assert "did you mean" not in err[0]
    command = err[0].split("this run's model: reste summary ")[1].split()
    assert command == ["fmnist_vgg_1w1a", "--a32", "--model-option", "width=8"]
    assert main(["summary", *command]) == 0  # the command it gives works
    capsys.readouterr()
    assert main(["summary", str(run / "best.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file; `reste summary` takes a model's name" in err[0] and "reste export" in err[0]
    monkeypatch.chdir(tmp_path)  # a folder named as a model is not taken for a path
    (tmp_path / "digits_1w1a").mkdir()
    assert main(["summary", "digits_1w1a"]) == 0


def test_help_and_no_command(capsys):
    assert main([]) == 2  # a missing command is bad input: the help goes to stderr, as an error's line does
    shown = capsys.readouterr()
    assert "train" in shown.err and shown.out == ""


def test_help_names_choices_positionals_and_what_each_command_does(capsys):
    for command in ("train", "eval", "show", "summary", "presets", "report", "export", "predict", "sweep", "plot"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        description = text.split("\n\n")[1]  # after the usage block
        assert not description.lstrip().startswith(("positional arguments:", "options:")), (command, text[:300])
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--amp {none,bf16,fp16}", "--scaling {layer,channel,none}", "--optimizer {sgd,adam,adamw,bop}",
                  "--data-device {auto,cpu}", "--indicators [{general,paper}]", "a bare --indicators means general",
                  "usage: reste train [--preset NAME] [flags]"):
        assert shown in text, shown
    for argv, names in ((["export"], "CHECKPOINT, OUT"), (["show"], "RUN_DIR"), (["report"], "SWEEP_DIR"),
                        (["eval"], "CHECKPOINT"), (["predict"], "EXPORTED")):
        assert main(argv) == 2
        assert f"the following arguments are required: {names} " in capsys.readouterr().err




def _arguments(parser, path="reste"):
    """(command, first option string or positional name, help) of every argument, subcommands included."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _arguments(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((path, action.option_strings[0] if action.option_strings else action.dest, action.help))
    return found


def _without_help(parser):
    import argparse

    return {(path, flag) for path, flag, text in _arguments(parser)
            if not (text or "").strip() or text == argparse.SUPPRESS}


def test_the_help_walk_finds_a_missing_help_in_a_subcommand():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    p = sub.add_parser("go")
    p.add_argument("--fast", help="quickly")
    p.add_argument("--slow")
    p.add_argument("where")
    assert _without_help(parser) == {("reste go", "--slow"), ("reste go", "where")}


def test_every_flag_has_help_text():
    from reste.cli import build_parser

    parser = build_parser()
    arguments = _arguments(parser)
    commands = {path.split()[1] for path, _, _ in arguments if " " in path}
    assert {"train", "eval", "summary", "export", "predict", "sweep", "report", "plot"} <= commands
    missing = _without_help(parser)
    assert missing == set(), f"arguments without help text: {sorted(missing)}"


def test_a_shared_flag_gives_each_estimator_s_range_where_they_differ(capsys):
    """(review rev14 #7) --t-max's help gave EDE's range alone, which RBNN's narrower one does not keep."""
    from reste.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ede/rbnn: final t (ede: in [1e-30, 1e30]; rbnn: in [1e-19, 1e19]; default 10)" in text


def test_the_help_gives_the_defaults_their_owners_hold(monkeypatch):
    """(review docs3 #1) --help wrote out each optimizer's usual lr, the momentum, seed, scaling and amp defaults
    itself: an edit of config.OPTIMIZER_LR or TrainConfig left it saying the old ones."""
    import argparse
    import dataclasses

    from reste import config, flags

    monkeypatch.setitem(config.OPTIMIZER_LR, "adamw", 2e-3)
    changed = dataclasses.make_dataclass("Changed", [("momentum", float, 0.8), ("seed", int, 7),
                                                      ("scaling", str, "none"), ("amp", str, "bf16")],
                                         bases=(config.TrainConfig,))
    monkeypatch.setattr(flags, "TrainConfig", changed)
    parser = argparse.ArgumentParser()
    flags.add_train_flags(parser)
    text = " ".join(parser.format_help().split())
    assert "its usual one (sgd 0.1, adam and bop's Adam 0.001, adamw 0.002)" in text
    assert "SGD momentum (default 0.8)" in text and "random seed (default 7)" in text
    assert "weight scaling: layer, channel or none (default)" in text
    assert "mixed precision: none, bf16 (default) or fp16" in text


def test_the_command_line_imports_no_sympy():
    """(review perf2 #1) registering the built-in estimators compared shapes with torch.broadcast_shapes, which
    imports sympy: 0.3 to 0.8 s of every command, `reste --help` included (a plain `import torch` imports none)."""
    import subprocess
    import sys

    code = "import sys, torch; before = 'sympy' in sys.modules; import reste.cli; print(before, 'sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # (a torch that imports it itself: nothing to see)
    assert out.split() in (["False", "False"], ["True", "True"]), out
