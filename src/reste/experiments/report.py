"""Tables and figures of a sweep: ``summarize(out_dir)``.

Per run (``runs.csv``): best and final test top-1, and the run-level indicators
(``reste.indicators.run_indicators``: over the epochs of its current indicator mode in ``metrics.jsonl``).
Per epoch of every finished run (``epochs.csv``): the metrics of its line of ``metrics.jsonl``
(``EPOCH_COLUMNS``: not the schedule values), so that the learning curves outlive the run folders
(which are not committed); a run reported once is reported from these two tables when its folder is gone.
Per setting (``results.csv``, ``results.md``): the mean and the sample standard
deviation (n - 1; blank for one seed) of those over the seeds whose run finished,
n, the planned runs (n_runs) and those that diverged (n_diverged). Figures: ``indicators.png`` (both indicators
per epoch, one line per setting, mean over seeds), ``error_vs_stability.png`` (one point per setting) and,
when ``o_end`` is a grid axis and runs at two of its values or more are reported, ``accuracy_vs_o_end.png``.
A sweep of a preset (``--preset``), or one whose settings train a preset's recipe, gets the paper's number beside
each setting that trains a preset's recipe, and the difference best - published (:func:`published`).
"""

from __future__ import annotations

import collections
import csv
import decimal
import difflib
import functools
import io
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from ..files import atomic_write
from ..config import PRESETS, TrainConfig, canonical_estimator, config_from_preset
from ..datasets import get_spec
from ..errors import UsageError, parse_json
from ..native import exclusive
from ..wording import FORMULA_START, count, listed, printable, spreadsheet_text
from ..indicators import RUN_LEVEL, RUN_LEVEL_FIELDS, run_indicators, unmeasured
from ..rundir import (CONFIG, CURVES, LAST, METRIC_FIELDS, METRICS as METRICS_FILE, SWEEP_MANIFEST, best_line, blocked,
                      divergence, epoch_lines, failure, holds_run, lines_beyond_repair, lines_lost_why, not_a_folder,
                      other_run, read_metrics, recipe_free, run_config, sweeps_inside, sweeps_inside_hint)
from .identity import canonical_saved, config_key

MANIFEST = SWEEP_MANIFEST  # the sweep folder's plan: base config, grid, seeds, settings and their runs
# the tables a report writes into the sweep folder: per setting (markdown and CSV), per run, per epoch of each run
RESULTS_MD, RESULTS_CSV, RUNS_CSV, EPOCHS_CSV = "results.md", "results.csv", "runs.csv", "epochs.csv"

METRICS = ("best_acc", "final_acc", "estimating_error", "gradient_stability")
# the legend of results.md's published column; what it names as another recipe is none of recipe_free's
PUBLISHED_NOTE = ("published: the paper's top-1 (top-5) of the preset whose recipe the setting trains, one run each "
                  "(reste.config.PRESETS), and the mean best top-1 minus it; - where the setting trains no preset's "
                  "recipe (other estimator options, epochs, batch, --amp, BatchNorm over --accumulate's "
                  "micro-batches, ...).")
INDICATORS = RUN_LEVEL_FIELDS


def run_status(run_dir: Path, key: str | None = None) -> tuple[str, Any]:
    """Whether the run in ``run_dir`` can be reported, by the one rule of sweeps and reports alike.

    ``("done", summary)``: its settings (``config.json``, or ``last.pt``'s copy) and a metrics line for each of
    its epochs; the summary holds best/final accuracy, the run-level indicators (``reste.indicators.run_indicators``:
    the authors' aggregate in paper mode) and, under ``"metrics"``, the lines of its epochs. ``("pending", None)``:
    no run there yet, or one still training (its first epochs recorded). ``("damaged", why)``: a run that cannot
    be reported (a damaged file, an epoch's line missing in the middle). ``("changed", why)``: a run with settings
    other than ``key`` (its setting's :func:`~reste.experiments.identity.config_key`), changed since with
    ``reste train --resume --force``. ``("diverged", why)``: an unfinished run that a sweep recorded as diverged
    (``reste.rundir.record_divergence``; its loss became NaN or infinite), which a sweep does not train again.
    ``("failed", why)``: an unfinished run that a sweep recorded as failed (``reste.rundir.record_failure``), which
    the sweep trains again."""
    if not holds_run(run_dir):  # a run that diverged or failed at its start kept no files but its record
        return recorded_end(run_dir) or ("pending", None)
    try:
        config = run_config(run_dir, checked=True)
        lines = read_metrics(run_dir, missing_ok=True)
        changed = changed_settings(config, key)
    except UsageError as err:
        return "damaged", str(err)
    if changed:
        return "changed", changed
    lines, missing = epoch_lines(lines)
    if missing and missing[0] <= config.epochs:
        return "damaged", missing_line(run_dir, missing[0])
    metrics = [m for m in lines if m["epoch"] <= config.epochs]
    if len(metrics) < config.epochs:
        return recorded_end(run_dir) or ("pending", None)
    row: dict[str, Any] = {**_accuracy(metrics), "epochs": len(metrics),
                           "seconds": sum(m.get("time", 0.0) for m in metrics)}
    indicators = run_indicators(metrics, config.indicators) or {}  # its current mode's epochs, as `reste show`
    row.update({k: indicators.get(k) for k in INDICATORS})
    return "done", {**row, "metrics": metrics}


def changed_settings(config: TrainConfig, key: str | None) -> str | None:
    """Why a run of settings ``config`` is not the run of its setting (``key``, the setting's
    :func:`~reste.experiments.identity.config_key`; None: not checked): changed since with ``reste train --resume
    --force``; None where it is."""
    if key is None or config_key(canonical_saved(config)) == key:
        return None
    return (f"it holds a run with other settings ({count(config.epochs, 'epoch')}, estimator {config.estimator}) "
            "than its setting: changed since with --resume --force?")


def recorded_end(run_dir: Path) -> tuple[str, str] | None:
    """("diverged" or "failed", why) where a sweep recorded that the run in ``run_dir`` diverged or failed
    (``reste.rundir.record_divergence``, ``record_failure``); None where it recorded neither."""
    diverged = divergence(run_dir)
    if diverged:
        return "diverged", diverged
    failed = failure(run_dir)
    return ("failed", failed) if failed else None


