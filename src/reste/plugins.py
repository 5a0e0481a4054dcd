"""Plugins: the modules that register estimators (or models) of your own.

A plugin is an ordinary module whose import registers estimators
(``@reste.register_estimator``) or models (``@reste.models.register_model``). Two ways to
load one:

* an installed distribution names it in the ``reste.estimators`` entry-point group
  (``[project.entry-points."reste.estimators"] myest = "mypackage.myest"``); the group
  is loaded lazily, once, the first time the registry is listed or misses a name;
* ``--plugin MODULE`` on ``reste train``, ``sweep``, ``eval`` and ``export``: a module
  name importable from ``sys.path`` or the current folder, or a path to a ``.py``
  file. A run saves its plugins in ``config.json`` (``TrainConfig.plugins``), so
  ``--resume`` loads them again where they are installed modules; a ``.py`` file, a module of
  the current folder, or code inside the run folder is given again with ``--plugin``, so that
  a run folder from elsewhere cannot run code by being resumed (:func:`loads_on_resume`).

A plugin that cannot be loaded is a ``UsageError``: one line, exit status 2. An installed entry point that
fails to import is a warning: the other estimators work, and an unknown name's error notes the failure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import stat
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, NoReturn, Sequence

from .errors import UsageError, parse_json, shell_word
from .runfiles import CONFIG

GROUP = "reste.estimators"

_entry_points_loaded = False
_FILE_PREFIX = "reste_plugin_"  # the module name of a plugin loaded from a file
_loaded: dict[str, ModuleType] = {}
_digests: dict[str, str] = {}  # each loaded plugin's file (saved form: its SHA-256's first 16 hex digits) as it loaded


def load_entry_points() -> None:
    """Import every module of the ``reste.estimators`` entry-point group (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # first: a plugin importing reste must not load the group again
    for ep in importlib.metadata.entry_points(group=GROUP):
        try:
            ep.load()
        except (Exception, SystemExit) as err:  # noqa: BLE001 - one broken package stops neither the others nor reste
            where = f" of {ep.dist.name}" if getattr(ep, "dist", None) is not None else ""
            why = f"it called sys.exit({err.code!r}) while being imported" if isinstance(err, SystemExit) \
                else _first_line(err)
            text = f"plugin {ep.name!r} ({ep.value}){where} failed to load: {why}"
            _broken.append(text)
            warnings.warn(f"{text}; its estimators, models and data sets are missing (fix or uninstall that package)",
                          stacklevel=2)


_broken: list[str] = []  # the entry points that failed to load, as one line each


def broken_note() -> str:
    """For an unknown name's error: the installed plugins that failed to load (one may have held the name)."""
    return "".join(f"; note: {text}" for text in _broken)


def is_path(spec: str) -> bool:
    """Whether a ``--plugin`` value names a ``.py`` file rather than a module."""
    return spec.endswith(".py") or os.sep in spec or (os.altsep is not None and os.altsep in spec)


def saved_form(spec: str) -> str:
    """How a ``--plugin`` value is saved in ``config.json``: a file as an absolute path, a module as given."""
    return str(Path(spec).expanduser().resolve()) if is_path(spec) else spec  # (--plugin=~/x.py: the home's)


def _installed_spec(top: str) -> Any:
    """Where Python would import the top-level module ``top`` from, leaving out the current folder (as the import
    finders see it: sys.path's entries, and the finders of editable installs); None where it is not found. No
    module's code runs."""
    here = os.path.abspath(os.getcwd())
    path = [p for p in sys.path if p and os.path.abspath(p) != here]
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                found = finder.find_spec(top, path)
            elif hasattr(finder, "find_spec"):
                found = finder.find_spec(top, None)
            else:
                continue
        except (ImportError, ValueError, TypeError):
            continue
        if found is not None:
            return found
    return None


def loads_on_resume(spec: Any, run_dir: str | os.PathLike, here: bool = True) -> bool:
    """Whether a resume of ``run_dir`` imports ``spec``, a plugin its ``config.json`` records, without ``--plugin``
    naming it again: a module this process has, or one installed on Python's path (found there without the current
    folder) whose code is not inside the run folder. A ``.py`` file, a module of the current folder (where a
    received folder is unpacked; any folder there is a namespace package) or code inside the run folder is not:
    a run folder from elsewhere could otherwise run code it brought, or a file someone planted (``/tmp/x.py``),
    by being resumed. ``here``: a resume in this process (else in a new one, which has none of its modules)."""
    if not isinstance(spec, str) or not spec.strip():
        return False
    if is_path(spec):  # a file this process loaded already: no code of it runs again (review extend1 #8: a Python
        # caller's engine.resume after load_plugins was refused)
        return here and saved_form(spec) in {saved_form(s) for s in _loaded}
    if here and spec in sys.modules:
        return True
    found = _installed_spec(spec.split(".")[0])
    if found is None:  # only in the current folder, or nowhere (then --plugin's import says so)
        return False
    try:
        folder = os.stat(run_dir)
    except OSError:
        return True  # no run folder to hold code

    def inside(place: Any) -> bool:  # by the folders' identity: a link, or another case of its name, is the same
        if not isinstance(place, str):
            return False
        real = Path(place).resolve()
        for above in (real, *real.parents):
            with contextlib.suppress(OSError):
                if os.path.samestat(os.stat(above), folder):
                    return True
        return False

    return not any(inside(p) for p in (found.origin, *(found.submodule_search_locations or [])))


def same_source(module: str, other: str) -> bool:
    """Whether two modules (by name) are one: the same name, or the same file imported under two (``--plugin
    mydata.py`` loads it as ``reste_plugin_mydata``, ``--plugin mydata`` or a ``"mydata:load"`` loader as
    ``mydata``): a registry takes a registration from either as that module's again (review extend #13)."""
    if module == other:
        return True
    files = [getattr(sys.modules.get(name), "__file__", None) for name in (module, other)]
    return None not in files and os.path.realpath(files[0]) == os.path.realpath(files[1])


def well_formed(plugins: Any) -> bool:
    """Whether ``plugins``, as a ``config.json`` records them, is a list of non-blank texts (else damage)."""
    return isinstance(plugins, list) and all(isinstance(p, str) and p.strip() for p in plugins)


def given_again(plugins: Any, run_dir: str | os.PathLike, here: bool = True) -> str:
    """The ``--plugin`` flags a resume of ``run_dir`` needs on its command line (with a space before each): every one
    of ``plugins`` (those its ``config.json`` records) where one does not load by itself (:func:`loads_on_resume`),
    as the resume then refuses to go on without them; none where each does, or where ``plugins`` is damaged (the
    resume says so; review diff21 #6). ``here``: a resume in this process; else in a new one, which has not
    imported the plugins this one has (review diff21 #1: a stopped run's line left out a module of the current
    folder that its own process had imported)."""
    if not well_formed(plugins) or all(loads_on_resume(p, run_dir, here) for p in plugins):
        return ""
    return "".join(f" --plugin {shell_word(p)}" for p in plugins)


def defining(modules: Iterable[str]) -> list[str]:
    """The ``--plugin`` values (in their saved form) that load ``modules`` again in another process: the modules
    that define an estimator or a model a run uses. A file loaded by ``--plugin`` is its path, any other module its
    name (one a Python caller imported itself too); none for reste's own, nor for ``__main__`` (a script, which
    spawned processes import themselves, or a notebook, which none can)."""
    specs = []
    for name in dict.fromkeys(modules):
        if name.split(".")[0] in ("reste", "__main__", "__mp_main__", "builtins"):
            continue
        file = getattr(sys.modules.get(name), "__file__", None)
        spec = saved_form(file) if name.startswith(_FILE_PREFIX) and file else name
        specs.append(spec)
    return specs


def needed(specs: Iterable[str], modules: Iterable[str]) -> list[str]:
    """Those of ``specs`` (``--plugin`` values given) that define one of ``modules`` (the modules of what a run
    uses: its estimator, model and data set): the spec's own module or a package holding it. A spec not loaded here
    is kept, and so is every spec where a used module is none of theirs (defined by a module a plugin imported:
    which one imported it cannot be told)."""
    specs = list(specs)
    names = {}
    for spec in specs:
        module = _loaded.get(spec) or next((m for s, m in _loaded.items() if saved_form(s) == saved_form(spec)), None)
        names[spec] = getattr(module, "__name__", None)
    used = [m for m in dict.fromkeys(modules) if m and m.split(".")[0] not in ("reste", "builtins")]

    def holds(name: str | None, module: str) -> bool:
        return name is not None and (module == name or module.startswith(name + "."))

    if any(not any(holds(n, m) for n in names.values()) for m in used):
        return specs
    return [spec for spec, n in names.items() if n is None or any(holds(n, m) for m in used)]


def load_plugin(spec: str) -> ModuleType:
    """Import the module ``spec`` names (a module name or a ``.py`` file), once."""
    if spec in _loaded:
        return _loaded[spec]
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"--plugin expects a module name or a .py file, got {spec!r}")
    name = _file_module(Path(spec).expanduser().resolve()) if is_path(spec) else spec
    fresh, before = name not in sys.modules, _registered()
    try:
        module = _import_file(spec) if is_path(spec) else _import_module(spec)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - the plugin's own code failed: one line
        raise UsageError(f"--plugin {spec!r} failed to load: {_first_line(err)}") from None
    except SystemExit as err:  # a script's sys.exit() on import: reste would end silently with its status
        raise UsageError(f"--plugin {spec!r} failed to load: it called sys.exit({err.code!r}) while being imported "
                         "(a script rather than a module? keep its main code under `if __name__ == '__main__':`)"
                         ) from None
    again = any(other is not module and same_source(other.__name__, module.__name__) for other in _loaded.values())
    _loaded[spec] = module
    digest = _file_digest(module) if fresh or saved_form(spec) not in _digests else None
    if digest is not None:  # (as its code ran: a second spelling of a file loaded runs none, review diff30 #3)
        _digests[saved_form(spec)] = digest
    if fresh and _registered() == before and not again:  # (a module imported before, by the caller, registered
        # then; or the same file as another --plugin, mydata.py and mydata, which registered the same again)
        warnings.warn(f"--plugin {spec!r} registered no estimator, model or data set (is it the module that "
                      "registers them, with @reste.register_estimator, register_model or register_dataset?)",
                      stacklevel=2)
    return module


