"""The plugin author's review: each finding that was fixed, as the author met it (one-line errors, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import reste
from reste import estimators, plugins
from reste.cli import build_parser, main
from reste.config import TrainConfig
from reste.errors import UsageError
from reste.estimators import Estimator, estimator_class
from reste.models import registry
from cli_checks import one_line_error as _one_line_error

WINDOW = textwrap.dedent('''
    import reste


    @reste.register_estimator
    class Window(reste.Estimator):
        name = "myest"
        hyperparameters = (
            reste.Param("my_flag", float, 1.0, "initial half-width", "(0, inf)", scheduled=True),
            reste.Param("my_end", float, 0.5, "final half-width", "(0, inf)"),
        )

        def set_progress(self, epoch, epochs):
            super().set_progress(epoch, epochs)
            start = self.config()["my_flag"]
            self.my_flag = start + (self.my_end - start) * epoch / epochs

        _g = staticmethod(lambda x, my_flag, my_end: (x.abs() <= my_flag).to(x.dtype))
        _f = staticmethod(lambda x, my_flag, my_end: x.clamp(-my_flag, my_flag))
''')

MLP = textwrap.dedent('''
    from torch import nn
    from reste.models import ConvBuilder, register_model


    @register_model(dataset="digits", twin="rv_mlp")
    def rv_mlp_1w1a(*, num_classes: int, conv: ConvBuilder, width: int = 16) -> nn.Module:
        if width > 1000:
            raise ValueError("width must be at most 1000")
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width),
                             conv.linear(width, width), nn.BatchNorm1d(width), nn.Linear(width, num_classes))
''')


def _estimator_figure(monkeypatch, tmp_path):
    """``reste plot estimators``'s F axes and the labels of its g curves, the figure kept instead of saved."""
    from reste.experiments import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figures.append(fig) or Path(out))
    plots.plot_estimators(tmp_path / "e.png")
    ax_f, ax_g = figures[0].axes
    return ax_f, [line.get_label() for line in ax_g.get_lines() if not line.get_label().startswith("_")]


def _estimator(name, params, with_f=True):
    attrs = {"name": name, "hyperparameters": params, "_g": staticmethod(lambda x, **p: torch.ones_like(x))}
    if with_f:
        attrs["_f"] = staticmethod(lambda x, **p: x)
    return type("Plug", (Estimator,), attrs)



@pytest.mark.parametrize("params, said", [
    ((reste.Param("training", float, 1.0, "x"),), "its hyper-parameter 'training' has the name of an attribute every "
                                                  r"estimator has \(an nn.Module's or reste.Estimator's\)"),
    ((reste.Param("params", float, 1.0, "x"),), "its hyper-parameter 'params' has the name of an attribute"),
    ((reste.Param("name", str, "a", "x", choices=("a", "b")),),
     "its hyper-parameter 'name' has the name of an attribute"),
    ((reste.Param("_c", float, 1.0, "x"),), "its hyper-parameter '_c' starts with _"),
    ((reste.Param("ka", float, 1.0, "x", flag="kk"), reste.Param("kb", float, 2.0, "y", flag="kk")),
     "its hyper-parameters 'ka' and 'kb' both answer to --kk; give one another flag= in its Param"),
    ((reste.Param("a", float, 1.0, "x", flag="b"), reste.Param("b", float, 1.0, "y")),
     "its hyper-parameters 'a' and 'b' both answer to --b"),
], ids=["training", "params", "name", "underscore", "one-flag", "flag-is-a-name"])
def test_a_hyperparameter_named_like_an_attribute_or_sharing_a_flag_is_refused(isolated, params, said):
    """(review extend1 #3, #7) a hyper-parameter is set as the estimator's attribute: `training` was overwritten by
    .train() (three values trained one network), `params` and `name` broke the run with a misleading error; two of
    one estimator's hyper-parameters answering to one flag, it set one of them alone."""
    with pytest.raises(ValueError, match=f"estimator 'clash': {said}"):
        reste.register_estimator(_estimator("clash", params))
    assert "clash" not in reste.list_estimators()

# 1, 17: names the command line or Python cannot carry are refused where the class is registered
@pytest.mark.parametrize("name", ["epochs", "lr", "seed", "threads", "batch_size", "jobs", "out", "warm_up"])
def test_a_hyperparameter_named_like_a_train_or_sweep_setting_or_flag_is_refused_at_registration(isolated, name):
    """A flag of reste train's or sweep's own is refused; and so is the name of a run's setting, whatever its flag
    (review user3 #1: `--grid warm_up=0,2` varied the learning-rate warm-up of a plugin whose hyper-parameter
    warm_up had the flag --wp-warm-up, and its table read as a sweep of the estimator). A sweep's own option (jobs,
    out) is no setting: with another flag, its name registers."""
    setting = name not in ("jobs", "out")
    with pytest.raises(ValueError, match=f"hyper-parameter '{name}' has the name of a run's setting" if setting else
                       f"the flag --{name.replace('_', '-')} .* is taken by `reste train` or `reste sweep`; give it "
                       "another flag= in its Param"):
        reste.register_estimator(_estimator("clash", (reste.Param(name, int, 3, "n", "[1, inf)"),)))
    if setting:
        with pytest.raises(ValueError, match=f"hyper-parameter '{name}' has the name of a run's setting \\(--grid, "
                                             "the tables and the plots name settings by it\\); give it another name"):
            reste.register_estimator(_estimator("clash", (reste.Param(name, int, 3, "n", "[1, inf)",
                                                                      flag=f"my_{name}"),)))
    with pytest.raises(ValueError, match=f"the flag --{name.replace('_', '-')} .* is taken by `reste train` or `reste "
                                         "sweep`; give it another flag= in its Param"):
        reste.register_estimator(_estimator("clash", (reste.Param("mine", int, 3, "n", "[1, inf)", flag=name),)))
    assert "clash" not in reste.list_estimators()
    reste.register_estimator(_estimator("clash", (reste.Param(f"my_{name}", int, 3, "n", "[1, inf)"),)))
    if not setting:
        reste.register_estimator(_estimator("clash2", (reste.Param(name, int, 3, "n", "[1, inf)",
                                                                   flag=f"other_{name}"),)))