def lost_last(run_dir: Path, read: bool = True) -> str | None:
    """Why a sweep cannot continue the unfinished run in ``run_dir``: finished epochs, but its ``last.pt`` deleted
    or lost (``reste.resumption.check_last_kept``: every resume refuses it, so a rerun would fail it again), or
    damaged: with ``read``, it is loaded as the resume loads it (seconds for an ImageNet run's), so whatever a resume
    refuses is said (review diff12 #2: a whole zip that is no reste checkpoint); without, only its zip structure and
    header are read (a file cut short or replaced: ``reste.checkpoint.structure_damage``). None where a resume can go
    on."""
    from ..checkpoint import NewerCheckpoint, load_checkpoint, read_structure
    from ..resumption import check_last_kept, refusal_reason

    try:
        check_last_kept(run_dir)
    except UsageError:
        return (f"{run_dir} has finished epochs but no {LAST} (deleted or lost), so it cannot continue; delete its "
                "folder to train it again")
    last = Path(run_dir) / LAST
    if not last.is_file() or not os.access(last, os.R_OK):  # (unreadable: a matter of its mode, not of its bytes)
        return None
    # truncated, a checksum that does not match: every rerun failed on it (review chaos #3; chaos2 #2: show too)
    if not read:
        problem, head = read_structure(last)
        if problem is None:  # (its epoch, step and last line: the header's, no tensor read)
            return other_run(run_dir, head) or _lines_lost(Path(run_dir), head)
        return None if problem == "missing" else \
            f"its {last} is damaged ({problem}), so it cannot continue; delete its folder to train it again"
    try:
        ckpt = load_checkpoint(last)
    except NewerCheckpoint as err:  # whole: the newer reste continues it (review diff13 #8)
        return (f"{err.path} was written by a newer reste (format {err.version}), which this reste cannot continue; "
                "upgrade reste to continue it")
    except UsageError as err:
        return f"{refusal_reason(err)}, so it cannot continue; delete its folder to train it again"
    return other_run(run_dir, ckpt) or _lines_lost(Path(run_dir), ckpt)


def _lines_lost(run_dir: Path, ckpt: dict[str, Any]) -> str | None:
    """Why a run whose ``last.pt`` (``ckpt``) finished every epoch it plans, but whose metrics.jsonl lacks lines that no
    resume can put back (``reste.rundir.lines_beyond_repair``), can neither go on nor be reported (review chaos3 #3: the
    sweep said it was resuming at epoch 1, and trained nothing); None for any other run."""
    held, step = ckpt.get("epoch"), ckpt.get("step") or 0
    try:
        planned = run_config(run_dir).epochs
        recorded = {m["epoch"] for m in read_metrics(run_dir, missing_ok=True)}
    except (UsageError, KeyError, TypeError):
        return None  # (what the report's own reading says of such a run)
    if type(held) is not int or type(step) is not int:
        return None
    lost = lines_beyond_repair(planned, recorded, held, step)
    return lines_lost_why(run_dir, planned, lost) if lost else None


def missing_line(run_dir: Path, epoch: int) -> str:
    """Why a run whose metrics.jsonl lost the line of ``epoch`` (below later ones) cannot be reported."""
    return (f"{run_dir / METRICS_FILE} has no line for epoch {epoch}; train the run again (delete its folder) to "
            "report it")


def _accuracy(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's best test top-1 and its epoch (the first of a tie), and its final top-1 and top-5."""
    best = best_line(metrics)
    return {"best_acc": best["test_acc"], "best_epoch": best["epoch"], "final_acc": metrics[-1]["test_acc"],
            "final_top5": metrics[-1].get("test_top5")}


def run_summary(run_dir: Path) -> dict[str, Any] | None:
    """best/final accuracy and the run-level indicators of a finished run (see :func:`run_status`); None while it
    is not finished, or cannot be reported."""
    status, summary = run_status(Path(run_dir))
    if status != "done":
        return None
    return {k: v for k, v in summary.items() if k != "metrics"}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values given; None (missing) and non-finite ones (an indicator
    that overflowed, or that no epoch measured: collect says so) are left out."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def load_manifest(out_dir: Path) -> dict[str, Any]:
    """The sweep's ``sweep.json``, checked: a damaged one is a one-line error, not a KeyError later."""
    path = out_dir / MANIFEST
    if not path.is_file():
        from ..errors import shell_word

        if not out_dir.exists():
            raise UsageError(f"{out_dir} does not exist; pass a sweep's folder (its --out)")
        if not out_dir.is_dir():  # (review clifuzz #2: it said to run a sweep into it, which no sweep can)
            raise UsageError(f"{out_dir} is a file; pass a sweep's folder (its --out)")
        if (out_dir / CONFIG).is_file():
            raise UsageError(f"{out_dir} is a training run, not a sweep; see it with "
                             f"`reste show {shell_word(out_dir)}`")
        inside = sweeps_inside_hint(out_dir, "report")  # (a parent of sweeps: it said to sweep into it, newuser3 #4)
        if inside:
            raise UsageError(inside)
        if (out_dir / RUNS_CSV).is_file():  # tables without a sweep: joined from sweeps (docs/results/combine.py)
            raise UsageError(f"{out_dir} holds tables but no {MANIFEST}: it was joined from other sweeps' tables "
                             "(docs/results/combine.py, which the study's summarize.sh runs), not swept; report "
                             "those sweeps, or join them again")
        raise UsageError(f"{out_dir} is not a sweep folder (no {MANIFEST}); run "
                         f"`reste sweep --out {shell_word(out_dir)}` first")
    try:
        manifest = parse_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is damaged ({str(err)[:80]}); run the sweep again to rewrite it") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("grid"), dict)
            and isinstance(manifest.get("settings"), list)):
        raise UsageError(f"{path} is not a sweep manifest (no grid and settings); run the sweep again to rewrite it")
    problem = _manifest_problem(manifest)
    if problem:
        raise UsageError(f"{path} is damaged ({problem}); run the sweep again to rewrite it")
    return manifest


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with '/' between its parts on every OS (the sweep folder may move to another
    one); :func:`_folder` reads it back."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive (Windows)
        return path.resolve().as_posix()


def folder_name(rel: str) -> str:
    """A run folder as ``_rel`` writes it, from a manifest or runs.csv; one written by an older version on Windows
    has '\\' between its parts (reste's run folder names hold none)."""
    return rel.replace("\\", "/")


def _absolute(path: Path) -> str:
    """``path`` absolute, as a manifest's ``at`` keeps it beside the relative folder of a run outside the sweep
    folder (``--runs-dir``): a sweep folder moved away from its runs still finds them. Resolved as the kernel resolves
    it: through a link to the sweep folder, its ``../`` is the target's parent's (review chaos5 #4)."""
    return Path(os.path.realpath(path)).as_posix()


def _outside(path: Path, root: Path) -> bool:
    """Whether ``path`` is outside the folder ``root`` (a run inside it moves with it, and a copy of the sweep
    must not find the original's runs)."""
    rel = _rel(path, root)
    return rel == ".." or rel.startswith("../") or Path(rel).is_absolute()  # (absolute: another drive)