def _file_digest(module: ModuleType) -> str | None:
    """The first 16 hex digits of the SHA-256 of ``module``'s file (a package's ``__init__.py``), or None."""
    file = getattr(module, "__file__", None)
    try:
        return hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16] if isinstance(file, str) else None
    except OSError:
        return None


def digests() -> dict[str, str]:
    """The loaded plugins' files by their saved ``--plugin`` form: the first 16 hex digits of each file's SHA-256 as
    it loaded, which a checkpoint records (``software``) so that a later process can tell that a plugin's code
    changed since it trained (review extend1, suggestion 1)."""
    return dict(_digests)


def changed(saved: Any, specs: Iterable[str] | None) -> list[str]:
    """Those of ``specs`` (the plugins a run records) whose file this process loaded with another digest than
    ``saved`` (a checkpoint's ``software["plugins"]``) records: the plugin's code changed since it was saved."""
    if not isinstance(saved, dict):
        return []
    edited = []
    for spec in dict.fromkeys(s for s in specs or () if isinstance(s, str)):
        key = saved_form(spec)
        if isinstance(saved.get(key), str) and key in _digests and _digests[key] != saved[key]:
            edited.append(spec)
    return edited


def loaded_files() -> list[str]:
    """The ``.py`` files loaded as plugins in this process (absolute paths), in the order they were loaded: what a
    process started by ``spawn`` must load again before it can unpickle their classes (:func:`load_files`)."""
    return list(dict.fromkeys(str(Path(m.__file__)) for spec, m in _loaded.items()
                              if is_path(spec) and getattr(m, "__file__", None)))