def test_the_settings_a_hyperparameter_may_not_be_named_are_the_configs_fields():
    import dataclasses

    from reste.config import TrainConfig
    from reste.hparams import SETTINGS

    assert SETTINGS == {f.name for f in dataclasses.fields(TrainConfig)}


def test_a_train_flag_taken_by_an_estimator_in_the_registry_is_one_line(isolated, capsys):
    """Registered by hand (past the check), the parser still refuses it in one line, not argparse's crash."""
    estimators._REGISTRY["clash"] = _estimator("clash", (reste.Param("epochs", int, 3, "n", "[1, inf)"),))
    with pytest.raises(UsageError, match="the flag --epochs of its hyper-parameter 'epochs' is taken"):
        build_parser()


def test_a_plugin_with_such_a_flag_gets_one_line(isolated, tmp_path, capsys):
    (tmp_path / "fc.py").write_text(WINDOW.replace('"myest"', '"fc"').replace('"my_end"', '"lr"')
                                    .replace("my_end", "lr"))
    line = _one_line_error(capsys, "train", "--plugin", str(tmp_path / "fc.py"), "--epochs", "1")
    assert "its hyper-parameter 'lr' has the name of a run's setting" in line


@pytest.mark.parametrize("name", ["a b", "<lambda>", "1st", ""])
def test_an_estimator_name_must_be_an_identifier(isolated, name):
    with pytest.raises(ValueError, match="lower-case Python identifier"):
        reste.register_estimator(_estimator(name, ()))


def test_a_model_name_must_be_an_identifier(isolated):
    with pytest.raises(ValueError, match="must be a Python identifier, got '<lambda>'"):
        registry.register_model(dataset="digits")(lambda *, num_classes, conv: nn.Linear(64, num_classes))
    with pytest.raises(ValueError, match="got 'a b'"):
        def ok(*, num_classes, conv):
            return nn.Linear(64, num_classes)
        registry.register_model(dataset="digits", twin="a b")(ok)
    assert "<lambda>" not in registry.list_models() and "ok" not in registry.list_models()


# 16: a tuple of choices in the range's place
def test_param_says_choices_go_in_choices():
    with pytest.raises(ValueError, match=r"range \(the 5th argument\) must be a string .* choices=\(...\)"):
        reste.Param("mode", str, "a", "a choice", ("a", "b"))
    assert reste.Param("mode", str, "a", "a choice", choices=("a", "b")).check("b") == "b"


# 3, 5: a model of your own, checked before a run folder is made
def test_paper_indicators_and_bad_model_options_on_a_plugin_model(isolated, tmp_path, capsys):
    (tmp_path / "rvmlp.py").write_text(MLP)
    plugin = str(tmp_path / "rvmlp.py")
    out = tmp_path / "run"
    line = _one_line_error(capsys, "train", "--plugin", plugin, "--model", "rv_mlp_1w1a", "--indicators", "paper",
                           "--epochs", "1", "--out", str(out))
    assert "--indicators paper reads binary 3x3 convolutions only and 'rv_mlp_1w1a' has none" in line
    assert line.endswith("use --indicators general") and not out.exists()
    line = _one_line_error(capsys, "train", "--plugin", plugin, "--model", "rv_mlp_1w1a", "--model-option",
                           "width=abc", "--epochs", "1", "--out", str(out))
    assert "bad --model-option for 'rv_mlp_1w1a': width must be an int, got 'abc'" in line and not out.exists()
    # the factory's own ValueError: one line, from create, which summary and train both use
    with pytest.raises(UsageError, match="bad --model-option for 'rv_mlp_1w1a': width must be at most 1000"):
        registry.create("rv_mlp_1w1a", width=2000)
    line = _one_line_error(capsys, "summary", "rv_mlp_1w1a", "--plugin", plugin, "--model-option", "width=2000")
    assert "width must be at most 1000" in line
    assert isinstance(TrainConfig(model="rv_mlp_1w1a", indicators="general").resolve(), TrainConfig)


# 8: a full-precision model has no estimator
@pytest.mark.parametrize("settings, given", [({"estimator": "ste"}, "--estimator ste"),
                                             ({"estimator_options": {"o_end": 2.0}}, "the estimator options o_end")])
def test_a_full_precision_model_refuses_estimator_settings(settings, given):
    with pytest.raises(UsageError, match=f"'digits' is full precision: it has no estimator, so {given} would do "
                                         "nothing; drop it, or train its binary twin 'digits_1w1a'"):
        TrainConfig(model="digits", epochs=1, **settings).resolve()
    assert TrainConfig(model="digits", epochs=1).resolve().estimator == "reste"
    # what a run (and a sweep) records for a float model, the default estimator's options written out, is no change
    from reste.engine import planned_config

    recorded = planned_config(TrainConfig(model="digits", epochs=1))
    assert recorded.estimator_options["o_end"] == 3.0 and recorded.resolve() == recorded


@pytest.mark.parametrize("flags, named, them", [(["--estimator", "reste"], "--estimator", "it"),
                                                (["--o-end", "3", "--o", "1"], "--o and --o-end", "them"),
                                                (["--scaling", "layer"], "--scaling", "it"),
                                                (["--estimator", "ste", "--scaling", "layer"],
                                                 "--estimator and --scaling", "them"),
                                                # (review extend #10: another estimator's flag was told to take it)
                                                (["--clip", "2"], "--clip", "it")])
