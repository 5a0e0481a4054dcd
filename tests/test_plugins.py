"""An estimator of your own, in one file: every entry point knows it.

The module below is what a user writes. The tests load it the three ways the library offers
(an import in Python, ``--plugin`` on the command line, an installed entry point) and take it
through get_estimator, binarize, the zoo, TrainConfig, the indicators, checkpoints, resume,
eval and sweep.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import reste
from reste import models, plugins
from reste.cli import main
from reste.config import TrainConfig, as_recorded
from reste.errors import UsageError
from reste.estimators import _REGISTRY, Estimator

PLUGIN = textwrap.dedent('''
    """A window estimator: g = 1 on abs(x) <= my_flag, the window shrinking to my_end over training."""

    import reste


    @reste.register_estimator
    class Window(reste.Estimator):
        name = "myest"
        hyperparameters = (
            reste.Param("my_flag", float, 1.0, "initial half-width of the window", "(0, inf)", scheduled=True),
            reste.Param("my_end", float, 0.5, "final half-width", "(0, inf)"),
        )

        def set_progress(self, epoch, epochs):
            super().set_progress(epoch, epochs)  # checks the arguments
            start = self.config()["my_flag"]
            self.my_flag = start + (self.my_end - start) * epoch / epochs

        def params(self):
            return {"w": self.my_flag}

        _g = staticmethod(lambda x, w: (x.abs() <= w).to(x.dtype))
        _f = staticmethod(lambda x, w: x.clamp(-w, w))
''')


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "myest_plugin.py"
    path.write_text(PLUGIN)
    return path


@pytest.fixture
def loaded(plugin_file: Path):
    """The plugin imported in this process; unregistered afterwards, so other tests see the built-ins only."""
    module = plugins.load_plugin(str(plugin_file))
    yield module
    _REGISTRY.pop("myest", None)
    plugins._loaded.pop(str(plugin_file), None)
    sys.modules.pop(module.__name__, None)


def test_the_decorator_makes_a_library_estimator(loaded):
    assert "myest" in reste.list_estimators() and "myest" in reste.ESTIMATORS
    est = reste.get_estimator("myest", my_flag=0.8)
    assert isinstance(est, loaded.Window) and est.my_flag == 0.8 and est.config() == {"my_flag": 0.8, "my_end": 0.5}
    assert repr(est) == "Window(my_flag=0.8, my_end=0.5, now: my_flag=0.8)"
    with pytest.raises(ValueError, match=r"my_flag must be > 0, got -1"):
        reste.get_estimator("myest", my_flag=-1.0)
    with pytest.raises(ValueError, match="bad hyper-parameters for estimator 'myest'"):
        reste.get_estimator("myest", nope=1)
    spec = est.spec()
    assert spec == {"name": "myest", "my_flag": 0.8, "my_end": 0.5}
    assert Estimator.from_spec(spec).config() == est.config()

    x = torch.tensor([-2.0, -0.7, 0.0, 0.7, 2.0], requires_grad=True)
    est(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    est.set_progress(1, 2)
    assert est.schedule_values() == {"my_flag": 0.65000000000000002}
    assert repr(est) == "Window(my_flag=0.8, my_end=0.5, now: my_flag=0.65)"  # where its schedule stands
    with pytest.raises(ValueError, match="already registered"):
        reste.register_estimator(type("Other", (Estimator,), {"name": "myest"}))


def test_binarize_the_zoo_and_the_state_dict(loaded):
    float_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    model = reste.binarize(float_model, estimator="myest", my_flag=0.7)
    ests = reste.estimators_of(model)
    assert ests and all(type(e).name == "myest" and e.my_flag == 0.7 for e in ests)

    net = models.create("digits_1w1a", estimator="myest", my_flag=0.6)
    ests = reste.estimators_of(net)
    assert ests and all(e.config()["my_flag"] == 0.6 for e in ests)
    reste.set_progress(net, 1, 2)
    fresh = models.create("digits_1w1a", estimator="myest", my_flag=0.6)
    fresh.load_state_dict(net.state_dict())  # the schedule state travels in the state_dict
    assert [e.my_flag for e in reste.estimators_of(fresh)] == [e.my_flag for e in reste.estimators_of(net)]
    loss = net(torch.randn(3, 1, 8, 8)).sum()
    loss.backward()
    assert float(reste.estimating_error(net)) > 0 and float(reste.gradient_stability(net)) >= 0


def test_train_config_validates_from_the_table(loaded, plugin_file):
    cfg = TrainConfig(estimator="myest", estimator_options={"my_flag": 0.5}, epochs=1).resolve()
    assert cfg.estimator_options == {"my_flag": 0.5}
    with pytest.raises(UsageError, match=r"--my-flag must be > 0, got 0"):
        TrainConfig(estimator="myest", estimator_options={"my_flag": 0.0}, epochs=1).resolve()
    with pytest.raises(UsageError, match=r"no o_end"):
        TrainConfig(estimator="myest", estimator_options={"o_end": 3.0}, epochs=1).resolve()


def test_a_config_naming_its_plugin_loads_it(plugin_file):
    try:
        cfg = TrainConfig(estimator="MyEst", plugins=[str(plugin_file)], epochs=1).resolve()
        assert cfg.plugins == [str(plugin_file)] and "myest" in reste.list_estimators()
        assert cfg.estimator == "myest"  # the plugin loaded before the name was made canonical
    finally:
        _REGISTRY.pop("myest", None)
        plugins._loaded.pop(str(plugin_file), None)


def test_a_run_records_the_module_a_python_caller_imported(plugin_file, monkeypatch):
    """An estimator registered by the caller's own import (no --plugin) is recorded as a plugin, by its module
    name, so that a resume, eval or a sweep's spawned workers load it; a file loaded by --plugin by its path."""
    from reste.engine import planned_config

    monkeypatch.syspath_prepend(str(plugin_file.parent))
    try:
        importlib.import_module("myest_plugin")  # registers myest, as a caller's own import

        assert planned_config(TrainConfig(estimator="myest", epochs=1)).plugins == ["myest_plugin"]
        given = planned_config(TrainConfig(estimator="myest", epochs=1, plugins=["myest_plugin"]))
        assert given.plugins == ["myest_plugin"]  # not twice
        assert planned_config(TrainConfig(epochs=1)).plugins == []  # reste's own estimator and model
    finally:
        _REGISTRY.pop("myest", None)
        sys.modules.pop("myest_plugin", None)
        plugins._loaded.pop("myest_plugin", None)
    module = plugins.load_plugin(str(plugin_file))
    try:
        assert planned_config(TrainConfig(estimator="myest", epochs=1)).plugins == [str(plugin_file.resolve())]
    finally:
        _REGISTRY.pop("myest", None)
        plugins._loaded.pop(str(plugin_file), None)
        sys.modules.pop(module.__name__, None)