def load_files(files: Iterable[str]) -> None:
    """Load the plugin files ``files`` (as :func:`loaded_files` gives them) in this process, each once."""
    for file in files:
        load_plugin(file)


def _registered() -> tuple[int, int, int]:
    """How many estimators, models and data sets are registered now."""
    from . import datasets, estimators
    from .models import registry

    return len(estimators._REGISTRY), len(registry._MODELS), len(datasets._REGISTERED)


def load_plugins(specs: Iterable[str] | str) -> None:
    """Load each of ``specs`` as ``--plugin`` does (a module name, or a ``.py`` file): what it registers (estimators,
    models, data sets) is then known by name. One string is one spec, not its characters (review api, suggestion)."""
    for spec in [specs] if isinstance(specs, str) else specs:
        load_plugin(spec)


def not_loaded(specs: Iterable[str] | None) -> list[str]:
    """Those of ``specs`` (``--plugin`` values in their saved form, as a run's ``config.json`` records them) that
    this process has not loaded."""
    loaded = {saved_form(spec) for spec in _loaded}
    return [spec for spec in specs or () if isinstance(spec, str) and saved_form(spec) not in loaded]


def _import_module(name: str) -> ModuleType:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # "importable from the current folder", also for the console script
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
            raise  # a module the plugin imports is missing: reported with the plugin's name
        raise UsageError(f"--plugin {name!r}: no module named {err.name!r} on the Python path or in the current "
                         f"folder (give a module name, or the path to a .py file)") from None