def test_flags_of_a_binary_model_given_for_a_full_precision_one_are_refused_whatever_their_value(capsys, flags, named,
                                                                                                   them):
    """(review readme2 #2) `--model digits --estimator reste` (or --o-end 3, --scaling layer: their defaults) trained
    without a word, while `--estimator ste` was refused: a flag given is refused whatever its value."""
    line = _one_line_error(capsys, "train", "--model", "digits", *flags, "--epochs", "1", "--print-config")
    assert line == (f"reste: error: 'digits' is full precision: it has no estimator and no binary weights, so {named} "
                    f"would do nothing; drop {them}, or train its binary twin 'digits_1w1a'")


def test_a_sweep_of_estimators_over_a_full_precision_model_is_refused(tmp_path, capsys):
    line = _one_line_error(capsys, "sweep", "--model", "digits", "--grid", "estimator=ste,reste", "--epochs", "1",
                           "--out", str(tmp_path / "sw"))
    assert "'digits' is full precision: it has no estimator" in line and not (tmp_path / "sw" / "runs").exists()


# 13: a plugin's flag without its --plugin
def test_an_unknown_flag_points_to_the_commands_help_and_to_plugin(tmp_path, capsys):
    line = _one_line_error(capsys, "train", "--my-flag", "0.5")
    assert "unrecognized arguments: --my-flag 0.5" in line and "see `reste train --help`" in line
    assert "--plugin MODULE" in line
    line = _one_line_error(capsys, "eval", "x", "--bogus")
    assert "see `reste eval --help`" in line and "--plugin" not in line
    line = _one_line_error(capsys, "sweep", "--grid", "my_flag=1,2", "--epochs", "1", "--out", str(tmp_path / "s"))
    assert "unknown grid axis 'my_flag'" in line and "--plugin MODULE" in line


# 12: library errors say what to do in Python too
def test_unknown_names_say_how_to_load_a_plugin_in_python():
    with pytest.raises(UsageError, match=r"--plugin MODULE \(in Python: import MODULE, or "
                                         r"reste.plugins.load_plugins\(\['MODULE'\]\)\)"):
        estimator_class("no_such_est")
    with pytest.raises(UsageError, match=r"reste.plugins.load_plugins\(\['MODULE'\]\)"):
        registry.model_info("no_such_model")


# 6, 12: a checkpoint whose plugin changed, or is not loaded
def test_a_checkpoint_of_a_changed_or_missing_plugin_is_one_line(isolated, tmp_path, capsys, monkeypatch):
    from reste.checkpoint import load_checkpoint, model_from_checkpoint

    (tmp_path / "myest.py").write_text(WINDOW)
    run = tmp_path / "run"
    assert main(["train", "--plugin", str(tmp_path / "myest.py"), "--estimator", "myest", "--my-end", "0.25",
                 "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    estimators._REGISTRY.pop("myest")
    plugins._loaded.clear()
    with pytest.raises(UsageError, match=r"reste.plugins.load_plugins\(\['.*myest.py'\]\) first"):
        model_from_checkpoint(load_checkpoint(run / "last.pt"))
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "myest.py").write_text(WINDOW.replace("my_end", "my_stop"))
    for command in (["eval", str(run)], ["export", str(run), str(tmp_path / "m.rbnn")]):
        line = _one_line_error(capsys, *command, "--plugin", str(tmp_path / "v2" / "myest.py"))
        trained = "{'my_flag': 1.0, 'my_end': 0.25}"  # (every option the run trained with, as recorded)
        assert f"{run / 'last.pt'} was trained with 'digits_1w1a' (myest) options {trained}" in line, line
        assert "no my_end" in line and "load the plugin version the run was trained with" in line


# 7: one broken installed package does not stop the others
class _BrokenEntryPoint:
    name, value, dist = "epest", "mypackage.nosuch", None

    def load(self):
        raise ModuleNotFoundError("No module named 'mypackage'")


def test_a_broken_entry_point_warns_and_the_rest_works(monkeypatch, capsys):
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(plugins, "_broken", [])
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: [_BrokenEntryPoint()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["presets"]) == 0
    assert [str(w.message) for w in caught if "epest" in str(w.message)] == [
        "plugin 'epest' (mypackage.nosuch) failed to load: ModuleNotFoundError: No module named "
        "'mypackage'; its estimators, models and data sets are missing (fix or uninstall that package)"]
    assert reste.get_estimator("ste").name == "ste"
    with pytest.raises(UsageError, match="unknown estimator 'epest'.*; note: plugin 'epest' "
                                         r"\(mypackage.nosuch\) failed to load"):
        estimator_class("epest")


# 15: an estimator without _f
def test_an_estimator_without_f_is_refused_by_the_indicators_and_drawn_without_f(isolated, tmp_path, monkeypatch):
    reste.register_estimator(_estimator("nof", (), with_f=False))
    with pytest.raises(UsageError, match="--indicators general reads F.* 'nof' defines no _f"):
        TrainConfig(estimator="nof", indicators="general", epochs=1).resolve()
    with pytest.raises(NotImplementedError, match="estimator 'nof' defines no _f"):
        reste.get_estimator("nof").forward_equivalent(torch.zeros(3))
    ax_f, curves = _estimator_figure(monkeypatch, tmp_path)
    assert curves[-1] == "nof (no F: it defines no _f)"
    assert len(ax_f.get_lines()) == 1 + (len(curves) - 1) + 2  # sign, the curves but nof's, the two axis lines


# 19: every curve its own colour, the 11th and later too
def test_every_estimator_curve_has_its_own_colour(isolated, tmp_path, monkeypatch):
    from matplotlib.colors import to_rgba

    from reste.experiments import plots

    for i in range(3):
        reste.register_estimator(_estimator(f"plug{i}", ()))
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figures.append(fig) or Path(out))
    plots.plot_estimators(tmp_path / "e.png")
    curves = [line for line in figures[0].axes[1].get_lines() if not line.get_label().startswith("_")]
    assert len(curves) >= 13
    assert len({to_rgba(line.get_color()) for line in curves}) == len(curves)


