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
different runs is refused rather than averaged, and so are runs that do not compare: of another number of
epochs or another indicator mode (paper mode sums the stability over epochs). Each joined run's run_dir is
written relative to OUT, so a script reading OUT finds (and counts once) the run a source names. Aggregates are as
`reste sweep` writes them: mean and sample std over the seeds, n, and the runs planned (n_runs) and diverged
(n_diverged) that the sources' tables name.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

# reste (and so torch) is imported inside the functions that need it: o_end.py loads this file for
# indicator_modes alone and starts in numpy's time, not torch's.


def columns() -> tuple[str, ...]:
    """runs.csv's columns of a joined folder (the metrics as `reste sweep` names them)."""
    from reste.experiments.report import METRICS
    return ("setting", "estimator", "seed", *METRICS, "epochs", "seconds", "run_dir", "sweep")


def indicator_modes(sweep: str) -> dict[str, str | None]:
    """setting -> its indicator mode ("general", "paper"; None: no indicators): from the sweep's sweep.json, else,
    for a folder this script joined, from the mode its results.md names; {} when neither says."""
    path = Path(sweep) / "sweep.json"
    if path.is_file():
        manifest = json.loads(path.read_text())
        base = manifest.get("base", {})
        return {s["label"]: (s.get("config") or {**base, **s.get("values", {})}).get("indicators")
                for s in manifest.get("settings", [])}
    md = Path(sweep) / "results.md"
    head = md.read_text().split("\n", 1)[0] if md.is_file() else ""
    for mode in ("general", "paper"):
        if f"indicators ({mode} mode)" in head:
            return {"*": mode}
    return {}


def read_rows(sweeps: list[str], keep: list[str], aliases: dict[str, str], out: str | Path = "."
              ) -> dict[tuple[str, int], dict]:
    """(setting, seed) -> row, over the sweeps' runs.csv; refuses two different runs under one key, and runs that
    do not compare (another number of epochs or indicator mode). Each row carries its setting's axis as a column
    (o_end = 3 for a ReSTE run aliased to o_end=3), as o_end.py reads it, its run_dir relative to ``out`` and its
    indicator mode under "indicators" ("?" when its sweep does not say)."""
    rows: dict[tuple[str, int], dict] = {}
    cols = columns()
    for sweep in sweeps:
        path = Path(sweep) / "runs.csv"
        if not path.is_file():
            sys.exit(f"combine.py: {sweep} has no runs.csv; give the folders of finished sweeps")
        modes = indicator_modes(sweep)
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                setting = aliases.get(row["setting"], row["setting"])
                if setting not in keep:
                    continue
                axis, value = setting.split("=", 1)
                key = (setting, int(row["seed"]))
                run_dir = Path(os.path.relpath(Path(sweep) / row["run_dir"], out)).as_posix() if row.get("run_dir") \
                    else ""
                mode = modes.get(row["setting"], modes.get("*", "?")) or "none"
                new = {c: row.get(c, "") for c in cols} | {"setting": setting, "seed": key[1], "sweep": sweep,
                                                               axis: value, "run_dir": run_dir, "indicators": mode}
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
    for field, what in (("epochs", "numbers of epochs"), ("indicators", "indicator modes")):
        seen: dict[str, dict] = {}
        for r in rows.values():
            if r[field] not in ("", "?", "none"):  # a run without indicators joins any mode: its accuracy compares
                seen.setdefault(r[field], r)
        if len(seen) > 1:
            a, b = list(seen.values())[:2]
            sys.exit(f"combine.py: the runs do not compare: other {what} ({a['setting']} seed {a['seed']} in "
                     f"{a['sweep']}: {field} {a[field]}; {b['setting']} seed {b['seed']} in {b['sweep']}: {field} "
                     f"{b[field]}); join sweeps of one configuration")
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


def unreported(sweeps: list[str], keep: list[str], aliases: dict[str, str], rows: dict[tuple[str, int], dict]
               ) -> dict[str, tuple[list[int], int]]:
    """setting -> (the seeds a source planned and no source reported, how many of them diverged): the planned runs
    from each source's sweep.json (or, for a folder this script joined, its results.csv's missing_seeds), the
    diverged ones from its results.csv's n_diverged (at most the seeds still missing)."""
    missing: dict[str, set[int]] = {s: set() for s in keep}
    diverged = dict.fromkeys(keep, 0)
    for sweep in sweeps:
        table = {}
        if (Path(sweep) / "results.csv").is_file():
            with open(Path(sweep) / "results.csv", newline="") as f:
                table = {r["setting"]: r for r in csv.DictReader(f)}
        planned: dict[str, list[int]] = {}
        if (Path(sweep) / "sweep.json").is_file():
            manifest = json.loads((Path(sweep) / "sweep.json").read_text())
            planned = {st["label"]: [int(k) for k in st.get("runs", {})] for st in manifest.get("settings", [])}
        else:
            planned = {label: [int(k) for k in (r.get("missing_seeds") or "").split()] for label, r in table.items()}
        for label, seeds in planned.items():
            setting = aliases.get(label, label)
            if setting in missing:
                missing[setting] |= {seed for seed in seeds if (setting, seed) not in rows}
                diverged[setting] = max(diverged[setting], int(table.get(label, {}).get("n_diverged") or 0))
    return {s: (sorted(missing[s]), min(diverged[s], len(missing[s]))) for s in keep}


