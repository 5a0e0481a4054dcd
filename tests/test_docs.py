"""The documents stay true to the code: every ``reste`` command in a bash block of the README and
docs/ parses with the CLI as it is, and every script or document they name exists."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import reste
from reste.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]


def _commands(path: Path) -> list[str]:
    """The ``reste ...`` lines of the file's bash blocks, continuation lines joined, comments and
    leading VAR=value assignments dropped; lines that use shell variables are left out."""
    found = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if not re.match(r"\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*reste\s", line):
                continue
            words = shlex.split(line, comments=True)
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                words = words[1:]
            if words and words[0] == "reste" and "$" not in line:
                found.append(shlex.join(words))
    return found


COMMANDS = [(p.relative_to(ROOT).as_posix(), c) for p in DOCS for c in _commands(p)]


def test_the_documents_have_commands_to_check():
    assert len(COMMANDS) >= 10 and any(f == "README.md" for f, _ in COMMANDS)


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{f}:{c[:60]}" for f, c in COMMANDS])
def test_each_documented_command_parses(where, command):
    args = build_parser().parse_args(shlex.split(command)[1:])  # a UsageError names the bad flag
    assert getattr(args, "func", None) is not None, f"{where}: `{command}` names no sub-command"


def test_the_scripts_and_documents_the_readme_names_exist():
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(?<![\w/.])((?:docs|benchmarks|examples|tests)/[\w./-]*\.(?:py|sh|md))", text))
    assert named, "the README names no script"
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"the README names files that do not exist: {missing}"


def test_the_repository_tracks_no_archive_or_build_output():
    """A package archive, wheel or compiled object committed by mistake (one was, and lay unread for two days)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked source distribution)")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("git cannot list this checkout's files")
    stray = re.compile(r"\.(?:tar(?:\.\w+)?|tgz|zip|whl|egg|so|o|dll|dylib|pyd|pyc)$|(?:^|/)(?:build|dist)/")
    found = [f for f in listed.stdout.decode().split("\0") if f and stray.search(f)]
    assert not found, f"tracked files that are downloads or build outputs: {found} (git rm them)"


@pytest.mark.parametrize("where", ["reste.hparams", "reste.datasets", "reste.models", "reste.estimators:get_estimator"])
def test_the_docstring_examples_that_show_an_output_give_it(where):
    """(review docs5, suggestion 4) The >>> examples that print a value (the others need a model or files)."""
    import doctest
    import importlib

    module, _, name = where.partition(":")
    owner = importlib.import_module(module)
    obj = getattr(owner, name) if name else owner
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)  # (in a copy of the module's names, as doctest does)
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(obj, module=owner) if t.examples]
    assert tests, f"{where} has no >>> example"
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_relative_links_in_the_documents_resolve():
    broken = []
    for doc in DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)  # a code block holds no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor in the same page
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, "links to files that do not exist: " + ", ".join(broken)


def test_the_readme_table_of_defaults_per_data_set_is_the_specs():
    """Each row of the README's "Defaults per data set" table says what the data set's spec sets."""
    from reste.config import TrainConfig
    from reste.datasets import SPECS

    text = (ROOT / "README.md").read_text()
    rows = {}
    for line in text.split("| data set | model | epochs |", 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    assert set(rows) == set(SPECS)
    for name, (_, model, epochs, batch, eval_batch, recipe, warm_up, augmentation) in rows.items():
        c = TrainConfig(dataset=name).resolve()
        optimizer, lr, weight_decay = (x.strip() for x in recipe.split(","))
        assert (model, int(epochs), int(batch), int(eval_batch), int(warm_up)) == (
            c.model, c.epochs, c.batch_size, c.eval_batch_size, c.warm_up), name
        assert (optimizer.lower(), float(lr), float(weight_decay)) == (c.optimizer, c.lr, c.weight_decay), name
        assert (augmentation != "none") == c.augment, name


def _option_strings() -> set[str]:
    """Every option string of every ``reste`` command (and the top-level parser)."""
    import argparse

    found, todo = set(), [build_parser()]
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            found.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return found


# flags of other tools that the README names: pip, pytest, torchrun, SLURM, TensorBoard (a reste flag of the same
# name would pass unchecked)
_OTHER_TOOLS = {"--system-site-packages", "--nproc_per_node", "--nproc-per-node", "--nnodes", "--node_rank",
                "--master_addr", "--master_port", "--rdzv_backend", "--rdzv_endpoint", "--rdzv-backend",
                "--rdzv-endpoint", "--max-restarts", "--requeue", "--signal", "--standalone", "--gres",
                "--ntasks-per-node", "--cpus-per-task", "--index-url", "--extra-index-url", "--no-build-isolation",
                "--durations", "--co", "--collect-only", "--user", "--help", "--master-addr", "--master-port",
                "--node-rank", "--logdir",
                "--my-flag"}  # the README's own plugin example


def _script_flags() -> set[str]:
    """The flags the repository's scripts (benchmarks, docs/results) define."""
    found = set()
    for path in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "docs").rglob("*.py")]:
        found.update(re.findall(r"add_argument\(\s*[\"'](--[a-z][a-z0-9_-]*)", path.read_text()))
    return found