def run_folder(out_dir: Path, setting: dict[str, Any], seed: str) -> Path:
    """The folder of a manifest setting's run for ``seed``: relative to the sweep folder where it is there (the
    sweep moved with its runs, the usual case), else, for a run outside the sweep folder, where the sweep wrote it
    (the sweep folder moved away from its ``--runs-dir``), else the relative one (a run not started yet)."""
    inside = out_dir / folder_name(setting["runs"][seed])
    at = setting.get("at")
    written = at.get(seed) if isinstance(at, dict) else None
    if not inside.exists() and isinstance(written, str) and written and Path(written).exists():
        return Path(written)
    return inside


def write_manifest(out_dir: Path, base: TrainConfig, grid: dict[str, list[Any]], seeds: Sequence[int],
                   settings: Sequence[Any]) -> None:
    """Write the sweep's ``sweep.json``: its base settings, grid, seeds and each setting (a
    ``reste.experiments.sweep.Setting``: label, grid values, key, settings and the folder of each seed's run)."""
    manifest = {
        "base": base.to_dict(),
        "grid": grid,
        "seeds": list(seeds),
        "settings": [
            {"label": s.label, "values": s.values, "key": s.key, "config": s.config.to_dict(),
             "runs": {str(seed): _rel(path, out_dir) for seed, path in s.runs.items()},
             "at": {str(seed): _absolute(path) for seed, path in s.runs.items() if _outside(path, out_dir)}}
            for s in settings
        ],
    }
    write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")


def _axis_name(key: Any) -> bool:
    """Whether ``key`` can be a grid axis: a setting's, an estimator's or a model's option name (identifiers,
    Unicode ones too, as a plugin's hyper-parameter may be named: review diff28 #1), dotted (estimator_options.t),
    dashed as a flag (batch-size)."""
    return isinstance(key, str) and 0 < len(key) <= 100 and not key.startswith(FORMULA_START) and all(
        part.isidentifier() for part in key.replace("-", "_").split("."))  # (-A1: a formula, review diff29 #3)