# ------------------------------------------------------------------ command line


def _reste(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "reste", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_resume_eval_and_sweep_with_a_plugin(plugin_file, tmp_path, command):
    """`--plugin MODULE` (a module in the current folder) and `--plugin FILE.py`; resume reloads it."""
    cwd = plugin_file.parent
    common = ("--epochs", "1", "--threads", "1", "--no-progress")
    r = command("train", "--help", "--plugin", "myest_plugin", cwd=cwd)
    assert r.returncode == 0 and "--my-flag" in r.stdout and "myest: initial half-width" in r.stdout, r.stderr
    r = command("train", "--plugin", "myest_plugin", "--estimator", "myest", "--my-flag", "0.5", "--indicators",
              "--out", "run", *common, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "myest" not in reste.list_estimators()  # each command as a new process: the next one loads it again
    run = cwd / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["plugins"] == ["myest_plugin"] and saved["estimator"] == "myest"
    assert saved["estimator_options"] == {"my_flag": 0.5, "my_end": 0.5}  # the default too
    assert len(_metrics(run)) == 1 and "estimating_error" in json.dumps(_metrics(run)[0])
    assert _metrics(run)[0]["my_flag"] == 0.5 and "  my_flag 0.5  " in r.stdout  # the schedule, line and file

    # resume: config.json names the plugin, a module of the current folder, which a resume imports only when
    # --plugin names it again (a run folder from elsewhere could run code by being resumed)
    r = command("train", "--resume", "run", "--my-flag", "0.5", "--epochs", "2", "--force", "--no-progress", cwd=cwd)
    assert r.returncode == 2 and "exist only with its --plugin MODULE" in r.stderr, r.stderr
    r = command("train", "--resume", "run", "--plugin", "myest_plugin", "--my-flag", "0.5", "--epochs", "2", "--force",
              "--no-progress", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in _metrics(run)] == [1, 2]
    # the plugin may move: --plugin is free on resume, like --data-path
    r = command("train", "--resume", "run", "--plugin", str(plugin_file), "--no-progress", cwd=cwd)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr
    assert json.loads((run / "config.json").read_text())["plugins"] == [str(plugin_file)]

    # eval from another folder: the plugin as a file; without it, one line and status 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = command("eval", str(run), "--plugin", str(plugin_file), "--device", "cpu", cwd=elsewhere)
    assert r.returncode == 0 and "top-1" in r.stdout, r.stderr
    r = command("eval", str(run), "--device", "cpu", cwd=elsewhere)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown estimator 'myest'" in r.stderr, r.stderr
    assert "the run trained with --plugin myest_plugin: pass the same --plugin" in r.stderr
    r = command("export", str(run), str(tmp_path / "model.rbnn"), "--plugin", str(plugin_file), cwd=elsewhere)
    assert r.returncode == 0 and (tmp_path / "model.rbnn").is_file(), r.stderr

    # a sweep over the plugin's hyper-parameter (by its keyword and by its flag name)
    r = command("sweep", "--plugin", str(plugin_file), "--estimator", "myest", "--grid", "my_flag=0.5,0.8",
              "--out", "sweep", "--no-report", *common, cwd=cwd)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((cwd / "sweep" / "sweep.json").read_text())
    assert [s["label"] for s in manifest["settings"]] == ["my_flag=0.5", "my_flag=0.8"]
    configs = [json.loads(p.read_text()) for p in sorted((cwd / "sweep" / "runs").glob("*/*/config.json"))]
    assert sorted(c["estimator_options"]["my_flag"] for c in configs) == [0.5, 0.8]
    assert all(c["plugins"] == [str(plugin_file)] for c in configs)

    # (review userE #8) a --plugin the run does not use is not recorded: a resume does not ask for it again; a
    # sweep over estimators records it in its plugin estimator's runs alone
    r = command("train", "--plugin", str(plugin_file), "--out", "unused", *common, cwd=cwd)
    assert r.returncode == 0 and json.loads((cwd / "unused" / "config.json").read_text())["plugins"] == [], r.stderr
    r = command("train", "--resume", "unused", "--epochs", "2", "--force", "--no-progress", cwd=cwd)
    assert r.returncode == 0, r.stderr
    r = command("sweep", "--plugin", str(plugin_file), "--grid", "estimator=ste,myest", "--out", "both",
              "--no-report", *common, cwd=cwd)
    assert r.returncode == 0, r.stderr
    recorded = {c["estimator"]: c["plugins"] for c in
                (json.loads(p.read_text()) for p in (cwd / "both" / "runs").glob("*/*/config.json"))}
    assert recorded == {"ste": [], "myest": [str(plugin_file)]}


def test_the_resume_command_a_run_is_told_names_the_plugins_it_needs_again(plugin_file, tmp_path, monkeypatch):
    """(review extend #12) A stopped run of a .py plugin was told `reste train --resume RUN`, which the resume then
    refuses without --plugin: a job script requeueing the command it was given failed on every such run. An installed
    module loads by itself and needs none; one of the current folder does, though the process that stops has
    imported it (review diff21 #1), as does a damaged entry (the resume says so; review diff21 #6)."""
    import types

    from reste.rundir import resume_command

    run = tmp_path / "run dir"
    run.mkdir()
    monkeypatch.setitem(sys.modules, "cwd_only_plugin_test", types.ModuleType("cwd_only_plugin_test"))
    for recorded, flags in (([str(plugin_file)], f" --plugin {plugin_file}"), (["json"], ""), ([], ""),
                            (["json", str(plugin_file)], f" --plugin json --plugin {plugin_file}"),
                            (["cwd_only_plugin_test"], " --plugin cwd_only_plugin_test"), ([None], ""), ([" "], "")):
        (run / "config.json").write_text(json.dumps({"plugins": recorded}))
        assert resume_command(run) == f"`reste train --resume '{run}'{flags}`"
        assert resume_command(run, 2) == f"torchrun again, 2 processes, running `-m reste.cli train --resume '{run}'" \
                                         f"{flags}`"
    (run / "config.json").write_text("[damaged")  # the resume says what is wrong with it
    assert resume_command(run) == f"`reste train --resume '{run}'`"


def test_a_resume_names_the_hyper_parameters_its_estimator_gained_since(plugin_file, tmp_path, command):
    """(review userE #10) A plugin edited to take one more hyper-parameter: the resume took its default without a
    word; it now says the run trained without it."""
    cwd = plugin_file.parent
    r = command("train", "--plugin", str(plugin_file), "--estimator", "myest", "--out", "run", "--epochs", "1",
              "--threads", "1", "--no-progress", cwd=cwd)
    assert r.returncode == 0, r.stderr
    plugin_file.write_text(PLUGIN.replace(
        'reste.Param("my_end", float, 0.5, "final half-width", "(0, inf)"),',
        'reste.Param("my_end", float, 0.5, "final half-width", "(0, inf)"),\n'
        '            reste.Param("my_extra", float, 2.0, "more", "(0, inf)"),'))
    r = command("train", "--resume", "run", "--plugin", str(plugin_file), "--epochs", "2", "--force", "--no-progress",
              cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert ("note: estimator 'myest' has hyper-parameter(s) last.pt did not record, which the run continues with at "
            "their defaults: my_extra=2.0") in r.stdout + r.stderr


def test_bad_plugins_get_one_line(tmp_path, command):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "needs.py").write_text("import no_such_module_here\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")  # (review userE #9: it ended reste silently, 0)
    for spec, needle in (("no_such_plugin", "no module named 'no_such_plugin'"), ("broken.py", "RuntimeError: boom"),
                         ("needs", "No module named 'no_such_module_here'"), ("missing.py", "no such file"),
                         ("exits", "it called sys.exit(0) while being imported")):
        r = command("train", "--plugin", spec, "--epochs", "1", cwd=tmp_path)
        assert r.returncode == 2, (spec, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("reste: error: ") and needle in lines[0], (spec, r.stderr)


def test_an_installed_entry_point_is_found(tmp_path):
    """A distribution's ``reste.estimators`` entry point: no --plugin needed."""
    site = tmp_path / "site"
    (site / "myest_dist-0.1.dist-info").mkdir(parents=True)
    (site / "myest_plugin.py").write_text(PLUGIN)
    (site / "myest_dist-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: myest-dist\n"
                                                                 "Version: 0.1\n")
    (site / "myest_dist-0.1.dist-info" / "entry_points.txt").write_text("[reste.estimators]\nmyest = myest_plugin\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = _reste("train", "--estimator", "myest", "--my-flag", "0.5", "--out", "run", "--epochs", "1", "--threads", "1",
               "--no-progress", cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    saved = json.loads((work / "run" / "config.json").read_text())
    assert saved["estimator_options"] == {"my_flag": 0.5, "my_end": 0.5}
    code = "import reste; print(reste.get_estimator('myest', my_flag=0.3).config())"
    r = subprocess.run([sys.executable, "-c", code], cwd=work, env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "'my_flag': 0.3" in r.stdout, r.stderr
    (site / "myest_plugin.py").write_text("raise ImportError('half installed')\n")
    r = _reste("presets", cwd=work, env=env)  # a broken package is a warning: the rest of reste works
    assert r.returncode == 0 and "warning: plugin 'myest'" in r.stderr and "half installed" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _reste("train", "--estimator", "myest", "--epochs", "1", cwd=work, env=env)  # its name: the error says why
    assert r.returncode == 2 and "unknown estimator 'myest'" in r.stderr and "half installed" in r.stderr, r.stderr
    (site / "myest_plugin.py").write_text("import sys\nsys.exit(0)\n")  # (review rev11 #6: reste ended silently)
    r = _reste("presets", cwd=work, env=env)
    assert r.returncode == 0 and "failed to load: it called sys.exit(0) while being imported" in r.stderr, r.stderr
    assert "cifar10-resnet20-1w1a" in r.stdout


def test_an_installed_model_loads_whatever_reste_imports_first(tmp_path):
    """(review api #1) importing reste.models first (a script's usual order) ran the zoo's registrations, which
    loaded the installed plugins while reste.models was half made: a plugin importing register_model from it
    failed, and its models were missing for the rest of the process."""
    site = tmp_path / "site"
    (site / "mlp_dist-0.1.dist-info").mkdir(parents=True)
    (site / "mlp_plugin.py").write_text(
        "from torch import nn\n"
        "from reste.models import ConvBuilder, register_model\n\n\n"
        "@register_model(dataset='digits')\n"
        "def ep_mlp_1w1a(*, num_classes: int, conv: ConvBuilder) -> nn.Module:\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), conv.linear(16, 16),\n"
        "                         nn.BatchNorm1d(16), nn.Linear(16, num_classes))\n")
    (site / "mlp_dist-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mlp-dist\nVersion: 0.1\n")
    (site / "mlp_dist-0.1.dist-info" / "entry_points.txt").write_text("[reste.estimators]\nmlp = mlp_plugin\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)}
    for first in ("from reste import models", "from reste import engine; from reste import models", "import reste"):
        code = (f"import warnings; warnings.simplefilter('error')\n{first}\n"
                "from reste import models\nprint(type(models.create('ep_mlp_1w1a', estimator='ste')[3]).__name__)")
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0 and r.stdout.strip() == "BinaryLinear", (first, r.stderr[-1500:])


def test_bad_scaling_is_a_usage_error_before_any_data_is_loaded(capsys, tmp_path, monkeypatch):
    from reste import engine

    def no_data(*_a, **_k):
        raise AssertionError("data loaded before the settings were checked")

    monkeypatch.setattr(engine, "load_datasets", no_data)
    assert main(["train", "--scaling", "bogus", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown --scaling 'bogus'; valid: layer, channel, none" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_plugin_that_registers_nothing_is_said_so(tmp_path, monkeypatch):
    """(review userE) A --plugin that imports but registers nothing (the wrong module, a package folder) was taken
    without a word; it gets one warning. One the caller imported before (it registered then) gets none."""
    (tmp_path / "nothing_here.py").write_text("x = 1\n")
    monkeypatch.setattr(plugins, "_loaded", dict(plugins._loaded))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.warns(UserWarning, match="--plugin 'nothing_here' registered no estimator, model or data set"):
            plugins.load_plugin("nothing_here")
        plugins._loaded.pop("nothing_here")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plugins.load_plugin("nothing_here")  # imported already: nothing to tell from the registries
    finally:
        sys.modules.pop("nothing_here", None)


def test_a_scheduled_string_and_the_debug_flag_are_refused_where_the_class_is_written():
    """(review userE #4, #5) A scheduled str registered, then every run failed ('could not convert string to float':
    the state saves a number); a hyper-parameter flagged --debug registered, then reste's own --debug took it."""
    with pytest.raises(ValueError, match="'phase': a scheduled one must be a float or an int"):
        reste.Param("phase", str, "wide", "phase", choices=("wide", "narrow"), scheduled=True)

    class Debugged(Estimator):
        name = "debugged"
        hyperparameters = (reste.Param("debug", float, 1.0, "x", "(0, inf)"),)
        _g = staticmethod(lambda x, debug: (x.abs() <= debug).to(x.dtype))

    with pytest.raises(ValueError, match="--debug"):
        reste.register_estimator(Debugged)
    assert "debugged" not in _REGISTRY


def test_a_scheduled_value_named_like_a_metrics_field_is_refused(tmp_path, command):
    """It would overwrite (or be overwritten by) that field of each metrics.jsonl line."""
    (tmp_path / "clash.py").write_text(PLUGIN.replace('"myest"', '"clash"').replace("my_flag", "time"))
    r = command("train", "--plugin", "clash", "--estimator", "clash", "--epochs", "1", "--threads", "1",
              "--no-progress", "--out", "run", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "schedules time, a name each line of metrics.jsonl uses for its own field" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("held", ["tensor", "numpy"])
def test_a_scheduled_value_held_as_a_tensor_or_numpy_number_is_logged_saved_and_resumed(tmp_path, command, held):
    """(review user3 #4) A plugin whose set_progress holds its value as a 0-dim tensor (``torch.linspace(...)[epoch]``)
    or a NumPy float32 trained its first epoch, then died writing metrics.jsonl ("Object of type Tensor is not JSON
    serializable") and lost it; its state_dict did not load ("new(): data must be a sequence")."""
    value = {"tensor": "__import__('torch').tensor(float(v))", "numpy": "__import__('numpy').float32(v)"}[held]
    (tmp_path / "held.py").write_text(PLUGIN.replace('"myest"', '"held"').replace(
        "self.my_flag = start + (self.my_end - start) * epoch / epochs",
        f"v = start + (self.my_end - start) * epoch / epochs\n        self.my_flag = {value}"))
    r = command("train", "--plugin", "held.py", "--estimator", "held", "--epochs", "2", "--threads", "1",
                "--no-progress", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [type(x["my_flag"]) for x in lines] == [float, float]
    assert [x["my_flag"] for x in lines] == pytest.approx([1.0, 0.75])  # (epoch 1's start, then epoch 2's: 1/2)
    r = command("train", "--resume", "run", "--plugin", "held.py", "--epochs", "3", "--force", "--threads", "1",
                "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    third = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert third["epoch"] == 3 and isinstance(third["my_flag"], float)


def test_a_scheduled_value_held_as_a_tensor_a_buffer_or_none_until_set_loads_and_shows(isolated):
    """A value held as a tensor loads as its number (it took the tensor's type: "new(): data must be a sequence");
    one held in a buffer is loaded into it (review diff23 #2: "cannot assign 'float' as buffer"); one that is None
    until set_progress sets it is shown as held (review diff23 #1: the run and print(model) failed)."""
    class Held(reste.STE):
        name = "held_value"
        _state_keys = ("c",)
        c = 1.0

        def set_progress(self, epoch, epochs):
            super().set_progress(epoch, epochs)
            self.c = torch.tensor(1.0 + epoch)

    class Buffered(reste.STE):
        name = "buffered_value"
        _state_keys = ("c",)

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.register_buffer("c", torch.tensor(1.0))

        def set_progress(self, epoch, epochs):
            super().set_progress(epoch, epochs)
            self.c.fill_(1.0 + epoch)

    class Unset(reste.STE):
        name = "unset_value"
        _state_keys = ("c",)

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.c = None

        def set_progress(self, epoch, epochs):
            super().set_progress(epoch, epochs)
            self.c = 1.0 + epoch

    for cls in (Held, Buffered, Unset):
        reste.register_estimator(cls)
        saved, loaded = cls(), cls()
        saved.set_progress(1, 4)
        loaded.set_progress(3, 4)
        loaded.load_state_dict(saved.state_dict())
        assert loaded.schedule_values() == {"c": 2.0} and float(loaded.c) == 2.0, cls
    assert type(loaded.c) is float and isinstance(Buffered().c, torch.Tensor)
    assert Unset().schedule_values() == {"c": None} and "now: c=None" in repr(Unset())
    fresh = Unset()  # (review diff24 #3) saved before its set_progress: None kept, and loaded as None
    fresh.load_state_dict(Unset().state_dict())
    assert fresh.c is None
    loaded.c = torch.tensor([1.0, 2.0])  # (review diff24 #1) anything else that is no number: named before training
    with pytest.raises(ValueError, match=r"estimator 'unset_value': its scheduled value c is tensor\(\[1\., 2\.\]\), "
                                         "not a number"):
        loaded.schedule_values()


MODEL_PLUGIN = textwrap.dedent('''
    """An MLP of your own; its factory builds the binary layer with the builder it receives."""

    from torch import nn

    from reste.models import ConvBuilder, register_model


    @register_model(dataset="digits", num_classes=10, input_size=(1, 8, 8), twin="plug_mlp")
    def plug_mlp_1w1a(*, num_classes: int, conv: ConvBuilder, width: int = 64) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width),
                             conv.linear(width, width), nn.BatchNorm1d(width), nn.Linear(width, num_classes))
''')


def test_a_plugin_registers_a_model(tmp_path, monkeypatch, command):
    """A model of your own: --plugin on the command line (resume reloads it, eval and export take it), and a
    TrainConfig naming the plugin loads it before it checks the model; without it, the error says how."""
    from reste.models import registry

    (tmp_path / "mlp_plugin.py").write_text(MODEL_PLUGIN)
    r = command("train", "--model", "plug_mlp_1w1a", "--epochs", "1", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown model 'plug_mlp_1w1a'" in r.stderr
    assert "--plugin MODULE" in r.stderr and "register_model" in r.stderr
    r = command("train", "--plugin", "mlp_plugin.py", "--model", "plug_mlp_1w1a", "--estimator", "ste",
              "--model-option", "width=32", "--epochs", "1", "--threads", "1", "--no-progress", "--out", "run",
              cwd=tmp_path)
    assert r.returncode == 0 and "training plug_mlp_1w1a (ste)" in r.stdout, r.stderr
    r = command("train", "--resume", "run", "--epochs", "2", "--force", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "a resume imports only when given again" in r.stderr, r.stderr  # a .py file
    r = command("train", "--resume", "run", "--epochs", "2", "--force", "--plugin", "mlp_plugin.py", "--no-progress",
              cwd=tmp_path)
    assert r.returncode == 0 and [m["epoch"] for m in _metrics(tmp_path / "run")] == [1, 2], r.stderr
    r = command("export", "run", "m.rbnn", "--plugin", "mlp_plugin.py", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "m.rbnn").is_file(), r.stderr

    for attr in ("_MODELS", "_INFO", "_BINARY"):
        monkeypatch.setattr(registry, attr, dict(getattr(registry, attr)))
    monkeypatch.setattr(plugins, "_loaded", dict(plugins._loaded))
    cfg = TrainConfig(model="plug_mlp", plugins=[str(tmp_path / "mlp_plugin.py")], epochs=1).resolve()
    assert cfg.dataset == "digits" and "plug_mlp" in models.list_models()
    assert type(models.create("plug_mlp_1w1a", estimator="ste")[3]) is reste.BinaryLinear


def test_only_train_resume_imports_the_plugins_a_run_folder_names(tmp_path):
    """A --resume typed after another command (eval, sweep) is refused by that command's parser, and must not
    first import the module a (possibly foreign) run folder's config.json names."""
    from reste.plugins import plugins_in_argv

    (tmp_path / "config.json").write_text(json.dumps({"plugins": ["json"]}))  # an installed module (the stdlib's)
    assert plugins_in_argv(["train", "--resume", str(tmp_path)]) == ["json"]
    assert plugins_in_argv(["--debug", "train", "--resume", str(tmp_path)]) == ["json"]
    for command in (["eval", "x"], ["sweep"], ["show", "x"], ["report", "x"]):
        assert plugins_in_argv([*command, "--resume", str(tmp_path)]) == [], command


def test_a_resume_imports_no_code_inside_the_run_folder_unless_given_again(tmp_path, monkeypatch, command):
    """A run's config.json names its plugins and --resume imported them: a run folder from elsewhere whose config.json
    names code it holds itself (run/evil.py, the module run.evil, the folder as a package), a file planted elsewhere
    or a module of the current folder ran that code by being resumed. Only an installed module is imported now;
    the others when --plugin names them again."""
    r = command("train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    (run / "evil.py").write_text("import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('ran')\n")
    (tmp_path / "mine.py").write_text("")
    monkeypatch.chdir(tmp_path)  # where a module name is looked for, and a relative path starts
    for spec in ("run.evil", "run/evil.py", str(run / "evil.py"), "./run/../run/evil.py", "mine.py", "mine",
                 "no_such_module", str(tmp_path / "mine.py")):
        assert not plugins.loads_on_resume(spec, run) and not plugins.loads_on_resume(spec, "run/../run"), spec
    for spec in ("json", "email.mime", "sys"):
        assert plugins.loads_on_resume(spec, run), spec
    (run / "__init__.py").write_text("")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "plugins": ["run", "mine", "json"]}))
    assert not plugins.loads_on_resume("run", run) and plugins.plugins_in_argv(["train", "--resume", "run"]) == ["json"]
    monkeypatch.syspath_prepend(str(tmp_path))  # the run folder's parent on Python's path: its code is still held
    monkeypatch.chdir(run)
    assert not plugins.loads_on_resume("run.evil", run) and not plugins.loads_on_resume("run", run)
    assert plugins.loads_on_resume("mine", run)  # found on the path, outside the run folder
    monkeypatch.chdir(tmp_path)
    (run / "__init__.py").unlink()
    (run / "config.json").write_text(json.dumps({**config, "epochs": 2, "lr": -1, "plugins": ["run/evil.py"]}))
    r = command("train", "--resume", "run", "--no-progress", cwd=tmp_path)  # a bad setting: no error path imports it
    assert r.returncode == 2 and "pass --plugin run/evil.py (or where" in r.stderr, r.stderr
    assert not (run / "RAN").exists()
    (run / "config.json").write_text(json.dumps({**config, "epochs": 2, "plugins": ["run.evil"]}))
    r = command("train", "--resume", "run", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "names plugins that a resume imports only when given again" in r.stderr, r.stderr
    assert not (run / "RAN").exists()
    r = command("train", "--resume", "run", "--epochs", "3", "--force", "--plugin", "run/evil.py", "--no-progress",
              cwd=tmp_path)
    assert r.returncode == 0 and (run / "RAN").exists(), r.stderr  # given again: the user's choice


def test_load_plugins_takes_one_spec_as_a_string(isolated, tmp_path, monkeypatch):
    """(review api, suggestion) load_plugins("x.py"), which the errors point Python callers to, iterated the
    string's characters ("--plugin '/': no such file")."""
    (tmp_path / "one_spec_plugin.py").write_text(
        "import reste\n\n\n@reste.register_estimator\nclass OneSpec(reste.STE):\n    name = 'one_spec_test'\n")
    monkeypatch.setattr(plugins, "_loaded", dict(plugins._loaded))
    plugins.load_plugins(str(tmp_path / "one_spec_plugin.py"))
    assert reste.get_estimator("one_spec_test").name == "one_spec_test"


def test_a_plugin_folder_is_told_how_to_give_it(tmp_path, capsys):
    """(review extend, suggestion) `--plugin path/to/pkg` answered "no such file"."""
    from cli_checks import one_line_error

    (tmp_path / "pkg").mkdir()
    line = one_line_error(capsys, "train", "--plugin", str(tmp_path / "pkg"), "--print-config")
    assert line.endswith(f"--plugin '{tmp_path / 'pkg'}' is a folder: give a .py file, or a package by its module "
                         "name from the folder above it (pkg)")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    assert "give a .py file (or its __init__.py)" in one_line_error(capsys, "train", "--plugin", str(tmp_path / "pkg"),
                                                                   "--print-config")


def test_two_plugin_files_of_one_name_are_two_modules(isolated, tmp_path):
    """(review diff21 #3) a/mydata.py and b/mydata.py were both the module reste_plugin_mydata: one's data set
    trained on the other's data, and one's registration replaced the other's without a word. Two packages given by
    their __init__.py were one module too (the second's estimator was never registered)."""
    body = ("import reste, torch\n\n\n@reste.register_estimator\nclass E(reste.Estimator):\n    name = {name!r}\n"
            "    _g = staticmethod(lambda x: torch.ones_like(x))\n")
    for folder, name in (("a", "one_test"), ("b", "two_test"), ("c", "one_test")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "est.py").write_text(body.format(name=name))
    first, second = plugins.load_plugin(str(tmp_path / "a" / "est.py")), plugins.load_plugin(str(tmp_path / "b" /
                                                                                                    "est.py"))
    assert first is not second and first.__name__ == "reste_plugin_est" and second.__name__ == "reste_plugin_est_2"
    assert {"one_test", "two_test"} <= set(reste.list_estimators())
    assert plugins.load_plugin(str(tmp_path / "a" / "est.py")) is first  # (the same file: the same module)
    with pytest.raises(UsageError, match="estimator name 'one_test' is already registered by reste_plugin_est.E"):
        plugins.load_plugin(str(tmp_path / "c" / "est.py"))
    for pkg, name in (("pa", "pkg_one_test"), ("pb", "pkg_two_test")):
        (tmp_path / pkg / "mypkg").mkdir(parents=True)
        (tmp_path / pkg / "mypkg" / "__init__.py").write_text("from . import est\n")
        (tmp_path / pkg / "mypkg" / "est.py").write_text(body.format(name=name))
        assert plugins.load_plugin(str(tmp_path / pkg / "mypkg" / "__init__.py")).__name__.startswith(
            "reste_plugin_mypkg")
    assert {"pkg_one_test", "pkg_two_test"} <= set(reste.list_estimators())


def test_a_resume_of_a_run_whose_plugins_are_damaged_is_one_line(tmp_path, capsys):
    """(review diff21 #6) `plugins: [null]` in config.json: the resume told to pass `--plugin None`."""
    from cli_checks import one_line_error

    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "plugins": [None]}))
    line = one_line_error(capsys, "train", "--resume", str(run), "--epochs", "2")
    assert "config.json is damaged: its plugins are [None], not a list of module names or .py files" in line
    assert main(["show", str(run)]) == 0  # and reste show says it, as it gives the resume command
    assert ("note       config.json's plugins are [None], not a list of module names or .py files (damaged): a "
            "resume needs the run's --plugin flags given again") in capsys.readouterr().out


def test_a_plugins_sweep_run_again_without_it_is_told_to_pass_it(tmp_path, command):
    """(review user3, suggestion 4) The same sweep without --plugin said "unknown estimator 'myest'; valid: ..." and
    the generic hint; it names the plugin the sweep in --out recorded, as `reste eval RUN` does."""
    (tmp_path / "myest_plugin.py").write_text(PLUGIN)
    args = ("--seeds", "0", "--epochs", "1", "--threads", "1", "--no-progress", "--no-report", "--out", "sw")
    r = command("sweep", "--plugin", "myest_plugin.py", "--grid", "estimator=myest,ste", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for given, unknown in ((("--grid", "estimator=myest,ste"), "estimator 'myest'"),
                           (("--estimator", "myest", "--grid", "my_end=0.5,0.25"), "grid axis 'my_end'")):
        r = command("sweep", *given, *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith(f"reste: error: unknown {unknown}; ") and r.stderr.endswith(
            f" (the sweep in sw trained with --plugin {tmp_path / 'myest_plugin.py'}: pass the same --plugin)\n"), \
            r.stderr
    r = command("sweep", "--grid", "estimator=stee,ste", *args, cwd=tmp_path)  # (review diff24 #4: a typo's hint kept)
    assert "unknown estimator 'stee'; did you mean 'ste'?" in r.stderr and "pass the same --plugin" in r.stderr


def test_a_plugin_file_imports_the_modules_beside_it(isolated, tmp_path, monkeypatch):
    """(review extend1 #1) a plugin file that imports a helper beside it loaded under `python -m reste` (the current
    folder on the path) and not under the `reste` script, so the resume command a run printed failed: its own folder
    is on the path while it runs, as a script's is."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)  # elsewhere than the plugin's folder
    folder = tmp_path / "plug"
    folder.mkdir()
    (folder / "extend1_helper_test.py").write_text("import torch\n\n\ndef g(x):\n    return torch.ones_like(x)\n")
    (folder / "main.py").write_text("import reste\nimport extend1_helper_test\n\n\n@reste.register_estimator\n"
                                    "class E(reste.Estimator):\n    name = 'beside_test'\n"
                                    "    _g = staticmethod(extend1_helper_test.g)\n")
    plugins.load_plugin(str(folder / "main.py"))
    assert "beside_test" in reste.list_estimators()
    assert str(folder) not in sys.path  # (while it loads: a resume takes none of that folder's modules for installed)


def test_a_run_records_the_plugin_of_an_estimator_its_models_layers_name(isolated, plugin_file, tmp_path, capsys):
    """(review extend1 #2) a plugin model whose layer names a plugin estimator by name, the estimator given as its own
    --plugin: config.json recorded the model's plugin alone, so the resume command a run printed, and eval with it,
    failed on the unknown estimator (and blamed a change of the plugin's code)."""
    model = tmp_path / "layers_name_it.py"
    model.write_text(textwrap.dedent('''
        import reste
        from torch import nn


        @reste.models.register_model(dataset="digits", mixed_estimators=True)
        def named_est_test_1w1a(*, num_classes, conv):
            return nn.Sequential(conv(1, 4, 3, 1, 1), reste.BinaryConv2d(4, 4, 3, padding=1, input_estimator="myest",
                                 weight_estimator="myest"), nn.Flatten(), nn.Linear(256, num_classes))
    '''))
    run = tmp_path / "run"
    assert main(["train", "--plugin", str(plugin_file), "--plugin", str(model), "--model", "named_est_test_1w1a",
                 "--estimator", "ste", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["plugins"] == [str(plugin_file), str(model)]
    assert torch.load(run / "last.pt", weights_only=True)["config"]["plugins"] == [str(plugin_file), str(model)]
    # (review diff30 #1) and so do a sweep's settings, which its worker processes load, and --print-config
    from reste.experiments.sweep import expand_grid

    base = TrainConfig(model="named_est_test_1w1a", estimator="ste", plugins=[str(plugin_file), str(model)])
    assert [s.config.plugins for s in expand_grid(base, {"lr": [0.1, 0.2]})] == [[str(plugin_file), str(model)]] * 2
    capsys.readouterr()
    assert main(["train", "--plugin", str(plugin_file), "--plugin", str(model), "--model", "named_est_test_1w1a",
                 "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["plugins"] == [str(plugin_file), str(model)]
    # (review diff31 #1, #2) a factory the meta device cannot build (it reads a value) still records the plugin, from
    # the model the run builds; and the trial build leaves the mixed-estimator warning, once, to the run
    reading = tmp_path / "reads_a_value.py"
    reading.write_text(textwrap.dedent('''
        import reste, torch
        from torch import nn


        @reste.models.register_model(dataset="digits")
        def reads_test_1w1a(*, num_classes, conv):
            width = int(torch.tensor(4))  # (no value on the meta device)
            return nn.Sequential(conv(1, width, 3, 1, 1), reste.BinaryConv2d(width, 4, 3, padding=1,
                                 input_estimator="myest", weight_estimator="myest"), nn.Flatten(),
                                 nn.Linear(256, num_classes))
    '''))
    with pytest.warns(UserWarning, match="have another estimator than the 'ste' asked for"):
        assert main(["train", "--plugin", str(plugin_file), "--plugin", str(reading), "--model", "reads_test_1w1a",
                     "--estimator", "ste", "--epochs", "1", "--threads", "1", "--no-progress", "--out",
                     str(tmp_path / "reads")]) == 0
    assert json.loads((tmp_path / "reads" / "config.json").read_text())["plugins"] == [str(plugin_file), str(reading)]
    # a factory the meta device builds: its trial build there leaves the once-only warning to the run's build
    def by_hand(*, num_classes, conv):
        return nn.Sequential(conv(1, 4, 3, 1, 1), reste.BinaryConv2d(4, 4, 3, padding=1, input_estimator="myest"),
                             nn.Flatten(), nn.Linear(256, num_classes))

    models.register_model(dataset="digits")(type(by_hand)(by_hand.__code__, by_hand.__globals__, "by_hand_test_1w1a"))
    state = torch.get_rng_state()
    as_recorded(TrainConfig(model="by_hand_test_1w1a", estimator="ste").resolve())
    assert torch.equal(torch.get_rng_state(), state)  # (and the caller's RNG as it was)
    with pytest.warns(UserWarning, match="have another estimator than the 'ste' asked for"):
        models.create("by_hand_test_1w1a", estimator="ste")
    # (review diff30 #2) a relative file a Python caller gave is recorded by its path, as --plugin's
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert as_recorded(TrainConfig(model="named_est_test_1w1a", plugins=[model.name]).resolve()).plugins == [
            str(model), str(plugin_file)]  # (the estimator's plugin found, after those given)


def test_a_model_of_mixed_estimators_logs_the_runs_own_schedule(isolated, tmp_path):
    """(review extend1 #4) a model whose first binary layer has an EDE of its own and the rest the run's ReSTE: each
    epoch's line and metrics.jsonl carried EDE's t and k as the run's, and ReSTE's o nowhere."""
    def mixed(*, num_classes, conv):
        return nn.Sequential(reste.BinaryConv2d(1, 4, 3, padding=1, input_estimator="ede", weight_estimator="ede"),
                             conv(4, 4, 3, 1, 1), nn.Flatten(), nn.Linear(256, num_classes))

    models.register_model(dataset="digits", mixed_estimators=True)(
        type(mixed)(mixed.__code__, mixed.__globals__, "mixed_log_test_1w1a"))
    run = tmp_path / "run"
    assert main(["train", "--model", "mixed_log_test_1w1a", "--estimator", "reste", "--epochs", "2", "--threads", "1",
                 "--no-progress", "--out", str(run)]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["o"] == 1.0 and 1.0 < lines[1]["o"] < 3.0 and not {"t", "k"} & set(lines[0])


def test_python_resumes_a_run_of_a_plugin_file_it_loaded(isolated, plugin_file, tmp_path):
    """(review extend1 #8) engine.resume of a run whose plugin is a .py file was refused in the very process that had
    loaded it (no code of it would run again), and told a Python caller to pass a flag."""
    from reste import engine

    run = tmp_path / "run"
    plugins.load_plugins([str(plugin_file)])
    engine.train(TrainConfig(dataset="digits", epochs=1, device="cpu", threads=1, estimator="myest"), out=run,
                 log=lambda _: None)
    assert engine.resume(run, {"epochs": 2}, force=True, log=lambda _: None)["epochs"] == 2
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "plugins": [str(tmp_path / "never_loaded.py")]}))
    with pytest.raises(UsageError, match=r"load them first \(reste.plugins.load_plugins\) or pass overrides="
                                         r"\{'plugins': \['.*never_loaded.py'\]\}$"):
        engine.resume(run, {"epochs": 3}, force=True, log=lambda _: None)


def test_a_plugin_file_edited_since_the_run_trained_is_said(isolated, plugin_file, tmp_path, command):
    """(review extend1, suggestion 1) editing a plugin's g between a run and its eval, export or resume went
    unnoticed: each checkpoint records the loaded plugin files' digests, and a later process says which changed."""
    cwd, plug = plugin_file.parent, str(plugin_file)
    r = command("train", "--plugin", plug, "--estimator", "myest", "--epochs", "1", "--threads", "1", "--no-progress",
                "--out", "run", cwd=cwd)
    assert r.returncode == 0, r.stderr
    from reste.checkpoint import load_checkpoint

    assert plug in load_checkpoint(cwd / "run" / "last.pt")["software"]["plugins"]
    r = command("eval", "run", "--plugin", plug, cwd=cwd)
    assert r.returncode == 0 and "changed" not in r.stderr, r.stderr
    plugin_file.write_text(PLUGIN + "\n# edited\n")
    said = f"the file of the plugin {plug} changed since this checkpoint was written; the model is built by the code"
    for args in (("eval", "run"), ("export", "run", str(tmp_path / "m.rbnn"))):
        r = command(*args, "--plugin", plug, cwd=cwd)
        assert r.returncode == 0 and said in r.stderr, r.stderr
    # (review diff30 #3) the same file again under another spelling runs none of its code: its digest stays the one
    # of the code that ran
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plugins, "_loaded", {})
        patch.setattr(plugins, "_digests", {})
        patch.chdir(cwd)
        plugins.load_plugin(plugin_file.name)
        ran = plugins.digests()
        plugin_file.write_text(PLUGIN + "\n# edited again\n")
        plugins.load_plugin(plug)
        assert plugins.digests() == ran and list(ran) == [plug]
    r = command("train", "--resume", "run", "--plugin", plug, "--epochs", "2", "--force", "--no-progress", cwd=cwd)
    assert r.returncode == 0 and f"note: the file of the plugin {plug} changed since run/last.pt was " \
        "written: the run continues with the code loaded now" in r.stdout, r.stdout
