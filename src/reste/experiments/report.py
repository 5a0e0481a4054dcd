"""Tables and figures of a sweep: ``summarize(out_dir)``.

Per run (``runs.csv``): best and final test top-1, and the run-level indicators,
each the mean over the epochs of the per-epoch values in ``metrics.jsonl``.
Per epoch of every finished run (``epochs.csv``): its line of ``metrics.jsonl``, so
that the learning curves outlive the run folders (which are not committed).
Per setting (``results.csv``, ``results.md``): the mean and the sample standard
deviation (n - 1; blank for one seed) of those over the seeds whose run finished,
and n. Figures: ``indicators.png`` (both indicators per epoch, one line per
setting, mean over seeds), ``error_vs_stability.png`` (one point per setting) and,
when ``o_end`` is a grid axis, ``accuracy_vs_o_end.png``.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError
from ..indicators import RUN_LEVEL, run_level
from ..rundir import CONFIG, METRIC_FIELDS, finished_epochs, last_checkpoint, read_metrics, saved_config

MANIFEST = "sweep.json"  # the sweep folder's plan: base config, grid, seeds, settings and their runs

METRICS = ("best_acc", "final_acc", "estimating_error", "gradient_stability")
INDICATORS = ("estimating_error", "gradient_stability")


def run_summary(run_dir: Path) -> dict[str, Any] | None:
    """best/final accuracy and the run-level indicators (``reste.indicators.run_level``: the authors' aggregate in
    paper mode) of a finished run; None while it is not finished."""
    if not (run_dir / CONFIG).is_file() or not last_checkpoint(run_dir).is_file():
        return None
    epochs = saved_config(run_dir).epochs
    if finished_epochs(run_dir) < epochs:
        return None
    metrics = read_metrics(run_dir)[:epochs]
    row: dict[str, Any] = {
        "best_acc": max(m["test_acc"] for m in metrics),
        "final_acc": metrics[-1]["test_acc"],
        "epochs": len(metrics),
        "seconds": sum(m.get("time", 0.0) for m in metrics),
    }
    history = [m for m in metrics if all(k in m for k in INDICATORS)]
    row.update(dict.fromkeys(INDICATORS), **run_level(history, saved_config(run_dir).indicators or "general"))
    return row


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def load_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MANIFEST
    if not path.is_file():
        raise UsageError(f"{out_dir} is not a sweep folder (no {MANIFEST}); run `reste sweep --out {out_dir}` first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is damaged ({str(err)[:80]}); run the sweep again to rewrite it") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("grid"), dict)
            and isinstance(manifest.get("settings"), list)):
        raise UsageError(f"{path} is not a sweep manifest (no grid and settings); run the sweep again to rewrite it")
    return manifest


EPOCH_COLUMNS = METRIC_FIELDS


def epoch_rows(out_dir: str | Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch of each finished run in ``runs`` (``collect``'s): setting, seed, then EPOCH_COLUMNS."""
    rows = []
    for run in runs:
        for m in read_metrics(Path(out_dir) / run["run_dir"])[:run["epochs"]]:
            rows.append({"setting": run["setting"], "seed": run["seed"], **{k: m.get(k) for k in EPOCH_COLUMNS}})
    return rows


def collect(out_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(manifest, per-run rows, per-setting rows) of the sweep in ``out_dir``."""
    out = Path(out_dir)
    manifest = load_manifest(out)
    axes = list(manifest["grid"])
    runs, rows = [], []
    for s in manifest["settings"]:
        finished = []
        for seed, rel in s["runs"].items():
            run_dir = out / rel
            summary = run_summary(run_dir)
            if summary is None:
                continue
            runs.append({"setting": s["label"], **{a: s["values"].get(a) for a in axes}, "seed": int(seed),
                         **summary, "run_dir": rel})
            finished.append(summary)
        row: dict[str, Any] = {"setting": s["label"], **{a: s["values"].get(a) for a in axes}}
        for key in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([f[key] for f in finished])
        row["n"] = len(finished)
        row["n_runs"] = len(s["runs"])
        rows.append(row)
    return manifest, runs, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _pm(mean: float | None, std: float | None, fmt: str, std_fmt: str | None = None) -> str:
    if mean is None:
        return "-"
    return format(mean, fmt) + (f" ± {format(std, std_fmt or fmt)}" if std is not None else "")


def _indicator_rule(mode: str | None, varies: bool = False) -> str:
    """How the table's indicators are made from the epochs', for its heading (``varies``: the grid sets the mode)."""
    if varies:
        return "; indicators: each setting's own mode (paper: error mean, stability sum over epochs; general: means)"
    if not mode:
        return ""
    error, stability = RUN_LEVEL[mode]
    return (f"; indicators ({mode} mode): estimating error {error}, gradient stability {stability}"
            + (" (the authors' aggregate)" if mode == "paper" else ""))


def markdown_table(manifest: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    base = manifest["base"]
    opts = ", ".join(f"{k}={v}" for k, v in base.get("model_options", {}).items())
    rule = _indicator_rule(base.get("indicators"), "indicators" in manifest["grid"])
    head = (f"{base['dataset']}, {base['model'] or 'default model'}{f' ({opts})' if opts else ''}, "
            f"{base['epochs']} epochs, seeds {', '.join(map(str, manifest['seeds']))}; "
            f"mean ± sample std over seeds{rule}.")
    lines = [head, "",
             "| setting | best acc (%) | final acc (%) | estimating error | gradient stability | n |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {_pm(r['best_acc_mean'], r['best_acc_std'], '.2f')} | "
            f"{_pm(r['final_acc_mean'], r['final_acc_std'], '.2f')} | "
            f"{_pm(r['estimating_error_mean'], r['estimating_error_std'], '.4g', '.2g')} | "
            f"{_pm(r['gradient_stability_mean'], r['gradient_stability_std'], '.3g', '.2g')} | "
            f"{r['n']}{'' if r['n'] == r['n_runs'] else '/' + str(r['n_runs'])} |"
        )
    return "\n".join(lines) + "\n"


def summarize(out_dir: str | Path, *, plots: bool = True, log: Callable[[str], None] | None = None
              ) -> list[dict[str, Any]]:
    """Write the sweep's tables (``results.csv``, ``results.md``, ``runs.csv``, ``epochs.csv``) and figures;
    return its rows.

    Works on a sweep that is still running (unfinished runs are left out; ``n``
    counts the finished seeds and ``n_runs`` the planned ones).
    """
    out = Path(out_dir)
    manifest, runs, rows = collect(out)
    write_csv(out / "results.csv", rows)
    write_csv(out / "runs.csv", runs)
    write_csv(out / "epochs.csv", epoch_rows(out, runs))
    (out / "results.md").write_text(markdown_table(manifest, rows))
    written = ["results.md", "results.csv", "runs.csv", "epochs.csv"]
    if plots and runs:
        from . import plots as plotting

        written += plotting.sweep_figures(out, manifest, rows)
    if log:
        log(f"wrote {', '.join(str(out / w) for w in written)}")
    return rows

