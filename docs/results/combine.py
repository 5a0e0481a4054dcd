"""Join the runs of several sweeps into one sweep-like folder (runs.csv, results.csv, results.md).

    python docs/results/combine.py OUT SWEEP [SWEEP ...] --settings LABEL,LABEL,... [--alias FROM TO ...]

For a study whose sweeps share runs: estimators_5seeds is ReSTE and the three strongest other
estimators at seeds 0-4, and every one of its runs is also a run of the estimators sweep (seeds 0-2),
of o_end_5seeds (ReSTE at o_end 3 is ReSTE's default) or of strongest_seeds34. Once the run folders
are gone, their runs.csv rows are all there is; this script joins them, so that paired.py reads the
joined folder as it reads a sweep.

--alias gives a setting of a source sweep the label it has in OUT (o_end=3 -> estimator=reste), and
--settings lists OUT's settings in order. A (setting, seed) that two sweeps hold must be the same run
(the same run folder and the same accuracies), else the script stops: an alias that joins two
different runs is refused rather than averaged. Aggregates are as `reste sweep` writes them: mean and
sample std over the seeds, and n.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from reste.experiments.plots import error_vs_stability_figure, o_end_figure  # and its figures
from reste.experiments.report import METRICS, _mean_std, _pm, write_csv  # as `reste sweep` writes its tables

COLUMNS = ("setting", "estimator", "seed", *METRICS, "epochs", "seconds", "run_dir", "sweep")


def read_rows(sweeps: list[str], keep: list[str], aliases: dict[str, str]) -> dict[tuple[str, int], dict]:
    """(setting, seed) -> row, over the sweeps' runs.csv; refuses two different runs under one key. Each row
    carries its setting's axis as a column (o_end = 3 for a ReSTE run aliased to o_end=3), as o_end.py reads it."""
    rows: dict[tuple[str, int], dict] = {}
    for sweep in sweeps:
        path = Path(sweep) / "runs.csv"
        if not path.is_file():
            sys.exit(f"combine.py: {sweep} has no runs.csv; give the folders of finished sweeps")
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                setting = aliases.get(row["setting"], row["setting"])
                if setting not in keep:
                    continue
                axis, value = setting.split("=", 1)
                key = (setting, int(row["seed"]))
                new = {c: row.get(c, "") for c in COLUMNS} | {"setting": setting, "seed": key[1], "sweep": sweep,
                                                               axis: value}
                if axis != "estimator":  # an o_end sweep's runs.csv has no estimator column: it is ReSTE's
                    new["estimator"] = row.get("estimator") or "reste"
                old = rows.get(key)
                if old is None:
                    rows[key] = new
                elif (old["run_dir"], old["best_acc"], old["final_acc"]) != (new["run_dir"], new["best_acc"],
                                                                           new["final_acc"]):
                    sys.exit(f"combine.py: {setting} seed {key[1]} is a different run in {old['sweep']} "
                             f"({old['run_dir']}, final {old['final_acc']}) and in {sweep} ({new['run_dir']}, "
                             f"final {new['final_acc']}); check the --alias")
    return rows


def read_epochs(rows: dict[tuple[str, int], dict], aliases: dict[str, str]) -> list[dict] | None:
    """The epochs.csv lines of the joined runs, each from the sweep its runs.csv row came from, under its
    joined setting; None unless every joined run has its epochs there (sweeps write epochs.csv since
    2026-12-01): a joined folder has the curves of all its runs or of none."""
    out, have = [], set()
    for sweep in dict.fromkeys(r["sweep"] for r in rows.values()):
        path = Path(sweep) / "epochs.csv"
        if not path.is_file():
            print(f"combine.py: {sweep} has no epochs.csv, so the joined folder has no learning curves")
            return None
        with open(path, newline="") as f:
            for line in csv.DictReader(f):
                setting = aliases.get(line["setting"], line["setting"])
                key = (setting, int(line["seed"]))
                if key in rows and rows[key]["sweep"] == sweep:
                    out.append(line | {"setting": setting})
                    have.add(key)
    missing = sorted(set(rows) - have)
    if missing:
        print(f"combine.py: {len(missing)} joined runs have no lines in their sweep's epochs.csv (first: "
              f"{missing[0][0]} seed {missing[0][1]}), so the joined folder has no learning curves")
        return None
    return out


def aggregate(rows: dict[tuple[str, int], dict], keep: list[str]) -> list[dict]:
    out = []
    for setting in keep:
        runs = [r for (s, _), r in sorted(rows.items()) if s == setting]
        axis, value = setting.split("=", 1)
        agg: dict = {"setting": setting, axis: value}
        for m in METRICS:
            agg[f"{m}_mean"], agg[f"{m}_std"] = _mean_std([float(r[m]) for r in runs if r[m] not in ("", None)])
        agg["n"] = len(runs)
        agg["seeds"] = " ".join(str(r["seed"]) for r in runs)
        out.append(agg)
    return out


def figures(out: Path, table: list[dict], axes: list[str]) -> None:
    """The figures `reste sweep` draws from its per-setting table: error against stability and, on an o_end
    axis, accuracy and the indicators against o_end (its per-epoch figures need the run folders)."""
    have_ind = all(r["estimating_error_mean"] is not None for r in table)
    if have_ind:
        error_vs_stability_figure(out, table)
    if "o_end" in axes:
        o_end_figure(out, {"grid": {"o_end": []}}, table, "o_end", indicators=have_ind)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("sweeps", nargs="+")
    p.add_argument("--settings", required=True, help="OUT's settings, comma-separated, in order")
    p.add_argument("--alias", nargs=2, action="append", default=[], metavar=("FROM", "TO"))
    args = p.parse_args(argv)
    keep = args.settings.split(",")
    rows = read_rows(args.sweeps, keep, dict(args.alias))
    missing = [s for s in keep if not any(k[0] == s for k in rows)]
    if missing:
        sys.exit(f"combine.py: no run of {', '.join(missing)} in {', '.join(args.sweeps)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (keep.index(k[0]), k[1]))]
    axes = [a for a in dict.fromkeys(s.split("=", 1)[0] for s in keep) if a not in COLUMNS]
    write_csv(out / "runs.csv", [{c: r.get(c, "") for c in (*COLUMNS[:2], *axes, *COLUMNS[2:])} for r in ordered])
    epochs = read_epochs(rows, dict(args.alias))
    if epochs:
        write_csv(out / "epochs.csv", sorted(epochs, key=lambda e: (keep.index(e["setting"]), int(e["seed"]),
                                                                      int(e["epoch"]))))
    table = aggregate(rows, keep)
    write_csv(out / "results.csv", table)
    figures(out, table, axes)
    lines = [f"Joined from the runs.csv of {', '.join(args.sweeps)} by docs/results/combine.py; "
             "mean ± sample std over seeds; indicators: mean over epochs.", "",
             "| setting | best acc (%) | final acc (%) | estimating error | gradient stability | n | seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['setting']} | {_pm(r['best_acc_mean'], r['best_acc_std'], '.2f')} | "
                     f"{_pm(r['final_acc_mean'], r['final_acc_std'], '.2f')} | "
                     f"{_pm(r['estimating_error_mean'], r['estimating_error_std'], '.4g')} | "
                     f"{_pm(r['gradient_stability_mean'], r['gradient_stability_std'], '.3g')} | "
                     f"{r['n']} | {r['seeds']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} runs of {len(keep)} settings -> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