def _import_file(path: str) -> ModuleType:
    file = Path(path).expanduser().resolve()
    if file.is_dir():  # (review extend, suggestion: a package's folder was "no such file")
        init = " (or its __init__.py)" if (file / "__init__.py").is_file() else ""
        raise UsageError(f"--plugin {path!r} is a folder: give a .py file{init}, or a package by its module name "
                         f"from the folder above it ({file.name})")
    if not file.is_file():
        raise UsageError(f"--plugin {path!r}: no such file")
    name = _file_module(file)
    loaded = sys.modules.get(name)
    if loaded is not None:  # (this file, loaded before)
        return loaded
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise UsageError(f"--plugin {path!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # its own folder first on the path while it runs, as a script's: it may import the modules beside it under
    # `reste` as under `python -m reste` (review extend1 #1); not after, so that a resume does not take that
    # folder's other modules for installed ones (loads_on_resume)
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(file.parent))  # (the first: the one put there)
    return module


def _file_module(file: Path) -> str:
    """The module name of a plugin file: ``reste_plugin_<stem>`` (a package's ``__init__.py``: its folder's name), or,
    where another file of that name is loaded already, with ``_2``, ``_3``, ... after it (review diff21 #3: a/mydata.py
    and b/mydata.py were one module, and a data set of one trained on the other's data). The name this process gave
    the file, where it did."""
    base = f"{_FILE_PREFIX}{file.parent.name if file.name == '__init__.py' else file.stem}"
    name, n = base, 1
    while name in sys.modules and Path(getattr(sys.modules[name], "__file__", None) or "").resolve() != file:
        n += 1
        name = f"{base}_{n}"
    return name


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    """``--plugin MODULE`` (repeatable) on a command that must know the estimator."""
    parser.add_argument("--plugin", dest="plugins", action="append", metavar="MODULE",
                        help="a module that registers estimators, models or data sets of your own: a module name "
                             "importable from the current folder or sys.path, or a .py file (repeatable)")


class _Refused(Exception):
    pass


class _QuietParser(argparse.ArgumentParser):
    """A parser whose refusal raises, printing nothing."""

    def error(self, message: str) -> NoReturn:
        raise _Refused(message)


def plugins_in_argv(argv: Sequence[str]) -> list[str]:
    """The plugins a command line asks for: its ``--plugin`` values, else those the run of ``reste train --resume``
    saved (only that command: a ``--resume`` typed after another command is an error of its parser, and must not
    import a module a run folder names first).

    They are loaded before the parser is built, so that their estimators' flags exist.
    """
    pre = _QuietParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugin", action="append", default=[])
    pre.add_argument("--resume")
    try:
        known, _ = pre.parse_known_args(list(argv))
    except _Refused:  # e.g. --plugin without a value: the real parser says so (and this one says nothing: it
        return []     # printed its own usage and error first, review ux1 #1)
    found = list(known.plugin)
    command = next((a for a in argv if not a.startswith("-")), None)  # reste's own flags take no value
    if known.resume and not found and command == "train":  # given ones replace the saved ones (it may have moved)
        try:
            path = Path(known.resume) / CONFIG
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block here for ever: the resume refuses it
                raise OSError("not a file")  # (review rev16 #3)
            saved = parse_json(path.read_text(encoding="utf-8")).get("plugins") or []
        except (OSError, ValueError, AttributeError):
            saved = []  # the run itself reports what is wrong with it
        found = [s for s in saved if loads_on_resume(s, known.resume)] if isinstance(saved, list) else []
    return found