# 6, on resume: a run whose estimator no loaded module registers is told to load it, not that a setting is bad
def test_resuming_a_run_whose_plugin_is_not_loaded_says_so(tmp_path):
    import json

    from reste import engine

    run = tmp_path / "run"
    engine.train(TrainConfig(epochs=1, threads=1), run, progress=False, log=lambda _m: None)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "estimator": "ghostest", "estimator_options": {}}))
    with pytest.raises(UsageError, match=f"^{run} trained with estimator 'ghostest', which no module loaded here "
                                         "registers: import the module that does .*; or"):
        engine.resume(run, {"epochs": 2}, force=True, progress=False, log=lambda _m: None)


# --indicators on a float model names the cause, whichever mode; paper builds the model once per settings
@pytest.mark.parametrize("mode", ["paper", "general"])
def test_indicators_on_a_float_model_say_it_is_full_precision(mode):
    with pytest.raises(UsageError, match="--indicators needs a binary model; 'digits' is full precision"):
        TrainConfig(model="digits", epochs=1, indicators=mode).resolve()


def test_paper_indicators_build_the_model_once_per_settings(monkeypatch):
    from reste import config, models

    built = []
    create = models.create
    monkeypatch.setattr(models, "create", lambda *a, **k: built.append(a) or create(*a, **k))
    monkeypatch.setattr(config, "_PAPER_LAYERS", {})
    for estimator in ("reste", "ste", "reste"):  # which layers are binary does not depend on the estimator
        TrainConfig(epochs=1, indicators="paper", estimator=estimator).resolve()
    TrainConfig(epochs=1, indicators="paper", a32=True).resolve()
    assert built == [("digits_1w1a",), ("digits_1w1a",)]


# rev2 F11: range=None is "any" again; the hint about choices= only for a tuple or list
def test_param_takes_range_none_and_hints_choices_only_for_a_sequence():
    assert reste.Param("q", float, 1.0, "h", None).range_text() == ""
    with pytest.raises(ValueError, match="must be a string such as") as info:
        reste.Param("q", float, 1.0, "h", 3)
    assert "choices" not in str(info.value)


# rev2 F12: an estimator that overrides the public forward_equivalent has an F: the indicators take it, the plot
# draws it
def test_an_estimator_overriding_forward_equivalent_defines_f(isolated, tmp_path, monkeypatch):
    cls = _estimator("fe", (), with_f=False)
    cls.forward_equivalent = lambda self, x: torch.ones_like(x)
    reste.register_estimator(cls)
    assert cls.defines_f()
    TrainConfig(estimator="fe", indicators="general", epochs=1).resolve()
    ax_f, curves = _estimator_figure(monkeypatch, tmp_path)
    assert curves[-1] == "fe"
    assert len(ax_f.get_lines()) == 1 + len(curves) + 2  # sign, every curve's F (fe's too), the two axis lines


# rev2 F10: the flags an estimator cannot take are written out (registering imports no command-line code) and match
# the parsers of `reste train` and `reste sweep`
def test_the_reserved_flags_are_those_of_the_train_and_sweep_parsers():
    import argparse

    from reste.cli import build_parser
    from reste.estimators import estimator_flags
    from reste.hparams import RESERVED_FLAGS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = {"help", "-h", "--help", "--debug", "debug", sub.dest}  # (reste's own --debug is taken from anywhere)
    commands = [sub.choices["train"], sub.choices["sweep"]]
    own = [a for p in commands for a in p._actions if a.dest not in estimator_flags()]
    for action in own:
        names.update(action.option_strings)
        names.add(action.dest)
    names.update(key for p in commands for key in p._defaults)  # (review extend #1: set_defaults(func=...))
    assert sub.dest == "command" and "func" in names
    assert RESERVED_FLAGS == names


def test_a_hyperparameter_named_as_the_command_lines_own_dests_is_refused():
    """(review extend #1) A plugin's `Param("func", ...)` took the dest of the subcommand's function: every run of
    any estimator then failed with an error about --func."""
    from reste.errors import UsageError
    from reste.estimators import Estimator, register_estimator
    from reste.hparams import Param

    for name in ("func", "command"):
        body = {"name": f"uses_{name}", "hyperparameters": (Param(name, float, 1.0, "a width", "(0, inf)"),),
                "_g": staticmethod(lambda x, **p: (x.abs() <= 1).to(x.dtype))}
        cls = type(f"Uses{name}", (Estimator,), body)
        with pytest.raises((UsageError, ValueError), match=f"flag --{name} of its hyper-parameter"):
            register_estimator(cls)