def test_every_flag_the_readme_names_is_one_of_restes_or_another_tools():
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(?<![\w-])(--[a-z](?:[a-z0-9_-]*[a-z0-9])?)(?![\w-])", text))
    unknown = sorted(named - _option_strings() - _script_flags() - _OTHER_TOOLS)
    assert not unknown, f"the README names flags no reste command has: {unknown}"


def test_every_reste_environment_variable_is_in_the_readme():
    """A ``RESTE_*`` setting read from the environment in src/ is documented (C macros are not settings)."""
    read = set()
    for path in (ROOT / "src" / "reste").rglob("*.py"):  # a whole quoted name: the -DRESTE_... of a build are not
        read.update(re.findall(r"[\"'](RESTE_[A-Z0-9_]+)[\"']", path.read_text()))
    assert {"RESTE_FUSED", "RESTE_CUDA_EXT", "RESTE_PACKED_ISA"} <= read  # the pattern finds them
    text = (ROOT / "README.md").read_text()
    missing = sorted(name for name in read if name not in text)
    assert not missing, f"environment variables the README does not name: {missing}"


def test_only_the_entry_points_that_start_training_import_the_engine():
    """docs/ARCHITECTURE.md: everything after training reads the run directory, not the engine."""
    pattern = re.compile(r"from (?:\.+|reste\.)engine import|from (?:\.+|reste) import [\w, ]*\bengine\b"
                         r"|import reste\.engine")
    importers = sorted(p.relative_to(ROOT / "src" / "reste").as_posix()
                       for p in (ROOT / "src" / "reste").rglob("*.py")
                       if p.name != "engine.py" and pattern.search(p.read_text()))
    assert importers == ["cli.py", "experiments/sweep.py"], importers