def aggregate(rows: dict[tuple[str, int], dict], keep: list[str],
              unplanned: dict[str, tuple[list[int], int]] | None = None) -> list[dict]:
    from reste.experiments.report import METRICS, _mean_std
    out = []
    for setting in keep:
        runs = [r for (s, _), r in sorted(rows.items()) if s == setting]
        axis, value = setting.split("=", 1)
        agg: dict = {"setting": setting, axis: value}
        for m in METRICS:
            agg[f"{m}_mean"], agg[f"{m}_std"] = _mean_std([float(r[m]) for r in runs if r[m] not in ("", None)])
        missing, diverged = (unplanned or {}).get(setting, ([], 0))
        agg["n"] = len(runs)
        agg["n_runs"] = len(runs) + len(missing)
        agg["n_diverged"] = diverged
        agg["seeds"] = " ".join(str(r["seed"]) for r in runs)
        agg["missing_seeds"] = " ".join(map(str, missing))
        out.append(agg)
    return out


def figures(out: Path, table: list[dict], axes: list[str], mode: str | None = "general", warning: str = "") -> None:
    """The figures `reste sweep` draws from its per-setting table: error against stability (``warning`` under it)
    and, on an o_end axis, accuracy and the indicators against o_end (its per-epoch figures need the run folders)."""
    from reste.experiments.plots import error_vs_stability_figure, o_end_figure
    have_ind = all(r["estimating_error_mean"] is not None for r in table)
    if have_ind:
        error_vs_stability_figure(out, table, mode or "general", warning)
    if "o_end" in axes and len({r["o_end"] for r in table if r.get("o_end") is not None}) > 1:
        o_end_figure(out, {"grid": {"o_end": []}}, table, "o_end", indicators=have_ind, mode=mode)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("sweeps", nargs="+")
    p.add_argument("--settings", required=True, help="OUT's settings, comma-separated, in order")
    p.add_argument("--alias", nargs=2, action="append", default=[], metavar=("FROM", "TO"))
    args = p.parse_args(argv)
    # as `reste sweep` does
    from reste.experiments.report import _indicator_rule, configs_paper_warning, table_cells, write_csv
    cols = columns()
    keep = args.settings.split(",")
    rows = read_rows(args.sweeps, keep, dict(args.alias), args.out)
    missing = [s for s in keep if not any(k[0] == s for k in rows)]
    if missing:
        sys.exit(f"combine.py: no run of {', '.join(missing)} in {', '.join(args.sweeps)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (keep.index(k[0]), k[1]))]
    axes = [a for a in dict.fromkeys(s.split("=", 1)[0] for s in keep) if a not in cols]
    write_csv(out / "runs.csv", [{c: r.get(c, "") for c in (*cols[:2], *axes, *cols[2:])} for r in ordered])
    epochs = read_epochs(rows, dict(args.alias))
    if epochs:
        write_csv(out / "epochs.csv", sorted(epochs, key=lambda e: (keep.index(e["setting"]), int(e["seed"]),
                                                                      int(e["epoch"]))))
    table = aggregate(rows, keep, unreported(args.sweeps, keep, dict(args.alias), rows))
    write_csv(out / "results.csv", table)
    modes = {r["indicators"] for r in rows.values()} - {"?", "none"}
    mode = modes.pop() if modes else None
    warning = configs_paper_warning([{"estimator": r["estimator"], "indicators": r["indicators"]} for r in ordered])
    figures(out, table, axes, mode, warning)
    rule = _indicator_rule(mode) if mode else "; indicators: mode not recorded by the sources"
    count = next((f"{r['epochs']} epochs; " for r in rows.values() if r["epochs"]), "")
    lines = [f"Joined from the runs.csv of {', '.join(args.sweeps)} by docs/results/combine.py; "
             f"{count}mean ± sample std over seeds{rule}." + (f"\n\n**{warning}.**" if warning else ""), "",
             "| setting | best acc (%) | final acc (%) | estimating error | gradient stability | n | seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        n = f"{r['n']}{'' if r['n'] == r['n_runs'] else '/' + str(r['n_runs'])}"
        n += f", {r['n_diverged']} diverged" if r["n_diverged"] else ""
        lines.append(f"| {r['setting']} | {' | '.join(table_cells(r))} | {n} | {r['seeds']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} runs of {len(keep)} settings -> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