def test_registering_an_estimator_imports_no_command_line_code():
    script = textwrap.dedent("""
        import sys
        import torch
        import reste.estimators as e
        before = set(sys.modules)
        @e.register_estimator
        class Mine(e.Estimator):
            name = "mine"
            hyperparameters = (e.Param("w", float, 1.0, "half-width", "(0, inf)"),)
            _g = staticmethod(lambda x, w: (x.abs() <= w).to(x.dtype))
        try:
            e.register_estimator(type("Clash", (e.Estimator,), {"name": "clash", "_g": Mine._g,
                                 "hyperparameters": (e.Param("epochs", int, 3, "n", "[1, inf)"),)}))
        except ValueError as err:
            assert "has the name of a run's setting" in str(err), err
        else:
            raise AssertionError("--epochs was not refused")
        print(sorted(m for m in set(sys.modules) - before if m.startswith("reste")))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(reste.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# rev2 F3: a checkpoint whose plugin *model* takes other options now names the file and the options it was trained
# with, as the estimator's case does (not a --model-option or estimator_options message)
def test_a_checkpoint_whose_plugin_model_changed_its_options_is_one_line(isolated, tmp_path, capsys):
    (tmp_path / "rvmlp.py").write_text(MLP)
    run = tmp_path / "run"
    assert main(["train", "--plugin", str(tmp_path / "rvmlp.py"), "--model", "rv_mlp_1w1a", "--model-option",
                 "width=8", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    versions = {"renamed": (MLP.replace("width", "size"), "(model 'rv_mlp_1w1a' takes no option 'width' (its "
                                                          "options: size))"),
                "tightened": (MLP.replace("1000", "4"), "(width must be at most 4);")}
    for version, (source, why) in versions.items():
        for table in (registry._MODELS, registry._INFO, registry._BINARY):
            table.pop("rv_mlp_1w1a", None), table.pop("rv_mlp", None)
        plugins._loaded.clear()
        (tmp_path / version).mkdir()
        (tmp_path / version / "rvmlp.py").write_text(source)
        line = _one_line_error(capsys, "eval", str(run), "--plugin", str(tmp_path / version / "rvmlp.py"))
        assert f"{run / 'last.pt'} was trained with 'rv_mlp_1w1a' (reste) options {{" in line, line
        assert "'width': 8}, which the loaded code does not take " + why in line, line
        assert line.endswith("; load the plugin version the run was trained with"), line
        assert "estimator_options" not in line and "--model-option" not in line, line


# rev2 F7: the file a checkpoint came from is remembered without keeping the checkpoint (weights, optimizer) alive
def test_loading_a_checkpoint_keeps_no_reference_to_it():
    import gc
    import weakref

    from reste import checkpoint

    path = Path(__file__).parent / "fixtures" / "format2_run" / "last.pt"
    ckpt = checkpoint.load_checkpoint(path)
    assert checkpoint._where(ckpt) == str(path)
    assert checkpoint._where(dict(ckpt)) == "the checkpoint"  # another dict, even with the same tensors
    refs = [weakref.ref(t) for t in ckpt["model"].values() if isinstance(t, torch.Tensor)]
    assert refs
    del ckpt
    gc.collect()
    assert all(ref() is None for ref in refs)


# rev2 F4: a str option takes text that looks like a number; a type guessed from a default takes either number
def test_model_options_that_surely_fit_are_passed_on(isolated, capsys):
    from reste.config import check_model_options
    from reste.flags import parse_model_options

    got = []

    @registry.register_model(dataset="digits")
    def ov_mlp_1w1a(*, num_classes, conv, tag: str = "a", drop=0, width: int = 8):
        got.append((tag, drop, width))
        return nn.Sequential(nn.Flatten(), conv.linear(64, width), nn.Linear(width, num_classes))

    options = parse_model_options(["tag=18", "drop=0.5"])
    check_model_options("ov_mlp_1w1a", options)
    TrainConfig(model="ov_mlp_1w1a", model_options=options, epochs=1).resolve()
    registry.create("ov_mlp_1w1a", **options)
    assert got[-1] == ("18", 0.5, 8)
    registry.create("ov_mlp_1w1a", tag=True, drop=2, width=4)
    assert got[-1] == ("true", 2, 4)
    assert main(["summary", "ov_mlp_1w1a", "--model-option", "tag=0.25", "--model-option", "drop=1"]) == 0
    assert got[-1] == ("0.25", 1, 8)
    capsys.readouterr()
    for bad in ("width=0.5", "width=abc", "drop=abc"):  # what surely cannot work is still refused, in one line
        key, value = bad.split("=")
        line = _one_line_error(capsys, "summary", "ov_mlp_1w1a", "--model-option", bad)
        assert f"bad --model-option for 'ov_mlp_1w1a': {key} must be" in line and value in line, line


# rev2 F3, on resume: a plugin edited in place so that its model takes other options (renamed), or refuses the
# run's value (tightened: the same option names): either names the run and its options, not "bad --model-option"
# (none was given); options given again are named as given
@pytest.mark.parametrize("edit", ["renamed", "tightened"])
def test_resuming_a_run_whose_plugin_model_changed_its_options_says_so(isolated, tmp_path, capsys, edit):
    plugin = tmp_path / "rvmlp.py"
    plugin.write_text(MLP)
    run = tmp_path / "run"
    assert main(["train", "--plugin", str(plugin), "--model", "rv_mlp_1w1a", "--model-option", "width=8",
                 "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    for table in (registry._MODELS, registry._INFO, registry._BINARY):
        table.pop("rv_mlp_1w1a", None), table.pop("rv_mlp", None)
    plugins._loaded.clear()
    for name in [m for m in sys.modules if m.startswith("reste_plugin_")]:
        del sys.modules[name]
    plugin.write_text(MLP.replace("width", "size") if edit == "renamed" else MLP.replace("1000", "4"))
    where, why = {"renamed": (run / "config.json", "model 'rv_mlp_1w1a' has no option width; valid: size"),
                  "tightened": (run, "width must be at most 4")}[edit]
    again = ("--plugin", str(plugin))  # a .py file: a resume imports it when given again
    line = _one_line_error(capsys, "train", "--resume", str(run), "--epochs", "2", "--force", "--no-progress", *again)
    assert line == (f"reste: error: {where} was trained with 'rv_mlp_1w1a' options {{'width': 8}}, which the loaded "
                    f"code does not take ({why}); load the plugin version the run was trained with"), line
    if edit == "tightened":
        line = _one_line_error(capsys, "train", "--resume", str(run), "--epochs", "2", "--force", "--no-progress",
                               "--model-option", "width=6", *again)
        assert line.startswith("reste: error: bad --model-option for 'rv_mlp_1w1a': width must be at most 4"), line


def test_a_column_named_axis_of_a_plugins_estimator_is_told_its_own_name(isolated, capsys, tmp_path):
    """(review extend #8) A plugin's hyper-parameter n, as a grid axis, was told to be named fda_n (FDA's flag for
    FDA's n), which then failed; the way for its own is estimator_options.n."""

    @reste.register_estimator
    class Quarters(reste.Estimator):
        name = "quarters_test"
        hyperparameters = (reste.Param("n", int, 4, "quarter widths", "[1, 100]"),)
        _g = staticmethod(lambda x, n: (x.abs() <= n / 4).to(x.dtype))

    line = _one_line_error(capsys, "sweep", "--estimator", "quarters_test", "--grid", "n=2,4", "--epochs", "1",
                           "--out", str(tmp_path / "s"))
    assert line.endswith("grid axis 'n' has the name of a column of the tables; name it estimator_options.n")
    assert main(["sweep", "--estimator", "quarters_test", "--grid", "estimator_options.n=2,4", "--epochs", "1",
                 "--out", str(tmp_path / "s"), "--dry-run"]) == 0


@pytest.mark.parametrize("hook", ["_g", "_f"])
def test_an_estimator_whose_g_or_f_returns_a_number_is_refused_where_it_is_registered(isolated, hook):
    """(review extend #11) `_g = lambda x: 1.0` (the unclipped STE as one would write it) failed at the first
    backward with "'float' object has no attribute 'dtype'", naming neither _g nor the estimator."""
    body = {"name": "ident_test", "_g": staticmethod(lambda x: torch.ones_like(x)), "_f": staticmethod(lambda x: x)}
    body[hook] = staticmethod(lambda x: 1.0)
    with pytest.raises(ValueError, match=rf"^estimator 'ident_test' \(Ident\): {hook} returned a float; it must "
                                         r"return a tensor shaped like x"):
        reste.register_estimator(type("Ident", (Estimator,), body))
    assert "ident_test" not in estimators._REGISTRY
    body[hook] = staticmethod(lambda x: torch.ones_like(x) if hook == "_g" else x)
    reste.register_estimator(type("Ident", (Estimator,), body))  # tensors: taken


def test_a_shared_flags_help_gives_each_takers_choices_and_meaning_where_they_differ(isolated):
    """(review extend #2) A flag a plugin shares with ReSTE (the same name and type) was described by ReSTE alone:
    the plugin's own choices (its default among them) and its meaning were not shown."""

    @reste.register_estimator
    class Stepped(reste.ReSTE):
        name = "stepped_test"
        hyperparameters = (*reste.ReSTE.hyperparameters[:4],
                           reste.Param("schedule", str, "step", "schedule of o",
                                       choices=("cosine", "linear", "constant", "step"), flag="o_schedule"))

    @reste.register_estimator
    class Clip7(reste.Estimator):
        name = "clip7_help_test"
        hyperparameters = (reste.Param("o_end", float, 7.0, "a clip's end", "[1, inf)"),)
        _g = staticmethod(lambda x, o_end: (x.abs() <= 1).to(x.dtype))

    helps = {a.dest: " ".join(a.help.split()) for a in build_parser()._subparsers._group_actions[0].choices[
        "train"]._actions if a.help}
    assert helps["o_schedule"] == ("reste/stepped_test: schedule of o (reste: cosine, linear or constant; "
                                   "stepped_test: cosine, linear, constant or step; default cosine / step)")
    assert helps["o_end"].startswith("reste/stepped_test: final o; clip7_help_test: a clip's end (")


def test_the_readmes_estimator_gets_the_sweeps_check_of_an_axis_no_run_reaches(isolated, tmp_path, capsys):
    """(review extend #3) The README's own plugin passed its end value to g through the default params(), so a sweep
    over it with --epochs 1 (one network, trained twice) was not refused as a built-in's is. Its params() gives what
    g and F read."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (tmp_path / "myest_readme.py").write_text(re.search(r"```python\n# myest\.py\n(.*?)```", readme, re.S).group(1))
    argv = ["sweep", "--plugin", str(tmp_path / "myest_readme.py"), "--estimator", "myest", "--grid",
            "my_end=0.25,0.75", "--out", str(tmp_path / "sw"), "--dry-run"]
    line = _one_line_error(capsys, *argv, "--epochs", "1")
    assert "grid axis 'my_end' would train the same network at each value" in line
    assert main([*argv, "--epochs", "2"]) == 0


def test_an_estimator_whose_g_has_another_shape_than_x_is_refused(isolated):
    """(review diff21 #7) The check promised "a tensor shaped like x" and took one of any shape, which then failed at
    the first backward with a bare broadcasting error. A 0-dimensional one broadcasts, and is taken."""
    body = {"name": "shape_test", "_g": staticmethod(lambda x: torch.ones(x.shape[0]))}
    with pytest.raises(ValueError, match=r"_g returned a tensor of shape \(2,\) for x of \(2, 3, 4\)"):
        reste.register_estimator(type("Shaped", (Estimator,), body))
    body["_g"] = staticmethod(lambda x: torch.ones(()))
    reste.register_estimator(type("Shaped", (Estimator,), body))


def test_a_column_named_axis_of_the_models_own_option_is_told_model_options(isolated, capsys, tmp_path):
    """(review diff21 #5) A model's option n, as a grid axis, was told estimator_options.n, which was then refused."""

    @registry.register_model(dataset="digits", twin="ncol_test")
    def ncol_test_1w1a(*, num_classes, conv, n: int = 1):
        return nn.Sequential(nn.Flatten(), conv.linear(64, 8 * n), nn.BatchNorm1d(8 * n), nn.Linear(8 * n, num_classes))

    line = _one_line_error(capsys, "sweep", "--model", "ncol_test_1w1a", "--grid", "n=1,2", "--epochs", "1",
                           "--out", str(tmp_path / "s"))
    assert line.endswith("grid axis 'n' has the name of a column of the tables; name it model_options.n")
    assert main(["sweep", "--model", "ncol_test_1w1a", "--grid", "model_options.n=1,2", "--epochs", "1",
                 "--out", str(tmp_path / "s"), "--dry-run"]) == 0


def test_a_sweep_of_a_float_model_refuses_an_estimators_flag_for_the_float_model(capsys, tmp_path):
    """(review diff21 #9) `reste sweep --model digits --clip 1` was told --clip applies to the STE, and adding
    --estimator ste was then refused for the float model (reste train's order was mended before)."""
    line = _one_line_error(capsys, "sweep", "--model", "digits", "--clip", "1", "--epochs", "1", "--out",
                           str(tmp_path / "s"))
    assert line.endswith("'digits' is full precision: it has no estimator and no binary weights, so --clip would do "
                         "nothing; drop it, or train its binary twin 'digits_1w1a'")


def test_a_g_that_cannot_take_what_params_gives_is_refused_at_registration(isolated):
    """(review user3, suggestion 5) params() left at its default gives every hyper-parameter; a _g that reads some
    of them failed at the run's first step ("_g() got an unexpected keyword argument 'p_end'"), after "training".
    One taking them all, or **rest, registers."""
    params = (reste.Param("p", float, 2.0, "a power", "(0, inf)"), reste.Param("p_end", float, 4.0, "its end",
                                                                               "(0, inf)"))
    narrow = type("Narrow", (Estimator,), {"name": "narrow", "hyperparameters": params,
                                           "_g": staticmethod(lambda x, p: torch.ones_like(x) * p)})
    with pytest.raises(ValueError, match=r"estimator 'narrow' \(Narrow\): _g cannot take what params\(\) gives \(p, "
                                         r"p_end; _g takes p: .*'p_end'\); override params\(\) to return what _g"):
        reste.register_estimator(narrow)
    assert "narrow" not in reste.list_estimators()
    wide = type("Wide", (Estimator,), {"name": "wide", "hyperparameters": params,
                                       "_g": staticmethod(lambda x, p, **rest: torch.ones_like(x) * p)})
    reste.register_estimator(wide)


def test_a_g_written_without_self_or_staticmethod_is_refused_saying_so(isolated):
    """(review research1) `def _g(x, sharp)` in the class body, no @staticmethod: x receives the estimator. The
    refusal said "_g takes x alone: multiple values for argument 'sharp'" and to override params(), which is not
    the mistake."""
    params = (reste.Param("sharp", float, 1.0, "sharpness", "(0, inf)"),)

    def _g(x, sharp):
        return sharp * (1 - torch.tanh(sharp * x) ** 2)

    plain = type("Plain", (Estimator,), {"name": "plain", "hyperparameters": params, "_g": _g})
    with pytest.raises(ValueError, match=r"estimator 'plain' \(Plain\): _g is a method whose first parameter, x, "
                                         r"receives the estimator: put @staticmethod above it, or write "
                                         r"_g\(self, x, \.\.\.\)"):
        reste.register_estimator(plain)
    assert "plain" not in reste.list_estimators()


def test_a_g_that_returns_nan_at_its_defaults_is_said_at_registration(isolated):
    """(review research1) `_g = log(x)` (NaN for x < 0) registered silently, trained one step and stopped the run
    with "non-finite loss ...; lower --lr or check the data", which names neither the estimator nor its g."""
    nan = type("NanG", (Estimator,), {"name": "nan_g", "_g": staticmethod(lambda x: torch.log(x)),
                                      "_f": staticmethod(lambda x: x)})
    with pytest.warns(UserWarning, match=r"estimator 'nan_g' \(NanG\): _g returned NaN or inf at its defaults "
                                         r"\(at x = -2, tried on \[-2, 2\]\); a NaN g .*; check _g"):
        reste.register_estimator(nan)
    fine = type("FineG", (Estimator,), {"name": "fine_g", "_g": staticmethod(lambda x: (x.abs() <= 1).to(x.dtype)),
                                        "_f": staticmethod(lambda x: x.clamp(-1, 1))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reste.register_estimator(fine)


def test_a_run_that_a_plugins_g_made_diverge_names_the_estimator(isolated, tmp_path):
    """(review research1, suggestion 2) The divergence line pointed at --lr and the data alone; with an estimator of
    the user's own it names that estimator and its module too (a built-in's line is as before)."""
    from reste import engine
    from reste.engine import TrainingDiverged

    nan = type("NanG", (Estimator,), {"name": "nan_g", "_g": staticmethod(lambda x: torch.log(x)),
                                      "_f": staticmethod(lambda x: x)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reste.register_estimator(nan)
    config = TrainConfig(dataset="digits", estimator="nan_g", epochs=1, threads=1)
    with pytest.raises(TrainingDiverged) as caught:
        engine.train(config, tmp_path / "run", progress=False, log=lambda message: None)
    assert str(caught.value).endswith(f"lower --lr or check the data, or the estimator's g ('nan_g', of {__name__}: "
                                      "a NaN or inf g?)"), str(caught.value)


def test_a_g_that_takes_params_through_a_wrapper_registers(isolated):
    """(review diff24, suggestion 1) The hook is tried first: one under functools.wraps whose signature (the wrapped
    one's) is narrower than what its wrapper takes works, so it registers."""
    import functools

    def keep_p(g):
        @functools.wraps(g)
        def wrapper(x, **params):
            return g(x, p=params["p"])
        return wrapper

    params = (reste.Param("p", float, 2.0, "a power", "(0, inf)"), reste.Param("p_end", float, 4.0, "its end",
                                                                               "(0, inf)"))
    wrapped = type("Wrapped", (Estimator,), {"name": "wrapped", "hyperparameters": params,
                                             "_g": staticmethod(keep_p(lambda x, p: torch.ones_like(x) * p))})
    reste.register_estimator(wrapped)
    assert reste.get_estimator("wrapped").derivative(torch.zeros(3)).tolist() == [2.0, 2.0, 2.0]


def test_a_percent_sign_in_a_hyperparameters_help_reaches_the_help_as_it_is(isolated, capsys):
    """(review extend1 #6) argparse %-formats a help text: "in % (0-100)" made `reste train --help` and `reste sweep
    --help` fail (for every user, where the estimator came from an installed package)."""
    from reste.cli import main

    reste.register_estimator(_estimator("pct", (reste.Param("drop", float, 10.0, "share of the window in % (0-100)",
                                                            "[0, 100]"),)))
    for command in ("train", "sweep"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert exit_.value.code == 0 and "pct: share of the window in % (0-100)" in out


def test_a_hyperparameter_named_like_the_classes_own_method_is_refused_and_a_ramp_may_be_a_list(isolated):
    """(review diff30 #4) a hyper-parameter named like a method the class defines itself hid it ("'float' object is
    not callable" in the run); a class-level value of that name stays allowed. (#5) ``ramped`` as a list of two names
    worked before the check of its names, and still does."""
    plug = _estimator("own_method", (reste.Param("width", float, 1.0, "w"),))
    plug.width = lambda self: 1.0
    with pytest.raises(ValueError, match="estimator 'own_method': its hyper-parameter 'width' has the name of a method "
                                         "of Plug, which its value would hide"):
        reste.register_estimator(plug)
    plain = _estimator("class_value", (reste.Param("width", float, 1.0, "w"), reste.Param("mro", float, 1.0, "m"),
                                       reste.Param("kind", float, 1.0, "k")))
    plain.width, plain.kind = 2.0, int  # (diff31 #3: a value, a class held, the metaclass's mro: no method of it)
    reste.register_estimator(plain)
    ramp = _estimator("list_ramp", (reste.Param("a", float, 1.0, "a", "(0, inf)", scheduled=True),
                                    reste.Param("a_end", float, 2.0, "e", "(0, inf)"),
                                    reste.Param("schedule", str, "linear", "s", choices=("linear", "constant"))))
    ramp.ramped = ["a", "a_end"]
    reste.register_estimator(ramp)
    assert reste.get_estimator("list_ramp", schedule="constant").unused_hyperparameters() == {"a_end"}
    # (review mut13, suggestion 4) a property of that name is a method too, and ramped as one name is refused
    prop = _estimator("own_property", (reste.Param("height", float, 1.0, "h"),))
    prop.height = property(lambda self: 1.0)
    with pytest.raises(ValueError, match="its hyper-parameter 'height' has the name of a method of Plug"):
        reste.register_estimator(prop)
    one = _estimator("one_name_ramp", ramp.hyperparameters)
    one.ramped = "a"
    with pytest.raises(ValueError, match=r"ramped = 'a' names \(start, end\) .*; give a tuple of two names"):
        reste.register_estimator(one)


def test_a_g_that_returns_inf_or_an_f_that_returns_nan_at_its_defaults_is_said_at_registration(isolated):
    """(review mut13) An inf g (1 / x near 0, a steep surrogate's overflow) turns the weights NaN as a NaN g does;
    an f that returns NaN is read by the general indicators and the F plot: each is said at registration, where the
    first non-finite value is."""
    steep = type("SteepG", (Estimator,), {
        "name": "steep_g", "_f": staticmethod(lambda x: x),
        "_g": staticmethod(lambda x: torch.where(x > 1.5, torch.full_like(x, float("inf")), torch.ones_like(x)))})
    with pytest.warns(UserWarning, match=r"estimator 'steep_g' \(SteepG\): _g returned NaN or inf at its defaults "
                                         r"\(at x = 1\.652, tried on \[-2, 2\]\); a NaN g .*; check _g"):
        reste.register_estimator(steep)
    nan_f = type("NanF", (Estimator,), {"name": "nan_f", "_g": staticmethod(lambda x: torch.ones_like(x)),
                                        "_f": staticmethod(lambda x: torch.sqrt(x))})
    with pytest.warns(UserWarning, match=r"estimator 'nan_f' \(NanF\): _f returned NaN or inf at its defaults "
                                         r"\(at x = -2, .*the general indicators and the F plot read it; check _f"):
        reste.register_estimator(nan_f)


def test_a_hyperparameters_name_that_is_anothers_flag_is_refused(isolated):
    """(review mut13) --grid and config.json take a hyper-parameter by its name or its flag's (`schedule` or
    `k_schedule`): one named `a` (flag --q) and another whose flag is --a would both answer to `a`."""
    params = (reste.Param("a", float, 1.0, "x", flag="q"), reste.Param("c", float, 1.0, "y", flag="a"))
    with pytest.raises(ValueError, match="estimator 'clash': its hyper-parameters 'a' and 'c' both answer to --a"):
        reste.register_estimator(_estimator("clash", params))
    assert "clash" not in reste.list_estimators()


def test_an_estimator_defined_again_in_the_same_place_registers_again(isolated):
    """(review mut13) A notebook cell or a plugin file run twice defines its class again, in the same module under the
    same name: it registers again (the new class), where one of another place is refused."""
    first = _estimator("again", ())
    reste.register_estimator(first)
    second = _estimator("again", ())
    assert reste.register_estimator(second) is second
    assert type(reste.get_estimator("again")) is second