def _table(heading_row: str) -> list[list[str]]:
    """The body rows of the README table whose header row starts with ``heading_row``, as lists of cells."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_row))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _as_written(x: float) -> str:
    """A number as the README writes it: 0.1, 1.5; 1e-3 and 1e-8 for the small ones."""
    return f"{x:g}" if abs(x) >= 0.01 else f"{x:.0e}".replace("e-0", "e-")


def test_the_readme_flag_tables_defaults_are_their_owners():
    """(review arch3 #2) the flag table's default cells and the prose beside them copy the owners' values (ReSTE's
    hyper-parameters, the bare --warm-up, each optimizer's lr, SGD's momentum, Bop's gamma and threshold): a change
    of an owner left them stale, with every test passing."""
    from reste import optim
    from reste.config import BARE_WARM_UP, OPTIMIZER_LR, TrainConfig
    from reste.estimators import estimator_class

    rows = {row[0]: row for row in _table("| flag |")}
    reste_defaults = {p.name: p.default for p in estimator_class("reste").hyperparameters}
    assert rows["`--o --o-end --t --interval --o-schedule`"][2] == ", ".join(
        _as_written(reste_defaults[k]) if k != "schedule" else reste_defaults[k]
        for k in ("o", "o_end", "t", "interval", "schedule"))
    lr = OPTIMIZER_LR
    assert lr["adam"] == lr["adamw"] == lr["bop"]
    assert (f"`--warm-up` alone: {int(BARE_WARM_UP)} epochs; an `--optimizer` other than the recipe's takes its own "
            f"usual `--lr`: SGD {_as_written(lr['sgd'])}, Adam, AdamW and bop's Adam {_as_written(lr['adam'])}"
            ) in rows["`--epochs --batch-size --eval-batch-size --lr --warm-up`"][1]
    momentum = _as_written(TrainConfig.momentum)
    assert rows["`--optimizer --weight-decay --momentum`"][2] == f"per data set, per data set, {momentum}"
    bop = _as_written(optim.DEFAULT_GAMMA), _as_written(optim.DEFAULT_THRESHOLD)
    assert rows["`--bop-gamma --bop-threshold`"][2] == ", ".join(bop)
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"abs(x) <= t = {_as_written(reste_defaults['t'])}" in text
    assert f"SGD with momentum {momentum} where the table says SGD" in text
    assert f"The defaults (gamma {bop[0]}, threshold {bop[1]}) are" in text


def test_the_readme_preset_table_is_the_presets():
    from reste.config import PRESETS

    seen = set()
    for name, model, a, epochs, batch, published in _table("| preset | model | A |"):
        stem, _, group = name.partition("{")
        names = [stem + part for part in group.rstrip("}").split(",")] if group else [name]
        tops = [t.strip() for t in re.sub(r"\([^)]*\)", "", published).split(",")]
        fives = re.findall(r"\(([\d.]+)\)", published) or [None] * len(names)
        assert len(tops) == len(names), name
        for preset_name, top1, top5 in zip(names, tops, fives):
            preset = PRESETS[preset_name]
            s = preset.settings
            assert model.split(",")[0] == s["model"], preset_name
            if "o_end" in model:
                assert f"o_end {s['estimator_options']['o_end']:g}" in model, preset_name
            assert int(a) == (32 if s.get("a32") else 1), preset_name
            assert (int(epochs), int(batch)) == (s["epochs"], s["batch_size"]), preset_name
            assert float(top1) == preset.top1, preset_name
            assert (float(top5) if top5 else None) == preset.top5, preset_name
            seen.add(preset_name)
    assert seen == set(PRESETS), sorted(set(PRESETS) - seen)


def test_the_readme_estimator_table_gives_the_defaults_and_the_end_values():
    """Each row's defaults and schedule ends are the estimator's ``Param`` defaults, and the values at the last
    epoch of a 1000-epoch run are those the text under the table names."""
    from reste.estimators import estimator_class, get_estimator

    rows = {name.strip("`"): (g, schedule) for name, _, g, schedule in _table("| name | paper | g(x)")}
    assert set(rows) == {"ste", "reste", "approx_sign", "sign_swish", "ede", "rbnn", "dsq", "fda"}

    def default(est: str, param: str) -> float:
        return next(p.default for p in estimator_class(est).hyperparameters if p.name == param)

    assert f"clip ({default('ste', 'clip'):g})" in rows["ste"][0]
    assert f"b = {default('sign_swish', 'beta'):g}" in rows["sign_swish"][0]
    assert f"o: {default('reste', 'o'):g} -> o_end ({default('reste', 'schedule')})" in rows["reste"][1]
    for est in ("ede", "rbnn"):
        assert rows[est][1].startswith(f"t: {default(est, 't_min'):g} -> {default(est, 't_max'):g} (geometric)")
    assert rows["dsq"][1].startswith(f"alpha: {default('dsq', 'alpha'):g} -> {default('dsq', 'alpha_end'):g} "
                                     f"({default('dsq', 'schedule')}")
    assert rows["fda"][1].startswith(f"n: {default('fda', 'n'):g} -> {default('fda', 'n_end'):g}")
    assert f"w = {default('fda', 'w'):g}" in rows["fda"][0]
    text = " ".join((ROOT / "README.md").read_text().split())
    reste, fda = get_estimator("reste"), get_estimator("fda")
    reste.set_progress(999, 1000), fda.set_progress(999, 1000)
    o, n = reste.schedule_values()["o"], fda.schedule_values()["n"]
    assert f"ReSTE's o at {o:.5f} of {default('reste', 'o_end'):g} in a 1000-epoch run" in text, o
    assert f"at {n:g} of {default('fda', 'n_end'):g}" in text, n


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


# a block that cannot run by itself, and why (every other block must run as it stands)
NOT_RUN: dict[str, str] = {}
OPTIONAL = ("lightning", "tensorboard", "timm")  # a block that imports one of them runs when it is installed


# A process that has imported torch (and nothing of reste) under the blocks' warning filter, and forks one child a
# block: each child runs its block as `python -W error::UserWarning -c BLOCK` would, in a fresh __main__ with the
# block's folder as its working folder and first on sys.path, its output in files, and exits with the status such a
# process would. Thirteen blocks paid thirteen imports of torch, a second or two each; the block itself still
# imports reste and everything it names (a block that forgot an import still fails: its __main__ is empty).
_BLOCK_RUNNER = r"""
import atexit, importlib, json, os, signal, sys, threading, traceback, types
import torch  # (imported under -W error::UserWarning: a warning of its import still fails, as in each block's run)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.alarm(600)  # (the timeout of each block's run)
        out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1), os.dup2(err, 2), os.close(out), os.close(err)
        os.chdir(job["cwd"])
        sys.path.insert(sys.path.index(job["src"]) + 1, job["cwd"])  # (as its PYTHONPATH had it)
        sys.path_importer_cache.clear(), importlib.invalidate_caches()
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        code = 0
        try:
            exec(compile(job["block"], "<string>", "exec"), main.__dict__)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # (what Python's exit does: its threads, then its atexit functions)
        atexit._run_exitfuncs()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    print(json.dumps(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])), flush=True)
