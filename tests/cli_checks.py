"""What the tests of the command line share: a refusal is one line on stderr and exit status 2; a command run in
this process as if it were a new one."""

from __future__ import annotations

import subprocess

from reste.cli import main


def one_line_error(capsys, *argv: str) -> str:
    """Run ``reste ARGV`` in this process; assert it refused in one ``reste: error:`` line (exit status 2) and
    return that line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("reste: error: "), err
    return lines[0]


def run_as_new_process(capsys, *argv: str, cwd) -> subprocess.CompletedProcess:
    """Run ``reste ARGV`` in this process, started in ``cwd``, as a new process would meet it, and return its exit
    status and output as ``subprocess.run`` would. What one command loads is undone before the next: the registries
    of estimators, models and data sets, the plugins loaded and the modules of the user's own files they imported,
    and the command's changes to sys.path, the working folder and torch's thread count. A second command therefore
    does not find the first's plugin, as in a new process, and no test pays the seconds a new process takes to
    import torch."""
    import os
    import sys
    import warnings

    import torch

    from reste import datasets, estimators, plugins
    from reste.errors import one_line_warnings
    from reste.models import registry

    tables = [(estimators, "_REGISTRY"), (datasets, "_REGISTERED"), (datasets, "_DEFINED_IN"), (registry, "_MODELS"),
              (registry, "_INFO"), (registry, "_BINARY"), (plugins, "_loaded")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in tables]
    modules, path, here, threads = set(sys.modules), list(sys.path), os.getcwd(), torch.get_num_threads()
    ours = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(
        estimators.__file__)))]
    capsys.readouterr()
    for owner, name, table in saved:
        setattr(owner, name, dict(table))
    os.chdir(cwd)
    torch.set_num_threads(1)  # as the tests' subprocesses run (OMP_NUM_THREADS=1), unless --threads says otherwise
    try:
        with warnings.catch_warnings():  # (its entry resets the warnings already shown once)
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
        for owner, name, table in saved:
            setattr(owner, name, table)
        for name in set(sys.modules) - modules:  # the user's files: a plugin, and whatever it imported of theirs
            file = getattr(sys.modules[name], "__file__", None)
            if name.startswith("reste_plugin_") or (
                    file and not any(os.path.realpath(file).startswith(root + os.sep) for root in ours)):
                del sys.modules[name]
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["reste", *argv], code, out.out, out.err)