def _manifest_problem(manifest: dict[str, Any]) -> str:
    if not isinstance(manifest.get("base"), dict):
        return "no base settings"
    seeds = manifest.get("seeds")
    if not isinstance(seeds, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        return "its seeds are not a list of integers"
    odd = next((k for k in manifest["grid"] if not _axis_name(k)), None)
    if odd is not None:  # an axis is a setting's name, a header of the tables (a formula there: review sec3 #7)
        return f"its grid has an axis {printable(odd)[:60]!r} that names no setting"
    for i, s in enumerate(manifest["settings"]):
        if not (isinstance(s, dict) and isinstance(s.get("label"), str) and isinstance(s.get("values"), dict)
                and isinstance(s.get("runs"), dict)):
            return f"setting {i + 1} lacks its label, values or runs"
        if "config" in s and not isinstance(s["config"], dict):
            return f"setting {s['label']!r} has a config that is not a mapping of settings"
        for seed, rel in s["runs"].items():
            if not (isinstance(seed, str) and seed.lstrip("-").isdigit() and isinstance(rel, str) and rel):
                return f"setting {s['label']!r} has a run that is not 'seed': 'folder'"
    return ""


EPOCH_COLUMNS = METRIC_FIELDS


def epoch_rows(out_dir: str | Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch of each finished run in ``runs`` (``collect``'s): setting, seed, then EPOCH_COLUMNS."""
    rows = []
    for run in runs:
        metrics = run["metrics"] if "metrics" in run else read_metrics(Path(out_dir) / run["run_dir"])[:run["epochs"]]
        for m in metrics:
            rows.append({"setting": run["setting"], "seed": run["seed"], **{k: m.get(k) for k in EPOCH_COLUMNS}})
    return rows


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a table this module wrote, each cell back to its value (``_cell`` in reverse)."""
    return [row for _, row in _numbered_rows(path)]


def _numbered_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """:func:`_read_csv`'s rows, each with its line in the file (the header is line 1), for a message to name; none
    where the file is missing. A damaged one (cut short, a row of fewer or more cells than the header, bytes that are
    no CSV) is a one-line ``UsageError`` naming where: it is the record of the runs whose folders are gone, which a
    report would write again from what it could read, losing the rest (review chaos2 #1)."""
    def damaged(where: str) -> UsageError:
        return UsageError(f"{path} is damaged ({where}); restore it (from git, or a copy), or delete it to drop the "
                          "runs whose folders are gone from the tables")

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        raise damaged("bytes that are not UTF-8") from None
    except OSError as err:
        raise UsageError(f"cannot read {path} ({err.strerror}); make it readable and run the command again") from None
    if text and not text.endswith("\n"):  # (the report ends each row with a line break: the last was cut)
        raise damaged("its last row is cut short")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():  # more cells than the header, or fewer
                raise damaged(f"line {reader.line_num} has {'more' if None in row else 'fewer'} cells than its header")
            rows.append((reader.line_num, {k: _value(v) for k, v in row.items()}))
    except csv.Error as err:
        raise damaged(f"line {reader.line_num}: {err}") from None
    return rows


def _value(text: str | None) -> Any:
    if text is None or text == "":
        return None
    if text.startswith("'") and text[1:].startswith(FORMULA_START):
        return text[1:]  # text _cell kept from a spreadsheet's formulas
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def earlier_rows(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The runs an earlier report wrote (runs.csv, with their epochs from epochs.csv), by (run folder, seed). A row
    with a number that is not one (88.6% or 88,61 from a spreadsheet) says so under ``"bad"``: :func:`kept_row`
    refuses it where it is used (a run whose folder is gone: review experiments #12); a row of a run whose folder is
    there is not used, and the report writes it again (rev16 #2)."""
    epochs: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for row in _read_csv(out / EPOCHS_CSV):
        epochs.setdefault((row.get("setting"), row.get("seed")), []).append(
            {k: row.get(k) for k in EPOCH_COLUMNS if k in row})  # (a column an older report did not write: absent)
    rows = []
    for line, r in _numbered_rows(out / RUNS_CSV):
        if not (isinstance(r.get("run_dir"), str) and isinstance(r.get("seed"), int)):
            continue
        for column in RUN_COLUMNS:
            value = r.get(column)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                r["bad"] = (f"{out / RUNS_CSV} row {line}: {column} {value!r} is not a number; write it as one "
                            "(88.61, not 88.6% or 88,61), or delete the row to drop the run")
                break
        rows.append(r)
    # epochs.csv names a run by its setting's label: where two runs share one (labels of older versions could),
    # its lines cannot be told apart, and none is attached
    counts = collections.Counter((r.get("setting"), r["seed"]) for r in rows)
    shared = {k for k, n in counts.items() if n > 1}
    earlier = {}
    for row in rows:
        key = (row.get("setting"), row["seed"])
        row["metrics"] = [] if key in shared else epochs.get(key, [])
        earlier[(folder_name(row["run_dir"]), row["seed"])] = row
    return earlier


def kept_row(earlier: dict[tuple[str, int], dict[str, Any]], key: tuple[str, int]) -> dict[str, Any] | None:
    """The row of :func:`earlier_rows` for ``key``, to be used; one whose numbers are not numbers is a one-line
    ``UsageError`` naming its row and column."""
    row = earlier.get(key)
    if row is not None and row.get("bad"):
        raise UsageError(row["bad"])
    return row


def _matches(value: Any, text: str, axis: str = "") -> bool:
    """Whether a setting's ``value`` is the one a user wrote as ``text`` (``o_end=10`` for 10.0, ``1e-3`` for 0.001;
    an estimator or a data set by any of its names, as the sweep takes them: ``sign_swish`` for ``SignSwish``)."""
    if axis in _NAMED:
        value, text = _NAMED[axis](str(value)), _NAMED[axis](text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).lower() == text.lower()
    try:
        return float(text) == value
    except ValueError:
        return False


def _dataset_name(name: str) -> str:
    try:
        return get_spec(name).name
    except UsageError:  # (a plugin's, not loaded here: as written)
        return name


# grid axes whose values have several names, each to its registered one (review experiments #1)
_NAMED: dict[str, Callable[[str], str]] = {"estimator": canonical_estimator, "dataset": _dataset_name}


def is_sweep_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sweep's folder (its ``sweep.json``), not a run's."""
    return (Path(path) / MANIFEST).is_file() and not holds_run(path)


def sweep_run_dirs(out_dir: str | os.PathLike, where: Sequence[str] = (),
                   log: Callable[[str], None] | None = None) -> list[Path]:
    """The folders of the sweep's runs that have finished an epoch or more: settings in the sweep's order, then
    seeds. ``where`` keeps the runs whose setting has, for each ``KEY=V1[,V2...]`` (a grid axis, or ``seed``), one
    of those values. ``log`` gets a line for runs left out because they have no epoch yet, a damaged file, their
    folder gone or settings changed since (``reste train --resume --force``: not the setting's run)."""
    return [d for d, _, _, _ in _sweep_runs(out_dir, where, log)]


def _sweep_runs(out_dir: str | os.PathLike, where: Sequence[str], log: Callable[[str], None] | None,
                kept: bool = False, empty_ok: bool = False
                ) -> list[tuple[Path, str, list[dict[str, Any]] | None, str | None]]:
    """(folder, "SETTING seed N", None, None) of each run :func:`sweep_run_dirs` gives; ``kept``: also (folder,
    label, its epochs, its setting's indicator mode) of each run whose folder is gone or whose settings were changed
    since, from the epochs.csv an earlier report wrote. None drawn is a ``UsageError``, or with ``empty_ok`` [] and
    a ``log`` line saying why."""
    out = Path(out_dir)
    manifest = load_manifest(out)
    axes = list(manifest["grid"])
    named = {axis.replace("-", "_"): axis for axis in [*axes, "seed"]}  # o-end=3 as --grid o-end=... takes it
    wanted: dict[str, list[str]] = {}
    for item in where:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UsageError(f"--setting {item}: write it KEY=VALUE (e.g. o_end=10, or seed=0)")
        axis = named.get(key.strip().replace("-", "_"))
        if axis is None:
            raise UsageError(f"--setting {item}: {key.strip()} is not an axis of the sweep in {out} (its axes: "
                             f"{', '.join(axes + ['seed'])})")
        wanted.setdefault(axis, []).extend(v.strip() for v in values.split(","))
    chosen, chosen_values = [], []
    for s in manifest["settings"]:
        key = _setting_key(s)
        # the mode its runs measured the indicators in, for those drawn from epochs.csv (no config.json to say it)
        mode = (s["config"] if isinstance(s.get("config"), dict) else {**manifest["base"], **s["values"]}).get(
            "indicators")
        for seed in s["runs"]:
            values = {**s["values"], "seed": int(seed)}
            if all(any(_matches(values.get(k), v, k) for v in texts) for k, texts in wanted.items()):
                chosen.append((run_folder(out, s, seed), f"{s['label']} seed {seed}", folder_name(s["runs"][seed]),
                               int(seed), key, mode))
                chosen_values.append(values)
    if not chosen:
        labels = listed([printable(s["label"]) for s in manifest["settings"]])
        raise UsageError(f"no run of the sweep in {out} has {' '.join(where)} (its settings: {labels}; seeds "
                         f"{', '.join(map(str, manifest['seeds']))})")
    missing = [f"{k}={v}" for k, texts in wanted.items() for v in texts
               if not any(_matches(values.get(k), v, k) for values in chosen_values)]
    if missing and log:  # one value of a list that no run has (a typo): said, not a curve silently absent (newuser #2)
        log(f"plot: no run of the sweep in {out} has {', '.join(missing)} beside the other --setting values; "
            "the others are drawn")
    dirs: list[tuple[Path, str, list[dict[str, Any]] | None, str | None]] = []
    unstarted, from_table, gone, other = 0, 0, 0, 0  # (other: damaged or changed, each said on its own line)
    ended = {"diverged": 0, "failed": 0}  # runs a sweep recorded, ended before their first epoch
    earlier = earlier_rows(out)
    for d, label, folder, seed, key, mode in chosen:
        try:
            started = holds_run(d) and read_metrics(d, missing_ok=True)
        except UsageError as err:  # a damaged run: the others are still drawn
            if log:
                log(f"plot: {d} is left out: {err}")
            other += 1
            continue
        try:
            changed = changed_settings(run_config(d, checked=True), key) if started else None
        except UsageError:  # a damaged config.json: drawn by its metrics, as before
            changed = None
        row = (kept_row(earlier, (folder, seed)) or {}) if not holds_run(d) or changed else {}
        epochs = row.get("metrics") if kept else None
        if changed:  # not the setting's run (the report keeps the row it wrote of the setting's)
            if log:
                log(f"plot: {printable(label)}: {changed.rstrip('?')}; " + (
                    f"drawn from the epochs an earlier report kept in {out / EPOCHS_CSV}" if epochs else "left out"))
            if epochs:
                dirs.append((d, label, [{k: v for k, v in m.items() if v is not None} for m in epochs], mode))
            else:
                other += 1
            continue
        if started:
            dirs.append((d, label, None, None))
        elif epochs:  # its folder is gone (git-ignored runs of a committed study): the report kept its epochs
            dirs.append((d, label, [{k: v for k, v in m.items() if v is not None} for m in epochs], mode))
            from_table += 1
        elif row.get("best_acc") is not None:  # finished and reported, its folder gone since: not "no epoch yet"
            gone += 1
        elif (record := recorded_end(d)) is not None:  # (review experiments #2) diverged or failed before its first
            ended[record[0]] += 1  # epoch: not "yet"
        else:
            unstarted += 1
    if from_table and log:
        log(f"plot: {from_table} of the sweep's {len(chosen)} runs drawn from {out / EPOCHS_CSV} (their folders are "
            "gone)")
    # (without ``kept`` a gone run's epochs are not drawn at all, wherever they are)
    lost = f"{EPOCHS_CSV} (older sweeps lack it) holds none of their epochs" if kept else f"only {RUNS_CSV} keeps them"
    if gone and log:
        log(f"plot: {gone} of the sweep's {len(chosen)} runs left out: their folders are gone and {lost}")
    if unstarted and log:
        log(f"plot: {unstarted} of the sweep's {len(chosen)} runs {'has' if unstarted == 1 else 'have'} no finished "
            "epoch yet; left out")
    ended_text = {"diverged": "diverged before their first epoch ended (the sweep does not train them again)",
                  "failed": "failed before their first epoch ended (the sweep trains them again)"}
    for state, n in ended.items():
        if n and log:
            log(f"plot: {n} of the sweep's {len(chosen)} runs {ended_text[state]}; left out")
    if not dirs:
        parts = [f"{n} {what}" for n, what in ((unstarted, "with no finished epoch yet"),
                                               (ended["diverged"], "diverged"), (ended["failed"], "failed"),
                                               (gone, "finished, whose folders are gone"),
                                               (other, "damaged or changed")) if n]
        why = (f"no run of the sweep in {out}{' with ' + ' '.join(where) if where else ''} " +
               ("has finished an epoch yet" if unstarted == len(chosen) else "has epochs to draw: the folders of its "
                f"finished runs are gone and {lost}" if gone == len(chosen) else
                f"has epochs to draw ({', '.join(parts)})"))
        if not empty_ok:
            raise UsageError(why)
        if log:
            log(f"plot: {why}; the other targets are drawn")
    return dirs


def plot_runs_or_sweeps(targets: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                        where: Sequence[str] = (), log: Callable[[str], None] | None = None) -> Path:
    """:func:`~reste.experiments.plots.plot_runs`, where a sweep's folder stands for its runs (those ``where``
    keeps: :func:`sweep_run_dirs`). The figure goes to ``out``; by default a sweep's alone goes to its folder."""
    from . import plots as plotting

    once: dict[str, str | os.PathLike] = {}  # a folder given twice is one target (review diff13 #9: `plot r1 r1` drew
    for t in targets:  # into ./curves.png, not r1/curves.png as one run's figure goes)
        once.setdefault(os.path.realpath(t), t)
    targets = list(once.values())
    for t in targets:  # (review clifuzz #3: each was "has no metrics.jsonl; is it a reste run directory?")
        if not os.path.lexists(t):
            close = "estimators" if difflib.get_close_matches(str(t), ["estimators"], cutoff=0.75) else None
            hint = "; `reste plot estimators` draws the estimators' curves" if close else ""
            raise UsageError(f"{t} does not exist; pass a run's or a sweep's folder{hint}")
        if not os.path.isdir(t):
            raise not_a_folder(t, "reste plot")
    given = targets
    targets = [inner for t in given for inner in _sweeps_for(t, log)]
    sweeps = [Path(t) for t in targets if is_sweep_folder(t)]
    if where and not sweeps:
        raise UsageError("--setting picks runs of a sweep; give a sweep's folder (its --out)")
    runs: list[tuple[Path, str, list[dict[str, Any]] | None, str | None]] = []
    parents = []  # folders of runs (`reste train --out runs/r1`, `--out runs/r2`): the runs inside them
    for t in targets:
        label = f"{Path(t).name}: " if len(targets) > 1 else ""  # several sweeps: whose run it is
        inner = [] if Path(t) in sweeps or _is_run(t) else _runs_inside(t, log)
        if inner:
            parents.append(Path(t))
        # a sweep with nothing to draw among several targets is said, and the others drawn (review experiments #5)
        runs += [(d, label + s, m, mode) for d, s, m, mode in _sweep_runs(t, where, log, kept=True,
                                                                         empty_ok=len(targets) > 1)] \
            if Path(t) in sweeps else [(d, "", None, None) for d in inner] or [(Path(t), "", None, None)]
    if not runs:
        raise UsageError(f"none of the {len(targets)} sweeps given has a run with epochs to draw (see the lines above)")
    runs = _once(runs, log)
    if out is None and len(given) == 1 and (sweeps or parents):  # into the folder given
        out = Path(given[0]) / CURVES
    elif out is None and len(targets) > 1:  # several targets' figure: here, even where they hold one run between them
        out = Path(CURVES)
    # runs of sweeps alone are named as the sweep names them ("o_end=10 seed 0"), else by the settings that differ
    labels = [s for _, s, _, _ in runs] if len(sweeps) == len(targets) else None
    if labels is None and any(m is not None for _, _, m, _ in runs):  # a gone run has no config.json to tell its
        labels = [s or d.name for d, s, _, _ in runs]  # settings by: the sweep's names, a run's folder (rev12 #6)
    return plotting.plot_runs([d for d, _, _, _ in runs], out, labels, [m for _, _, m, _ in runs],
                              modes=[mode for _, _, _, mode in runs])


def _sweeps_for(target: str | os.PathLike, log: Callable[[str], None] | None) -> list[str | os.PathLike]:
    """``target`` itself, or the sweeps one level inside it where it is a folder of sweeps (no run, no sweep, no run
    one level down: ``sweeps`` of ``sweeps/est`` and ``sweeps/oend``), each named in a line."""
    if _is_run(target) or is_sweep_folder(target):
        return [target]
    runs, unstarted, inside = _contents(target)
    if runs or unstarted:
        return [target]
    if inside and log:
        log(f"plot: {target} holds {count(len(inside), 'sweep')} ({listed([p.name for p in inside])}); "
            f"{'each is' if len(inside) > 1 else 'it is'} drawn")
    return inside or [target]


def _runs_inside(folder: str | os.PathLike, log: Callable[[str], None] | None) -> list[Path]:
    """The runs one level inside ``folder`` (not itself a run or a sweep) that have an epoch to draw, by name, each
    named in a line, with what else it holds; a ``UsageError`` where it holds none."""
    runs, unstarted, sweeps = _contents(folder)
    several = len(sweeps) > 1
    elsewhere = (f"; the sweep{'s' * several} in it ({listed([p.name for p in sweeps])}) "
                 f"{'are' if several else 'is'} drawn when given {'themselves' if several else 'itself'}"
                 if sweeps else "")
    if not runs:
        if unstarted:
            raise UsageError(f"{folder} holds {count(len(unstarted), 'run')}, none with a finished epoch yet"
                             f"{elsewhere}")
        raise UsageError(f"{folder} is not a run, a sweep, or a folder of runs or sweeps (no {METRICS_FILE} or "
                         f"{CONFIG} in it or one level down); pass a run's or a sweep's folder (its --out)")
    if log:
        log(f"plot: {folder} holds {count(len(runs), 'run')} ({listed([d.name for d in runs])}); "
            f"{'each is' if len(runs) > 1 else 'it is'} drawn")
        if unstarted:
            log(f"plot: {count(len(unstarted), 'run')} in {folder} "
                f"{'has' if len(unstarted) == 1 else 'have'} no finished epoch yet; left out")
        if elsewhere:
            log(f"plot: {elsewhere[2:]}")
    return runs


def _contents(folder: str | os.PathLike) -> tuple[list[Path], list[Path], list[Path]]:
    """The folders one level inside ``folder``, by name: the runs with an epoch to draw, the runs with none yet (a run
    makes its metrics file empty at its start: an epoch is a line in it, review diff16 #5), and the sweeps."""
    inside = sorted(p for p in Path(folder).iterdir() if p.is_dir()) if Path(folder).is_dir() else []
    runs = [p for p in inside if (p / METRICS_FILE).is_file() and (p / METRICS_FILE).stat().st_size > 0]
    return runs, [p for p in inside if p not in runs and _is_run(p)], sweeps_inside(folder)


def _is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a run's: it holds its metrics file or its config.json (a run before its first epoch)."""
    return (Path(folder) / METRICS_FILE).exists() or (Path(folder) / CONFIG).exists()


def _once(runs: list[tuple[Path, str, Any, Any]],
          log: Callable[[str], None] | None) -> list[tuple[Path, str, Any, Any]]:
    """``runs`` with each run folder once, under its first name (review experiments #3: two sweeps sharing a
    --runs-dir are the same runs, and a run given beside its sweep, or a target given twice, was drawn twice)."""
    seen: set[str] = set()
    repeated: set[str] = set()
    kept = []
    for run in runs:
        where = os.path.realpath(run[0])
        if where in seen:
            repeated.add(where)
        else:
            seen.add(where)
            kept.append(run)
    if repeated and log:
        twice = len(repeated)
        log(f"plot: {count(twice, 'run')} given more than once (overlapping targets, or sweeps sharing a --runs-dir) "
            f"{'is' if twice == 1 else 'are'} drawn once")
    return kept


def _setting_key(s: dict[str, Any]) -> str | None:
    """The identity of a manifest's setting, computed now as it is for its runs (None for a manifest written
    before settings recorded their config)."""
    if not isinstance(s.get("config"), dict):
        return None
    try:
        return config_key(canonical_saved(TrainConfig.from_saved(s["config"])))
    except (UsageError, TypeError, ValueError):
        return None


PUBLISHED_COLUMNS = ("published_preset", "published_top1", "published_top5", "best_minus_published")


def _recipe(config: TrainConfig) -> str | None:
    """The settings of ``config`` that make its training, as one text to compare (not those of
    :func:`~reste.rundir.recipe_free`, of a run of one process, as a sweep's); None when it does not resolve."""
    try:
        canonical = canonical_saved(config)
    except (UsageError, TypeError, ValueError):
        return None
    free = recipe_free(canonical)
    return json.dumps({k: v for k, v in canonical.to_dict().items() if k not in free}, sort_keys=True, default=str)


@functools.lru_cache(maxsize=1)
def _preset_recipes() -> dict[str, str]:
    """{recipe: preset name} of reste's presets."""
    return {_recipe(config_from_preset(name)): name for name in PRESETS}


def trained_preset(config: TrainConfig) -> str | None:
    """The preset whose recipe ``config`` trains (another one than its ``preset``, maybe: ``--grid estimator=ste``
    on cifar10-resnet20-1w1a trains cifar10-resnet20-ste's); None where it trains none."""
    return _preset_recipes().get(_recipe(config))


def published(manifest: dict[str, Any]) -> list[str | None] | None:
    """Per setting of the sweep, the preset whose recipe it trains (its published numbers apply: the paper's one run),
    None where it trains none (another estimator option, fewer epochs, bf16, ...); None in all when the sweep has no
    published column: its base names no preset of reste's and no setting trains one's recipe."""
    names = []
    for s in manifest["settings"]:
        config = s.get("config")
        try:
            names.append(trained_preset(TrainConfig.from_saved(config)) if isinstance(config, dict) else None)
        except (UsageError, TypeError, ValueError):
            names.append(None)
    return names if any(names) or manifest["base"].get("preset") in PRESETS else None


RUN_COLUMNS = ("best_acc", "best_epoch", "final_acc", "final_top5", "epochs", "seconds", *INDICATORS)


def _whole(metrics: list[dict[str, Any]], epochs: Any) -> bool:
    """Whether ``metrics`` (an earlier report's epochs.csv lines of one run) hold each of its ``epochs`` in order."""
    return bool(metrics) and isinstance(epochs, int) and [m.get("epoch") for m in metrics] == list(
        range(1, epochs + 1)) and all(isinstance(m.get("test_acc"), (int, float)) for m in metrics)


def collect(out_dir: str | Path, log: Callable[[str], None] | None = None
            ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(manifest, per-run rows, per-setting rows) of the sweep in ``out_dir``.

    A run is reported when :func:`run_status` says it is done. One that cannot be reported now (its folder
    moved or deleted, its checkpoints removed with its settings, a file damaged, its settings changed) keeps the
    row an earlier report wrote for it in runs.csv (and its epochs in epochs.csv): those tables are the record
    that outlives the run folders. ``log`` gets a line for each run kept so, or left out, and why."""
    out = Path(out_dir)
    manifest = load_manifest(out)
    earlier = earlier_rows(out)
    axes = list(manifest["grid"])
    runs, rows, kept = [], [], 0
    for s in manifest["settings"]:
        finished, diverged = [], 0
        key = _setting_key(s)
        shown = printable(s["label"])  # (a received sweep.json's: its control characters escaped, review diff28 #4)
        for seed, rel in s["runs"].items():
            rel = folder_name(rel)
            folder = run_folder(out, s, seed)
            status, summary = run_status(folder, key)
            if status != "done":
                why, old = summary, kept_row(earlier, (rel, int(seed)))
                if old is None or old.get("best_acc") is None:
                    diverged += status == "diverged"  # a run an earlier report kept counts as reported only
                    if status != "pending" and log:
                        log(f"report: {shown} seed {seed} is left out: {why}")
                    continue
                summary = {k: old.get(k) for k in RUN_COLUMNS} | {"metrics": old["metrics"]}
                if summary["best_epoch"] is None and _whole(old["metrics"], summary["epochs"]):  # an older table's
                    summary.update({k: v for k, v in _accuracy(old["metrics"]).items() if k not in ("best_acc",
                                                                                                   "final_acc")})
                kept += 1
                if status == "pending":  # (what the sweep and show say of a run it cannot continue: chaos4 #7)
                    why = ("its run folder is gone" if not (out / rel).exists() else blocked(folder)
                           or lost_last(folder, read=False) or "its run is unfinished (training again?)")
                if log:
                    log(f"report: {shown} seed {seed}: {why.rstrip('?.')}; the row an earlier report wrote is kept")
            gaps = sum(map(unmeasured, summary.get("metrics") or []))
            if gaps and log:  # (review diff27 #3) its run-level values cover fewer epochs than its seed-mates'
                log(f"report: {shown} seed {seed}: {count(gaps, 'epoch')} of which nothing was measured (every step "
                    "skipped) left out of its indicators")
            odd = [k for k in INDICATORS if isinstance(summary.get(k), float) and not math.isfinite(summary[k])]
            if odd and log:  # (review stats1 #1: statistics.stdev raised on it, and no table was written)
                log(f"report: {shown} seed {seed}: its {' and '.join(odd)} {'is' if len(odd) == 1 else 'are'} "
                    f"not finite ({', '.join(str(summary[k]) for k in odd)}); left out of the setting's mean")
            runs.append({"setting": s["label"], **{a: s["values"].get(a) for a in axes}, "seed": int(seed),
                         **summary, "run_dir": rel})
            finished.append(summary)
        row: dict[str, Any] = {"setting": s["label"], **{a: s["values"].get(a) for a in axes}}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([f[metric] for f in finished])
        row["n"] = len(finished)
        row["n_runs"] = len(s["runs"])
        row["n_diverged"] = diverged
        rows.append(row)
    presets = published(manifest)
    for row, name in zip(rows, presets or []):
        preset = PRESETS.get(name)
        best = row["best_acc_mean"]
        row.update(zip(PUBLISHED_COLUMNS, (name, *((preset.top1, preset.top5) if preset else (None, None)),
                                            best - preset.top1 if preset and best is not None else None)))
    if kept and log:
        log(f"report: {kept} run{'s' * (kept != 1)} reported from the runs.csv (and epochs.csv) an earlier report "
            "wrote; delete a row there to drop a run")
    named = {(folder_name(rel), int(seed)) for s in manifest["settings"] for seed, rel in s["runs"].items()}
    labels = {(s["label"], int(seed)) for s in manifest["settings"] for seed in s["runs"]}  # (a moved sweep's
    gone = sorted(key for key, row in earlier.items()  # rows name its runs by other relative folders)
                  if key not in named and (row.get("setting"), row["seed"]) not in labels)
    if gone and log:  # a sweep never leaves out a setting it had (it refuses): its sweep.json was edited by hand?
        log(f"report: {count(len(gone), 'row')} of the earlier runs.csv {'names' if len(gone) == 1 else 'name'} no "
            f"run of {out / MANIFEST} (edited?), and go: {', '.join(folder for folder, _ in gone[:3])}"
            f"{', ...' if len(gone) > 3 else ''}")
    return manifest, runs, rows


def _cell(value: Any) -> str:
    """A table's cell: text that would start a spreadsheet formula after a "'" (``wording.spreadsheet_text``), which
    _value takes off again; numbers as they are (-0.5 stays a number)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return spreadsheet_text(value) if isinstance(value, str) else str(value)


def write_text(path: Path, text: str) -> None:
    """``path`` holds ``text`` (UTF-8), written atomically: a sweep and a ``reste report`` writing the same table at
    once, or a kill mid-write, leave the old file or the new one, never a torn one. A file that cannot be written is a
    one-line ``UsageError`` (review chaos4 #8: a read-only study's folder gave Python's PermissionError)."""
    try:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise UsageError(f"cannot write {path} ({why}); make {path.parent} writable (its mode, its owner, a full disk) "
                         "and run the command again") from None


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str] = ()) -> None:
    """``rows`` as a table with a header: their keys, or ``columns`` where there is no row (a table with no run yet
    is its header alone, which a reader tells from a damaged file; an empty file it could not: review
    experiments #7)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else list(columns))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    write_text(path, text.getvalue())


def _pm(mean: float | None, std: float | None, fmt: str, std_fmt: str | None = None) -> str:
    """``mean ± std``; with a ``g`` format, the mean to the place of the std's last digit shown (``fmt``'s
    significant digits alone wrote an error of 229.03 ± 0.23 as "229 ± 0.23", of 3.0 ± 1.5 as "3 ± 1.5")."""
    if mean is None:
        return "-"
    if std is None:
        return format(mean, fmt)
    spread = format(std, std_fmt or fmt)
    if not (fmt.endswith("g") and mean and math.isfinite(mean) and std and math.isfinite(std)):
        return f"{format(mean, fmt)} ± {spread}"
    last = int(decimal.Decimal(spread).as_tuple().exponent)  # the place of the std's last digit shown
    with decimal.localcontext() as exact:
        exact.prec = 800  # (the place of any float's spread: quantize is exact, never InvalidOperation)
        rounded = decimal.Decimal(mean).quantize(decimal.Decimal(1).scaleb(last))
    # (its digits counted after the rounding: 9.996 ± 0.05 carries to 10.00, one digit more: review diff28 #5)
    if not rounded:  # a mean that rounds to 0 at the spread's place: 0.004 ± 0.05 is "0.00 ± 0.05"
        return f"{0.0:.{max(-last, 0)}f} ± {spread}"
    digits = max(rounded.adjusted() - last + 1, 1)
    # (# keeps the zeros that reach that place: 145.98 ± 4.1 is "146.0 ± 4.1", not "146 ± 4.1")
    shown = format(float(rounded), f"#.{min(digits, 12)}g").replace(".e", "e")
    return f"{shown.removesuffix('.')} ± {spread}"


def table_cells(r: dict[str, Any]) -> list[str]:
    """A setting's best and final accuracy and its two indicators, ``mean ± std``, as the results.md tables show
    them (``reste sweep``'s and ``reste report``'s, and docs/results/combine.py's)."""
    return [_pm(r["best_acc_mean"], r["best_acc_std"], ".2f"), _pm(r["final_acc_mean"], r["final_acc_std"], ".2f"),
            _pm(r["estimating_error_mean"], r["estimating_error_std"], ".4g", ".2g"),
            _pm(r["gradient_stability_mean"], r["gradient_stability_std"], ".3g", ".2g")]


def _indicator_rule(mode: str | None, varies: bool = False) -> str:
    """How the table's indicators are made from the epochs', for its heading (``varies``: the grid sets the mode)."""
    if varies:
        return "; indicators: each setting's own mode (paper: error mean, stability sum over epochs; general: means)"
    if not mode:
        return ""
    error, stability = RUN_LEVEL[mode]
    return (f"; indicators ({mode} mode): estimating error {error}, gradient stability {stability}"
            + (" (the authors' aggregate)" if mode == "paper" else ""))


PAPER_ACROSS_ESTIMATORS = ("paper-mode estimating error uses ReSTE's F at o_end (3 for an estimator without one) "
                           "for every estimator: it measures the weights, not the estimator, and does not compare "
                           "across estimators (use --indicators general)")


def paper_mode_estimators(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The estimators of ``configs`` (settings' configs) trained with paper-mode indicators when there are several:
    their paper-mode errors do not compare (:data:`PAPER_ACROSS_ESTIMATORS`); [] when they do."""
    names = sorted({str(c.get("estimator")) for c in configs if isinstance(c, dict) and c.get("indicators") == "paper"})
    return names if len(names) > 1 else []


def paper_warning(manifest: dict[str, Any]) -> str:
    """:data:`PAPER_ACROSS_ESTIMATORS`, naming the estimators, when the sweep compares several in paper mode."""
    return configs_paper_warning([s.get("config") or {**manifest["base"], **s.get("values", {})}
                                  for s in manifest["settings"]])


def configs_paper_warning(configs: Sequence[dict[str, Any]]) -> str:
    """:func:`paper_warning` of runs' or settings' configs (their "estimator" and "indicators")."""
    names = paper_mode_estimators(configs)
    return f"WARNING ({', '.join(names)}): {PAPER_ACROSS_ESTIMATORS}" if names else ""


def _shared(manifest: dict[str, Any], field: str) -> tuple[bool, Any]:
    """(whether every setting trains with the same ``field``, that value): from the settings' own configs (the
    defaults resolved, the grid applied); a manifest written before they were recorded gives its base's."""
    configs = [s.get("config") for s in manifest["settings"]]
    if not configs or not all(isinstance(c, dict) for c in configs):
        return True, manifest["base"].get(field)
    values = {json.dumps(c.get(field), sort_keys=True) for c in configs}
    return len(values) == 1, configs[0].get(field)


def markdown_table(manifest: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    base = manifest["base"]
    rule = _indicator_rule(base.get("indicators"), "indicators" in manifest["grid"])
    sums = base.get("indicators") == "paper" or "indicators" in manifest["grid"]  # paper mode sums the stability
    (one_set, dataset), (one_model, model), (one_count, epochs) = (
        _shared(manifest, f) for f in ("dataset", "model", "epochs"))
    one_options, options = _shared(manifest, "model_options")
    opts = ", ".join(f"{k}={v}" for k, v in (options or {}).items()) if one_options else "options per setting"
    count = ((f"{epochs} epoch{'s' * (epochs != 1)}" if epochs else "the data set's default epochs") if one_count
             else "epochs per setting")
    head = (f"{dataset if one_set else 'data set per setting'}, "
            f"{(model or 'default model') if one_model else 'model per setting'}{f' ({opts})' if opts else ''}, "
            f"{count}, "
            f"seeds {', '.join(map(str, manifest['seeds']))}; mean ± sample std over seeds{rule}"
            + ("; NOTE: the stability sums run over each setting's own number of epochs, which differ here, so "
               "they do not compare" if not one_count and sums else "") + ".")
    warning = paper_warning(manifest)
    if warning:
        head += f"\n\n**{warning}.**"
    shown = any("published_top1" in r for r in rows)
    if shown:
        head += "\n\n" + PUBLISHED_NOTE
    lines = [head, "",
             "| setting | best acc (%) |" + (" published (%) | best - published |" if shown else "")
             + " final acc (%) | estimating error | gradient stability | n |",
             "|---|---|" + ("---|---|" if shown else "") + "---|---|---|---|"]
    for r in rows:
        paper = ""
        if shown:
            top1, top5, gap = r.get("published_top1"), r.get("published_top5"), r.get("best_minus_published")
            paper = (f" {'-' if top1 is None else format(top1, '.2f')}{f' ({top5:.2f})' if top5 else ''} | "
                     f"{'-' if gap is None else format(gap, '+.2f')} |")
        # a received sweep.json's |, line break or backslash (which would escape the \ before a |) breaks no cell
        label = printable(" ".join(str(r["setting"]).split())).replace("\\", "\\\\").replace("|", "\\|")
        best, final, error, stability = table_cells(r)
        lines.append(
            f"| {label} | {best} |{paper} {final} | {error} | {stability} | "
            f"{r['n']}{'' if r['n'] == r['n_runs'] else '/' + str(r['n_runs'])}"
            f"{f', {diverged} diverged' if (diverged := r.get('n_diverged')) else ''} |"
        )
    return "\n".join(lines) + "\n"


def summarize(out_dir: str | Path, *, plots: bool = True, log: Callable[[str], None] | None = None
              ) -> list[dict[str, Any]]:
    """Write the sweep's tables (``results.csv``, ``results.md``, ``runs.csv``, ``epochs.csv``) and figures;
    return its rows.

    Works on a sweep that is still running (unfinished runs are left out unless an earlier report wrote their
    rows, which are kept; ``n`` counts the seeds reported and ``n_runs`` the planned ones).
    """
    out = Path(out_dir)
    # one process at a time collects and writes them: a report that collected before the sweep's last run ended wrote
    # its older tables over the sweep's final ones (review chaos5 #5). Unlocked where nothing can be (a folder that
    # cannot be written: the writes then say so)
    with exclusive(out / TABLES_LOCK, unopened_ok=True):
        return _summarize(out, plots, log)


TABLES_LOCK = ".tables.lock"  # in a sweep folder: held while one process collects and writes its tables


def _summarize(out: Path, plots: bool, log: Callable[[str], None] | None) -> list[dict[str, Any]]:
    manifest, runs, rows = collect(out, log)
    write_csv(out / RESULTS_CSV, rows)
    write_csv(out / RUNS_CSV, [{k: v for k, v in r.items() if k != "metrics"} for r in runs],
              ["setting", *manifest["grid"], "seed", *RUN_COLUMNS, "run_dir"])
    epochs = epoch_rows(out, runs)
    if epochs or (out / EPOCHS_CSV).exists():  # no table of no epochs where there never was one
        write_csv(out / EPOCHS_CSV, epochs, ["setting", "seed", *EPOCH_COLUMNS])
    write_text(out / RESULTS_MD, markdown_table(manifest, rows))
    written = [RESULTS_MD, RESULTS_CSV, RUNS_CSV] + ([EPOCHS_CSV] if (out / EPOCHS_CSV).exists() else [])
    if plots:
        from . import plots as plotting

        drawn = plotting.sweep_figures(out, manifest, rows, runs, paper_warning(manifest)) if runs else []
        wanted = plotting.wanted_figures(manifest, rows)
        for name in set(plotting.SWEEP_FIGURES) - set(wanted):  # an earlier sweep's, which these tables do not show
            (out / name).unlink(missing_ok=True)
        if log and set(wanted) - set(drawn):
            log(f"report: {', '.join(sorted(set(wanted) - set(drawn)))} not drawn (no run's epochs at hand: their "
                "folders are gone and epochs.csv holds none of them); an existing one is left as it is")
        written += drawn
    if log:
        log(f"wrote {', '.join(str(out / w) for w in written)}")
    return rows

