"""A data set of your own, in one plugin file: registered with ``reste.datasets.register_dataset``, then trained,
resumed, evaluated, exported, predicted, summarised and swept by name, as a built-in is."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import reste
from reste import datasets, plugins
from reste.cli import main
from reste.config import TrainConfig, as_recorded
from reste.datasets import DatasetSpec, dataset_names, get_spec, register_dataset
from reste.errors import UsageError
from reste.models import registry
from cli_checks import one_line_error

PLUGIN = textwrap.dedent('''
    """toyset: 1x8x8 images of 3 classes, class c a bright band at rows 3c and 3c+1 over uniform noise."""
    import numpy as np
    from torch import nn

    from reste.data import from_tensors
    from reste.datasets import DatasetSpec, register_dataset
    from reste.models import ConvBuilder, register_model


    def _split(n, seed):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 120, (n, 1, 8, 8))
        for c in range(3):
            x[y == c, :, 3 * c:3 * c + 2, :] += 130
        return x.astype(np.uint8), y


    def load(data_path, download, augment, in_memory, train):
        return from_tensors("toyset", _split(240, 0) if train else None, _split(90, 1), classes=("a", "b", "c"))


    SPEC = register_dataset(DatasetSpec(
        name="toyset", aliases=("toy",), num_classes=3, input_size=(1, 8, 8), mean=(0.3,), std=(0.3,), scale=255.0,
        train_size=240, test_size=90, fits_in_memory=True, loader=load, augments=False, reads_files=False,
        defaults=dict(model="toy_mlp_1w1a", epochs=2, batch_size=32, lr=0.01)))


    @register_model(dataset="toyset", twin="toy_mlp")
    def toy_mlp_1w1a(*, num_classes: int, conv: ConvBuilder, width: int = 16) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width),
                             conv.linear(width, width), nn.BatchNorm1d(width), nn.Linear(width, num_classes))
''')

TOY = DatasetSpec(name="mine", aliases=("mine8",), num_classes=3, input_size=(1, 8, 8), mean=(0.5,), std=(0.25,),
                  scale=255.0, train_size=None, test_size=None, fits_in_memory=True, loader="mymod:load")


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "toyset.py"
    path.write_text(PLUGIN)
    return path


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_registered_set_is_known_everywhere_a_builtin_is(isolated):
    assert "mine" not in dataset_names()
    spec = register_dataset(TOY)
    assert dataset_names()[-1] == "mine" and datasets.DATASETS == ("digits", "fashion-mnist", "cifar10", "imagenet")
    assert get_spec("MINE8") is spec and datasets.defined_in("mine") == __name__
    assert datasets.defined_in("digits") == "reste.datasets"
    assert spec.defaults == datasets.GENERIC_RECIPE  # the recipe a spec leaves out
    assert register_dataset(TOY) == spec  # again from the same module (a reload): fine

    def mine_mlp(*, num_classes, conv):
        raise AssertionError("not built here")

    registry.register_model(dataset="mine", binary=False)(mine_mlp)
    assert registry.model_info("mine_mlp")["num_classes"] == 3 and registry.model_info("mine_mlp")["dataset"] == "mine"
    with pytest.raises(UsageError, match="has no default model; pass --model"):
        TrainConfig(dataset="mine").resolve()


@pytest.mark.parametrize("change, message", [
    (dict(name="digits"), "dataset name 'digits' is taken by the built-in data set 'digits'"),
    (dict(aliases=("fmnist",)), "dataset name 'fmnist' is taken by the built-in data set 'fashion-mnist'"),
    (dict(name="my_set"), r"lower case letters, digits and '-', starting with a letter, got 'my_set' \(as 'my-set'\)"),
    (dict(name="my set!"), "lower case letters, digits and '-'"),
    (dict(aliases=("ok", "No")), "aliases must be a tuple of names"),
    (dict(num_classes=0), "num_classes must be a positive integer, got 0"),
    (dict(num_classes=True), "num_classes must be a positive integer, got True"),
    (dict(input_size=(1, 8)), r"input_size must be 3 positive integers \(C, H, W\), got \(1, 8\)"),
    (dict(input_size=(1, 0, 8)), "input_size must be 3 positive integers"),
    (dict(mean=(0.5, 0.5)), r"mean must be 1 finite number\(s\), one per channel"),
    (dict(std=()), r"std must be 1 finite number\(s\)"),
    (dict(std=(0.0,)), "std must be positive"),
    (dict(scale=0), "scale .* must be a positive number"),
    (dict(test_size=-1), "test_size must be None or an integer >= 0"),
    (dict(test_resize=0), r"test_resize .* must be None or an integer >= 8, got 0"),  # (review data, suggestion)
    (dict(test_resize=7), r"test_resize .* must be None or an integer >= 8, got 7"),
    (dict(fits_in_memory="yes"), "fits_in_memory must be True or False"),
    (dict(loader="nocolon"), "loader must be a function or 'module:function'"),
    (dict(defaults={"epochz": 3}), r"defaults takes model, .*; got \['epochz'\]"),
    # the values a run would refuse, refused here naming the default, not later blamed on a flag never given
    (dict(defaults={"epochs": "5"}), r"^dataset 'mine': its default epochs must be int, got '5'$"),
    (dict(defaults={"lr": -1.0}), r"^dataset 'mine': its default lr must be a positive number, got -1.0$"),
    (dict(defaults={"batch_size": 0}), r"^dataset 'mine': its default batch_size must be a positive integer, got 0$"),
    (dict(defaults={"augment": "yes"}), r"^dataset 'mine': its default augment must be bool, got 'yes'$"),
    (dict(defaults={"eval_batch_size": 2.5}), "its default eval_batch_size must be int, got 2.5"),
    (dict(defaults={"model": 3}), "its default model must be str, got 3"),
    (dict(defaults={"weight_decay": float("nan")}), "its default weight_decay must be >= 0, got nan"),
    (dict(defaults={"epochs": 5, "warm_up": 5}), r"its default warm_up must be in \[0, epochs\), got 5 for 5 epochs"),
    (dict(defaults={"optimizer": "sgdd"}),
     "^dataset 'mine': its defaults: unknown optimizer 'sgdd'; did you mean 'sgd'\\? valid: sgd, "),
    (dict(defaults={"augment": True}, augments=False),  # (review mut7 #10)
     r"^dataset 'mine': defaults has augment=True but augments=False \(its loader has no augmentation\)$"),
])
def test_bad_specs_are_one_line_errors(isolated, change, message):
    with pytest.raises(ValueError, match=message) as err:
        register_dataset(dataclasses.replace(TOY, **change))
    assert "\n" not in str(err.value) and "mine" not in dataset_names()


def test_defaults_a_run_takes_are_registered(isolated):
    """What a run would take is not refused: a model not registered yet (a plugin registers it after its data set),
    Bop (whose estimator and scaling a run gives), no model at all."""
    for defaults in (dict(model="later_mlp", epochs=3, warm_up=2, lr=1), dict(optimizer="bop"), dict(augment=False)):
        assert register_dataset(dataclasses.replace(TOY, defaults=defaults)).defaults == {**datasets.GENERIC_RECIPE,
                                                                                          **defaults}


def test_a_name_or_alias_another_module_registered_is_refused(isolated):
    register_dataset(TOY)
    namespace = {"__name__": "othermod", "register_dataset": register_dataset, "TOY": TOY,
                 "replace": dataclasses.replace}
    with pytest.raises(ValueError, match="dataset 'mine' is already registered by .*test_datasets_plugin"):
        exec("register_dataset(TOY)", namespace)
    with pytest.raises(ValueError, match="dataset name 'mine8' is taken by the data set 'mine'"):
        exec("register_dataset(replace(TOY, name='yours'))", namespace)
    with pytest.raises(ValueError, match="takes a reste.datasets.DatasetSpec"):
        register_dataset({"name": "x"})


def test_bad_plugin_specs_are_one_line_on_the_command_line(isolated, tmp_path, capsys):
    bad = tmp_path / "badset.py"
    bad.write_text(PLUGIN.replace("num_classes=3,", "num_classes=0,"))
    line = one_line_error(capsys, "train", "--plugin", str(bad), "--dataset", "toyset", "--threads", "1")
    assert "failed to load: ValueError: dataset 'toyset': num_classes must be a positive integer, got 0" in line
    line = one_line_error(capsys, "train", "--dataset", "nosuch", "--threads", "1", "--out", str(tmp_path / "r"))
    assert "unknown dataset 'nosuch'" in line and "--plugin MODULE" in line


@pytest.mark.parametrize("returned, said", [
    ("_split(240, 0), _split(90, 1)", "returned a tuple of 2; it must return (train, test, DatasetInfo)"),
    ("None", "returned NoneType; it must return"),
    ("None, None, None", "returned a NoneType as its third item, not a reste.data.DatasetInfo"),
    ("None, *from_tensors('toyset', None, _split(90, 1))[1:]", "returned no train set (None)"),
])
def test_a_loader_that_returns_another_thing_is_one_line_naming_it(isolated, tmp_path, capsys, returned, said):
    """(review extend #5) "not enough values to unpack" with exit status 1, naming neither the data set nor its
    loader."""
    bad = tmp_path / "badload.py"
    bad.write_text(PLUGIN.replace('return from_tensors("toyset", _split(240, 0) if train else None, _split(90, 1), '
                                  'classes=("a", "b", "c"))', f"return {returned}"))
    assert f"return {returned}" in bad.read_text()
    line = one_line_error(capsys, "train", "--plugin", str(bad), "--dataset", "toyset", "--threads", "1",
                          "--out", str(tmp_path / "r"))
    assert f"data set 'toyset': its loader reste_plugin_badload.load {said}" in line


def test_a_loader_that_cannot_be_imported_is_one_line_naming_it(isolated, tmp_path, capsys):
    bad = tmp_path / "badimport.py"
    bad.write_text(PLUGIN.replace("loader=load", 'loader="nosuchmodule_xyz:load"'))
    line = one_line_error(capsys, "train", "--plugin", str(bad), "--dataset", "toyset", "--threads", "1",
                          "--out", str(tmp_path / "r2"))
    assert "its loader nosuchmodule_xyz:load cannot be imported (No module named 'nosuchmodule_xyz')" in line


def test_a_plugin_files_loader_named_by_its_own_module_is_the_file_loaded(isolated, tmp_path, capsys, monkeypatch):
    """(review extend #13) `loader="toyself:load"` in toyself.py, given as `--plugin toyself.py`: from its folder the
    second import clashed with the first ("already registered by reste_plugin_toyself"), from another folder it was
    not found. And the same file given twice, as a file and as a module, is one plugin."""
    import sys

    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "toyself.py").write_text(PLUGIN.replace("loader=load", 'loader="toyself:load"'))
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        for cwd, plugin in ((tmp_path, "code/toyself.py"), (folder, "toyself.py")):
            monkeypatch.chdir(cwd)
            out = tmp_path / f"run-{cwd.name}"
            assert main(["train", "--plugin", plugin, "--dataset", "toyset", "--epochs", "1", "--threads", "1",
                         "--no-progress", "--out", str(out)]) == 0
            assert len(_metrics(out)) == 1
        capsys.readouterr()
        assert main(["train", "--plugin", "toyself.py", "--plugin", "toyself", "--dataset", "toyset",
                     "--print-config"]) == 0
        assert "registered no" not in capsys.readouterr().err
    finally:
        sys.modules.pop("toyself", None)


def test_a_sweep_of_a_plugin_set_without_a_default_model_is_the_one_line_error(isolated, tmp_path, capsys):
    nomodel = tmp_path / "nomodel.py"
    nomodel.write_text(PLUGIN.replace('model="toy_mlp_1w1a", ', ""))
    line = one_line_error(capsys, "sweep", "--plugin", str(nomodel), "--dataset", "toyset", "--grid", "lr=0.01,0.02",
                          "--threads", "1", "--out", str(tmp_path / "sw"))
    assert "dataset 'toyset' has no default model; pass --model" in line
    assert not (tmp_path / "sw").exists()


def test_train_eval_export_predict_summary_with_a_plugin_set(isolated, plugin_file, tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(["train", "--help", "--plugin", str(plugin_file)])
    assert "imagenet, toyset" in " ".join(capsys.readouterr().out.split())  # --dataset's help lists it
    assert main(["train", "--plugin", str(plugin_file), "--dataset", "toy", "--threads", "1", "--no-progress",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["dataset"] == "toyset" and saved["model"] == "toy_mlp_1w1a" and saved["epochs"] == 2  # its recipe
    assert saved["plugins"] == [str(plugin_file)] and saved["lr"] == 0.01 and saved["optimizer"] == "adam"
    assert [m["epoch"] for m in _metrics(run)] == [1, 2] and _metrics(run)[-1]["test_acc"] > 60  # chance: 33%
    capsys.readouterr()
    assert main(["eval", str(run), "--plugin", str(plugin_file), "--device", "cpu"]) == 0
    assert "toy_mlp_1w1a on toyset test" in capsys.readouterr().out
    out = tmp_path / "m.rbnn"
    assert main(["export", str(run), str(out), "--plugin", str(plugin_file)]) == 0 and out.is_file()
    capsys.readouterr()
    assert main(["predict", str(out), "--plugin", str(plugin_file), "--threads", "1"]) == 0
    assert "on toyset test: top-1" in capsys.readouterr().out
    with pytest.MonkeyPatch.context() as m:  # (review newuser5) without its plugin: the export's name, and the flag
        m.setattr(datasets, "_REGISTERED", {k: v for k, v in datasets._REGISTERED.items() if k != "toyset"})
        assert main(["predict", str(out), "--threads", "1"]) == 2
        assert capsys.readouterr().err.strip() == (
            "reste: error: the export names the data set 'toyset', which is not registered here: pass the --plugin "
            "that registers it (as its training did), or --dataset NAME")
    assert main(["summary", "toy_mlp_1w1a", "--plugin", str(plugin_file)]) == 0
    assert main(["summary", "--list", "--plugin", str(plugin_file)]) == 0
    assert "toy_mlp_1w1a                 toyset" in capsys.readouterr().out


def test_a_python_caller_s_set_is_recorded_too(isolated, plugin_file):
    module = plugins.load_plugin(str(plugin_file))
    config = as_recorded(TrainConfig(dataset="toyset", model="toy_mlp_1w1a", estimator="ste").resolve())
    assert config.plugins == [str(plugin_file)] and datasets.defined_in("toyset") == module.__name__


def test_resume_asks_for_the_recorded_plugin_and_a_sweep_takes_it(isolated, plugin_file, tmp_path, capsys, command):
    cwd = plugin_file.parent
    r = command("train", "--plugin", "toyset", "--dataset", "toyset", "--epochs", "1", "--threads", "1",
                "--no-progress", "--out", "run", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert json.loads((cwd / "run" / "config.json").read_text())["plugins"] == ["toyset"]
    r = command("eval", "run", cwd=cwd)  # eval loads no plugin by itself: it names the one the run recorded
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "unknown dataset 'toyset'" in r.stderr and "the run trained with --plugin toyset: pass the same" in r.stderr
    r = command("train", "--resume", "run", "--epochs", "2", "--force", "--no-progress", cwd=cwd)
    assert r.returncode == 2 and "a resume imports only when given again" in r.stderr, r.stderr  # the current folder's
    r = command("train", "--resume", "run", "--epochs", "2", "--force", "--plugin", "toyset", "--no-progress", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in _metrics(cwd / "run")] == [1, 2]

    assert main(["sweep", "--plugin", str(plugin_file), "--dataset", "toyset", "--grid", "estimator=ste,reste",
                 "--epochs", "1", "--threads", "1", "--no-progress", "--no-report", "--out", str(tmp_path / "sw")]) \
        == 0, capsys.readouterr().err
    configs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sw" / "runs").glob("*/*/config.json"))]
    assert sorted(c["estimator"] for c in configs) == ["reste", "ste"]
    assert all(c["dataset"] == "toyset" and c["plugins"] == [str(plugin_file)] for c in configs)


FILE_SET = '''
import torch
from torch.utils.data import Dataset
from reste.data.sets import DatasetInfo
from reste.datasets import DatasetSpec, register_dataset


class Ramp(Dataset):  # read item by item, as files are: DataLoader workers get it
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 4, 4), float(i)), i % 3


def load(data_path, download, augment, in_memory, train):
    return (Ramp(12) if train else None), Ramp(6), DatasetInfo("ramp", 3, (1, 4, 4), 12 if train else None, 6)


register_dataset(DatasetSpec(name="ramp", aliases=(), num_classes=3, input_size=(1, 4, 4), mean=(0.0,), std=(1.0,),
                             scale=1.0, train_size=12, test_size=6, fits_in_memory=False, loader=load,
                             augments=False, reads_files=False))
'''


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_worker_processes_started_by_spawn_read_a_plugin_file_s_data_set(tmp_path, method):
    """(review portable #1) macOS and Windows start DataLoader workers by spawn (Linux by forkserver from Python
    3.14): each unpickled the data set, whose class lives in the module reste named the plugin file
    (reste_plugin_NAME), and died with "No module named 'reste_plugin_ramp'". (One worker a loader: every worker
    unpickles the data set alike, and each is a process importing torch, seconds.)"""
    (tmp_path / "ramp.py").write_text(FILE_SET)
    script = textwrap.dedent(f'''
        import multiprocessing
        if __name__ == "__main__":
            multiprocessing.set_start_method({method!r}, force=True)
            from reste.data import load_datasets, make_loaders
            from reste.plugins import load_plugin
            load_plugin({str(tmp_path / "ramp.py")!r})
            train, test, _ = load_datasets("ramp", None)
            loaders = make_loaders(train, test, batch_size=4, eval_batch_size=4, workers=1)
            for loader in loaders:
                loader.set_epoch(1)
                print(sorted(int(x[0, 0, 0]) for images, _ in loader for x in images))
    ''')
    (tmp_path / "run.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(reste.__file__).parents[1]),
                                                                    os.environ.get("PYTHONPATH")] if p)}
    done = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == [str(list(range(12))), str(list(range(6)))]


def test_a_data_set_of_five_classes_or_fewer_has_no_top5():
    """(review imgdist, suggestion) top-5 of 3 classes is every image: the epoch lines, eval and show printed
    "top5 100.00" for it. Now none: null in metrics.jsonl and eval's JSON, left out of the lines."""
    from reste import engine

    class Three(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3]

    loader = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]))]
    result = engine.evaluate(Three(), loader, torch.device("cpu"))
    assert result["top5"] is None and 0 <= result["top1"] <= 100
    line = engine.format_epoch({"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 50.0, "test_loss": 1.0,
                                "test_acc": 50.0, "test_top5": None, "time": 0.5}, 2)
    assert "test loss 1.0000 acc 50.00  (0.5s)" in line and "top5" not in line


def test_from_tensors_refuses_an_augmentation_it_would_not_do():
    """(review datafid, suggestion) augment=True with pad=0 gave no augmentation at all, not even the flip."""
    from reste.data import from_tensors

    split = (np.zeros((2, 1, 8, 8), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(UsageError, match="augment=True crops with padding pad and flips; pass pad > 0"):
        from_tensors("digits", split, split, augment=True)
    assert from_tensors("digits", None, split, augment=True)[1] is not None  # (rev15 #11) the test split alone: eval


def test_the_data_device_help_names_the_sets_held_in_memory_as_their_specs_say(isolated, plugin_file, capsys):
    """(review maint1) --data-device's help named "digits, Fashion-MNIST and CIFAR-10", written out beside the specs'
    fits_in_memory: a registered set held in memory (or a new built-in) was left out of it."""
    with pytest.raises(SystemExit):
        main(["train", "--help", "--plugin", str(plugin_file)])
    text = " ".join(capsys.readouterr().out.split())
    held = [n for n in dataset_names() if get_spec(n).fits_in_memory]
    assert "toyset" in held and "imagenet" not in held
    assert f"where {', '.join(held[:-1])} and {held[-1]} live, as uint8" in text
