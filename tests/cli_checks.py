"""What the tests of the command line share: a refusal is one line on stderr and exit status 2; a command run in
this process as if it were a new one."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from typing import Iterator

from reste.cli import main


def one_line_error(capsys, *argv: str) -> str:
    """Run ``reste ARGV`` in this process; assert it refused in one ``reste: error:`` line (exit status 2) and
    return that line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("reste: error: "), err
    return lines[0]


@contextlib.contextmanager
def registries_kept() -> Iterator[None]:
    """The registries of estimators, models and data sets and the plugins loaded as they were before the block;
    the modules of the user's own files imported in it (plugins, and what they import of theirs) are forgotten
    after it."""
    from reste import datasets, estimators, plugins
    from reste.models import registry

    tables = [(estimators, "_REGISTRY"), (datasets, "_REGISTERED"), (datasets, "_DEFINED_IN"), (registry, "_MODELS"),
              (registry, "_INFO"), (registry, "_BINARY"), (plugins, "_loaded"), (plugins, "_digests")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in tables]
    modules = set(sys.modules)
    ours = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(
        estimators.__file__)), os.path.dirname(__file__))]  # (Python's, the packages', reste's, the tests')
    for owner, name, table in saved:
        setattr(owner, name, dict(table))
    try:
        yield
    finally:
        for owner, name, table in saved:
            setattr(owner, name, table)
        for name in set(sys.modules) - modules:
            file = getattr(sys.modules[name], "__file__", None)
            if name.startswith("reste_plugin_") or (
                    file and not any(os.path.realpath(file).startswith(root + os.sep) for root in ours)):
                del sys.modules[name]


def run_as_new_process(capsys, *argv: str, cwd) -> subprocess.CompletedProcess:
    """Run ``reste ARGV`` in this process, started in ``cwd``, as a new process would meet it, and return its exit
    status and output as ``subprocess.run`` would. What one command loads is undone before the next
    (:func:`registries_kept`), and so are its changes to sys.path, the working folder and torch's thread count. A
    second command therefore does not find the first's plugin, as in a new process, and no test pays the seconds a
    new process takes to import torch."""
    import torch

    from reste.errors import one_line_warnings

    path, here, threads = list(sys.path), os.getcwd(), torch.get_num_threads()
    capsys.readouterr()
    os.chdir(cwd)
    torch.set_num_threads(1)  # as the tests' subprocesses run (OMP_NUM_THREADS=1), unless --threads says otherwise
    try:
        with registries_kept(), warnings.catch_warnings():  # (its entry resets the warnings already shown once)
            warnings.resetwarnings()  # Python's filters, not the tests', and the command's one-line warnings
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            if "--debug" not in argv:
                one_line_warnings()
            try:
                code = main(list(argv))
            except SystemExit as stop:  # (--help)
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(here)
        sys.path[:] = path
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["reste", *argv], code, out.out, out.err)