"""


@pytest.fixture(scope="module")
def run_block():
    """``run_block(block, folder)``: the exit status and stderr of ``block`` run as ``python -W
    error::UserWarning -c BLOCK`` in ``folder`` (with it on PYTHONPATH) would give them (:data:`_BLOCK_RUNNER`)."""
    src = str(Path(reste.__file__).parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if not hasattr(os, "fork"):  # (Windows) a process a block, as the blocks ran before
        def run_alone(block: str, folder: Path) -> tuple[int, str]:
            path = os.pathsep.join([src, str(folder), env["PYTHONPATH"]])
            done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", block], cwd=folder,
                                  capture_output=True, text=True, timeout=600, env={**env, "PYTHONPATH": path})
            return done.returncode, done.stderr

        yield run_alone
        return
    runner = subprocess.Popen([sys.executable, "-W", "error::UserWarning", "-c", _BLOCK_RUNNER], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(block: str, folder: Path) -> tuple[int, str]:
        err = folder.parent / f"{folder.name}.stderr"
        runner.stdin.write(json.dumps({"block": block, "cwd": str(folder), "src": src, "stderr": str(err),
                                       "stdout": str(folder.parent / f"{folder.name}.stdout")}) + "\n")
        runner.stdin.flush()
        status = runner.stdout.readline()
        assert status, f"the block runner died: {runner.stderr.read()[-3000:]}"
        return json.loads(status), err.read_text()

    try:
        yield run
    finally:
        runner.stdin.close()
        runner.wait(timeout=60)


@pytest.mark.parametrize("block", _python_blocks(), ids=lambda b: b.splitlines()[0][:50])
def test_each_readme_python_block_runs_on_a_cpu_without_downloads(block, tmp_path, run_block):
    for start, why in NOT_RUN.items():
        if block.startswith(start):
            pytest.skip(why)
    for package in OPTIONAL:
        if re.search(rf"^\s*(?:import|from) {package}\b", block, re.M) and importlib.util.find_spec(package) is None:
            pytest.skip(f"needs the optional package {package}")
    folder = tmp_path / "block"  # (its output files beside it, not in it)
    folder.mkdir()
    name = re.match(r"# (\w+)\.py\n", block)  # a plugin module (`# myest.py`): written as a file, then imported
    if name:
        (folder / f"{name[1]}.py").write_text(block)
        block = f"import {name[1]}\n"
    code, stderr = run_block(block, folder)
    assert code == 0, f"this README block fails:\n{block}\n{stderr[-3000:]}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_contents_and_other_in_page_links_name_headings():
    text = (ROOT / "README.md").read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", prose, re.M)}
    links = re.findall(r"\]\(#([^)\s]+)\)", prose)
    assert "python-api" in links and "command-line" in links, "the README has no table of contents"
    assert not sorted(set(links) - anchors), f"links to headings the README lacks: {sorted(set(links) - anchors)}"


def test_the_readme_example_run_prints_lines_of_the_engines_format():
    """The sample under "What `reste train` prints": its done line is what ``format_result`` writes for its numbers,
    and each epoch line what ``format_epoch`` writes."""
    from reste import engine

    text = (ROOT / "README.md").read_text()
    block = text.split("## What `reste train` prints", 1)[1].split("```\n", 2)[1]
    done = next(line for line in block.splitlines() if line.startswith("done: "))
    m = re.match(r"done: best test acc ([\d.]+)% \(epoch (\d+), top-5 ([\d.]+)%\), final test acc ([\d.]+)% after "
                 r"(\d+) epochs, (\d+)s -> (\S+)$", done)
    assert m, done
    best, epoch, top5, final, epochs, seconds, run_dir = m.groups()
    assert engine.format_result({"best_acc": float(best), "best_epoch": int(epoch), "best_top5": float(top5),
                                 "final_acc": float(final), "epochs": int(epochs), "seconds": float(seconds),
                                 "run_dir": run_dir}) == done
    for line in block.splitlines():
        e = re.match(r"epoch +(\d+)/(\d+)  lr (\S+)  o (\S+)  train loss (\S+) acc (\S+)  test loss (\S+) acc (\S+) "
                     r"top5 (\S+)  \((\S+)s\)$", line)
        if line.startswith("epoch"):
            assert e, line
            n, total, lr, o, tl, ta, vl, va, v5, t = e.groups()
            metrics = {"epoch": int(n), "lr": float(lr), "o": float(o), "train_loss": float(tl),
                       "train_acc": float(ta), "test_loss": float(vl), "test_acc": float(va), "test_top5": float(v5),
                       "time": float(t)}
            assert engine.format_epoch(metrics, int(total)) == line


def test_every_reste_dotted_name_the_readme_writes_resolves_after_a_bare_import_reste():
    """(review docs5 #2) the README writes ``reste.fused.set_enabled(False)``, ``reste.cuda_ext.toolkit_hint()``,
    ``reste.plugins.load_plugins([...])``, ``reste.syncbn.ProcessGroupBatchNorm.convert(model)``: each must work
    after ``import reste`` alone, in a fresh process (the package's lazy names), not only once some other
    import happened to load the module."""
    text = (ROOT / "README.md").read_text()
    names = sorted({n for n in re.findall(r"`(reste(?:\.[A-Za-z_]\w*)+)", text)
                    if not n.startswith("reste.integrations.")})  # integrations import their framework: by hand
    assert "reste.fused.set_enabled" in names
    # a module's dir() is taken when it is first reached, before a later name's import can load a sub-module as a
    # side effect (reste.convert loads reste.fused, so reste.fused would then pass by luck)
    script = ("import types, reste\n"
              "seen, bad = {}, []\n"
              "def names_of(module):\n"
              "    return seen.setdefault(module.__name__, set(dir(module)))\n"
              "names_of(reste)\n"
              f"for name in {names!r}:\n"
              "    obj = reste\n"
              "    for part in name.split('.')[1:]:\n"
              "        if isinstance(obj, types.ModuleType) and part not in names_of(obj):\n"
              "            bad.append(f'{name}: {obj.__name__} has no {part!r} after `import {obj.__name__}`')\n"
              "            break\n"
              "        obj = getattr(obj, part)\n"
              "print('\\n'.join(bad))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(reste.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not done.stdout.strip(), "after `import reste` alone these README names fail:\n" + done.stdout
