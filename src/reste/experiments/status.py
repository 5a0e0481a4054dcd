"""``reste show SWEEP_DIR``: where a sweep stands, run by run, read from its ``sweep.json`` and each run's
``config.json`` and ``metrics.jsonl`` (:func:`reste.runinfo.run_summary`): nothing is locked, trained or written,
so a sweep still running can be shown. ``reste report`` writes its tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UsageError, shell_word
from ..rundir import SWEEP_LOCK, blocked, holds_run, lock_holder, run_config, sweeps_inside_hint
from ..runinfo import run_summary, show_run
from ..wording import count, printable
from .report import (RESULTS_MD, _setting_key, changed_settings, earlier_rows, folder_name, is_sweep_folder, kept_row,
                     load_manifest, lost_last, missing_line, recorded_end, run_folder)

# a run's state in a sweep: run_summary's, and those of a run that cannot be summarised
STATES = ("finished", "training", "stopped", "training or stopped", "diverged", "failed", "damaged", "changed",
          "not started")


def _run_status(run_dir: Path, epochs: int | None = None, key: str | None = None) -> dict[str, Any]:
    """One run of a sweep: its state (:data:`STATES`), epochs done and planned (``epochs``, the sweep's plan, where
    the run's own settings are missing), best top-1 and epoch, pid. ``key``: its setting's identity, which a run
    changed since with ``reste train --resume --force`` no longer has ("changed", as ``report.run_status`` says)."""
    entry: dict[str, Any] = {"run_dir": os.fspath(run_dir), "state": "not started", "epochs_done": 0,
                             "epochs": epochs, "best": None, "pid": None, "why": None, "reported": None}
    if not holds_run(run_dir):  # a run that diverged in its first epoch, or failed at its start, leaves only the
        record = recorded_end(run_dir)  # sweep's record of it
        stuck = blocked(run_dir) if record is None else None  # (which the sweep leaves out, as damaged)
        return {**entry, "state": record[0], "why": record[1]} if record else \
            {**entry, "state": "damaged", "why": stuck} if stuck else entry
    try:
        summary = run_summary(run_dir, steps=False)  # (its last.pt unread: a line per run of many)
        changed = changed_settings(run_config(run_dir, checked=True), key)
    except UsageError as err:  # a damaged file: the others are still shown
        return {**entry, "state": "damaged", "why": str(err)}
    if changed:  # not its setting's run, whatever its epochs: the sweep stops at it, the report leaves it out
        return {**entry, "state": "changed", "why": changed, "epochs_done": summary["epochs_done"],
                "epochs": summary["config"]["epochs"], "pid": summary["pid"], "best": summary["best"]}
    if summary["lost_epochs"]:  # which the sweep leaves out (report.run_status), not "stopped", which it continues
        return {**entry, "state": "damaged", "why": missing_line(run_dir, summary["lost_epochs"][0])}
    state = summary["state"] or ("finished" if summary["finished"] else "training or stopped")
    # (its last.pt's zip structure and header alone are read, no tensor: a line per run of many, review rev16 #7,
    # chaos2 #2, diff13 #5; a changed byte inside it the sweep finds)
    lost = lost_last(run_dir, read=False) if state in ("stopped", "training or stopped") else None
    if lost:  # which the sweep leaves out, as damaged: no resume can continue it
        return {**entry, "state": "damaged", "why": lost, "epochs_done": summary["epochs_done"],
                "epochs": summary["config"]["epochs"], "best": summary["best"]}
    record = recorded_end(run_dir) if state != "training" else None  # (a run training again is training)
    if record and state == "finished":  # every epoch logged: finished, as the sweep and the report count it (review
        record = None  # chaos2 #6: a stray or damaged diverged.json; a failed.json where another sweep finished it)
    entry.update(epochs_done=summary["epochs_done"], epochs=summary["config"]["epochs"], pid=summary["pid"],
                 best=summary["best"], state=record[0] if record else state, why=record[1] if record else None)
    return entry


def sweep_status(out_dir: str | os.PathLike) -> dict[str, Any]:
    """What ``reste show SWEEP_DIR --json`` prints: ``sweep_dir``; ``running`` (the pid of the sweep process that
    holds the folder, -1 when one does whose pid the lock table does not give, 0 when none does, None where that
    cannot be told: not Linux, a shared file system); ``counts`` (runs in each of :data:`STATES`); ``settings``, each
    with its ``label``, grid ``values`` and ``runs`` (``seed``, ``run_dir``, ``state``, ``epochs_done``, ``epochs``
    (the sweep's plan for a run not started), ``best``: epoch and top-1 of the best epoch so far, ``pid`` of a run
    training now, ``why`` a run diverged, is damaged or was changed, ``reported``: for a run not started whose folder
    is gone, or one changed since, the best top-1 and epoch of the row an earlier report wrote and ``reste report``
    keeps, else None)."""
    out = Path(out_dir)
    manifest = load_manifest(out)
    earlier = earlier_rows(out)
    settings = []
    counts = dict.fromkeys(STATES, 0)
    for s in manifest["settings"]:
        runs = []
        planned = s["config"].get("epochs") if isinstance(s.get("config"), dict) else None
        key = _setting_key(s)
        for seed in s["runs"]:
            entry = {"seed": int(seed), **_run_status(run_folder(out, s, seed), planned, key)}
            row = (kept_row(earlier, (folder_name(s["runs"][seed]), int(seed)))
                   if entry["state"] in ("not started", "changed") else None)  # (used only then: rev16 #2)
            if row is not None and row.get("best_acc") is not None:
                entry["reported"] = {"best_acc": row["best_acc"], "best_epoch": row.get("best_epoch")}
            counts[entry["state"]] += 1
            runs.append(entry)
        settings.append({"label": s["label"], "values": s["values"], "runs": runs})
    return {"sweep_dir": os.fspath(out_dir), "running": lock_holder(out, SWEEP_LOCK), "counts": counts,
            "settings": settings}


def show_sweep(out_dir: str | os.PathLike) -> str:
    """What ``reste show SWEEP_DIR`` prints: :func:`sweep_status` as lines, a line per run."""
    status = sweep_status(out_dir)
    total = sum(status["counts"].values())
    n_set = len(status["settings"])
    running = status["running"]
    process = ("a sweep process runs it now" + (f" (pid {running})" if running > 0 else "") if running
               else "no sweep process runs it now" if running == 0 else "whether a sweep process runs it cannot be "
               "told here")
    lines = [f"sweep      {out_dir}: {count(n_set, 'setting')}, {count(total, 'run')}; {process}",
             "progress   " + ", ".join(f"{n} {state}" for state, n in status["counts"].items() if n)]
    width = max((len(printable(s["label"])) for s in status["settings"]), default=0)
    for s in status["settings"]:  # (a received sweep.json's label, its control characters escaped: review sec3 #6)
        for i, run in enumerate(s["runs"]):
            label = (printable(s["label"]) if i == 0 else "").ljust(width)
            lines.append(f"  {label}  seed {run['seed']}: {_run_line(run)}")
    changed = status["counts"]["changed"]
    if changed:
        them = "it" if changed == 1 else "them"
        lines.append(f"changed    {count(changed, 'run')} {'holds' if changed == 1 else 'hold'} other settings than "
                     f"{'its' if changed == 1 else 'their'} setting (`reste train --resume --force`): the sweep stops "
                     f"at {them}, and the report counts {them} only by a row an earlier report wrote; move {them} "
                     "away, or pass another --runs-dir")
    left = sum(status["counts"][k] for k in ("stopped", "training or stopped", "failed", "not started"))
    if left and running == 0:
        lines.append(f"continue   the same `reste sweep` command trains the {count(left, 'run')} left (finished runs "
                     "are skipped, stopped ones resume)")
    shown = [r["run_dir"] for s in status["settings"] for r in s["runs"] if r["state"] != "not started"
             and holds_run(r["run_dir"])]  # a run `reste show` can show (not one that diverged at once)
    written = Path(out_dir) / RESULTS_MD  # (review newuser5: "writes them" beside tables written already)
    tables = (f"{shell_word(written)} (`reste report {shell_word(out_dir)}` writes them again, also while it runs)"
              if written.is_file() else f"`reste report {shell_word(out_dir)}` writes them (also while it runs)")
    lines.append(f"tables     {tables}; one run: `reste show {shell_word(shown[0]) if shown else 'RUN_DIR'}`")
    return "\n".join(lines)


def _run_line(run: dict[str, Any]) -> str:
    state, best = run["state"], run["best"]
    if state == "not started" and run.get("reported"):  # its folder deleted or moved after a report
        kept = run["reported"]
        at = f" at epoch {kept['best_epoch']}" if kept["best_epoch"] is not None else ""
        return (f"not started: its folder is gone, and the row an earlier report wrote is kept (best "
                f"{kept['best_acc']:.2f}%{at}); the sweep would train it again")
    if state == "not started":
        return "not started"
    if state == "damaged":
        return f"damaged: {run['why']}"
    if state == "changed":
        kept = run.get("reported")
        at = f" at epoch {kept['best_epoch']}" if kept and kept["best_epoch"] is not None else ""
        return (f"changed: {run['why'].rstrip('?')}; " + (f"the row an earlier report wrote is kept (best "
                f"{kept['best_acc']:.2f}%{at})" if kept else "not counted in the tables"))
    done = f"{run['epochs_done']} of {run['epochs']} epochs"
    best_text = f", best {best['test_acc']:.2f}% at epoch {best['epoch']}" if best else ""
    if state == "training":
        pid = f" (pid {run['pid']})" if run["pid"] else ""
        return f"{done}: training now{pid}{best_text}"
    if state == "diverged":
        return f"{run['why']} after {done}"
    if state == "failed":  # (the sweep trains it again)
        return f"{done}: {run['why']}" if run["epochs_done"] else run["why"]
    if state == "finished":
        return f"finished{best_text}"
    return f"{done}: {state}{best_text}"


def folder_summary(path: str | os.PathLike) -> dict[str, Any]:
    """``reste show --json`` of a run's folder (:func:`reste.runinfo.run_summary`) or a sweep's
    (:func:`sweep_status`)."""
    _check_not_parent(path)
    return sweep_status(path) if is_sweep_folder(path) else run_summary(path)


def show_folder(path: str | os.PathLike) -> str:
    """``reste show`` of a run's folder (:func:`reste.runinfo.show_run`) or a sweep's (:func:`show_sweep`)."""
    _check_not_parent(path)
    return show_sweep(path) if is_sweep_folder(path) else show_run(path)


def _check_not_parent(path: str | os.PathLike) -> None:
    """A folder that holds sweeps one level down, and is no run (``sweeps`` of ``sweeps/est``): a one-line error
    naming them (review newuser3 #4; it said to pass a run's folder)."""
    if not holds_run(path) and not is_sweep_folder(path):
        hint = sweeps_inside_hint(path, "show")
        if hint:
            raise UsageError(hint)
