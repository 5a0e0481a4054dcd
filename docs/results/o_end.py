"""Accuracy and the two indicators against o_end: is accuracy an inverted U, where is its top, and
how do the indicators move?

    python docs/results/o_end.py SWEEP_DIR [SWEEP_DIR ...] [--metric final_acc]

Fits, over every finished run of one or more o_end sweeps (their ``runs.csv``; a run that two
sweeps share counts once), the model

    METRIC = u[seed] + a * x + b * x^2 + noise,   x = ln(o_end)

by least squares: one intercept per seed (runs of a seed share their initial weights and data
order, as in paired.py), then one parabola in ln(o_end) for all seeds. The answer:

- the curvature b with its 95 % confidence interval (Student t, n - p degrees of freedom):
  an inverted U needs b < 0 with the interval below 0;
- the top, o* = exp(-a / (2 b)), with its 95 % interval by Fieller's method (the set of x at which
  a + 2 b x, the slope, is not significantly different from 0). The interval is unbounded when
  b itself is not significantly below 0: the data then do not locate a top;
- whether o* lies inside the tested range of o_end.

It assumes the parabola fits the curve near its top and roughly normal noise of one size for all
settings; the printed residual spread and the per-setting means let the reader judge that.

Then, for each indicator (estimating error, gradient stability), each step from one o_end to the next:
the mean over the seeds that ran both of the ratio next / previous, its range over those seeds, and
in how many of them the indicator moved in the direction of the mean.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict

import importlib.util
from pathlib import Path

import numpy as np
from scipy.special import stdtrit  # the t quantile (scipy.stats's t.ppf; its import takes a second)

_spec = importlib.util.spec_from_file_location("combine", Path(__file__).with_name("combine.py"))
_combine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_combine)
indicator_modes = _combine.indicator_modes  # a sweep's or a joined folder's indicator mode: combine.py's fact


def fit(rows: list[tuple[int, float, float]]) -> dict[str, float]:
    """rows of (seed, o_end, value) -> the parabola in ln(o_end) with per-seed intercepts."""
    seeds = sorted({s for s, _, _ in rows})
    x = np.array([math.log(o) for _, o, _ in rows])
    y = np.array([v for _, _, v in rows])
    design = np.column_stack([np.array([[s == k for k in seeds] for s, _, _ in rows], float), x, x * x])
    n, p = design.shape
    if n <= p or len(set(x.tolist())) < 3:
        raise SystemExit(f"{n} runs over {len(set(x.tolist()))} values of o_end: too few to fit a parabola")
    coef, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    if rank < p:
        raise SystemExit("the runs do not determine a parabola (each seed needs runs at several o_end)")
    dof = n - p
    resid = y - design @ coef
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.inv(design.T @ design)
    a, b = float(coef[-2]), float(coef[-1])
    va, vb, cab = float(cov[-2, -2]), float(cov[-1, -1]), float(cov[-2, -1])
    t = float(stdtrit(dof, 0.975))
    out = {"n": n, "dof": dof, "a": a, "b": b, "b_lo": b - t * math.sqrt(vb), "b_hi": b + t * math.sqrt(vb),
           "sigma": math.sqrt(sigma2), "x_min": float(x.min()), "x_max": float(x.max())}
    out["top"] = -a / (2 * b) if b != 0 else math.nan
    # Fieller: x with (a + 2 b x)^2 <= t^2 var(a + 2 b x), i.e. q2 x^2 + q1 x + q0 <= 0
    q2, q1, q0 = 4 * (b * b - t * t * vb), 4 * (a * b - t * t * cab), a * a - t * t * va
    disc = q1 * q1 - 4 * q2 * q0
    if q2 > 0 and disc >= 0:
        r = math.sqrt(disc)
        out["top_lo"], out["top_hi"] = (-q1 - r) / (2 * q2), (-q1 + r) / (2 * q2)
    else:
        out["top_lo"], out["top_hi"] = -math.inf, math.inf
    return out


INDICATORS = ("estimating_error", "gradient_stability")


def read_runs(sweeps: list[str], metric: str) -> list[tuple[int, float, float]]:
    """(seed, o_end, metric) of every finished run of the sweeps, each run once: by its folder's name
    (ESTIMATOR-KEY/seedN, whichever sweep's runs.csv names it and relative to whichever folder). Refuses runs that
    do not compare: of other numbers of epochs, of other indicator modes (for an indicator), or two different runs
    at one (seed, o_end) (sweeps of other settings)."""
    rows, seen, at, facts = [], set(), {}, {}
    for sweep in sweeps:
        modes = indicator_modes(sweep)
        with open(Path(sweep) / "runs.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row.get(metric) in (None, "") or row.get("o_end") in (None, ""):
                    continue
                run = "/".join(Path(row["run_dir"]).parts[-2:]) if row.get("run_dir") else (sweep, row["setting"],
                                                                                             row["seed"])
                if run in seen:
                    continue
                seen.add(run)
                key = (int(row["seed"]), float(row["o_end"]))
                where = f"{row['setting']} seed {row['seed']} in {sweep}"
                mine = {"epochs": row.get("epochs") or None}
                if metric in INDICATORS:
                    mine["indicator mode"] = modes.get(row["setting"], modes.get("*"))
                for name, value in mine.items():
                    if value is None:
                        continue
                    first = facts.setdefault(name, (value, where))
                    if first[0] != value:
                        raise SystemExit(f"the runs do not compare: {name} {first[0]} ({first[1]}) and {value} "
                                         f"({where}); give sweeps of one configuration")
                if key in at:
                    raise SystemExit(f"o_end {key[1]:g} seed {key[0]} is two different runs ({at[key]}; {where}): "
                                     "give sweeps of one configuration")
                at[key] = where
                rows.append((key[0], key[1], float(row[metric])))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Accuracy and the two indicators against o_end")
    parser.add_argument("sweeps", nargs="+", help="sweep folders with a runs.csv and an o_end axis")
    parser.add_argument("--metric", default="final_acc", help="a runs.csv column (default final_acc)")
    parser.add_argument("--no-indicators", action="store_true", help="the accuracy fit alone")
    args = parser.parse_args(argv)
    metric = args.metric
    for sweep in args.sweeps:
        if not (Path(sweep) / "runs.csv").is_file():
            parser.error(f"{sweep} has no runs.csv: give the folder of a finished reste sweep")
    rows = read_runs(args.sweeps, metric)
    if not rows:
        raise SystemExit(f"no finished run with o_end and {metric} in {', '.join(args.sweeps)}")
    by_o = defaultdict(list)
    for _, o, v in rows:
        by_o[o].append(v)
    r = fit(rows)
    means = ", ".join(f"{o:g}: {statistics.fmean(v):.2f} (n {len(v)})" for o, v in sorted(by_o.items()))
    print(f"{metric} against ln(o_end), one intercept per seed: {r['n']} runs, {r['dof']} degrees of freedom")
    print(f"  means per o_end: {means}")
    concave = r["b_hi"] < 0
    shape = ("concave: an inverted U" if concave else
             "convex: a U, not an inverted U" if r["b_lo"] > 0 else "curvature not distinguishable from 0")
    print(f"  curvature b {r['b']:+.3f} per ln(o_end)^2, 95% CI [{r['b_lo']:+.3f}, {r['b_hi']:+.3f}]: {shape}")
    lo, hi = math.exp(r["x_min"]), math.exp(r["x_max"])
    if concave and math.isfinite(r["top_lo"]):
        inside = r["x_min"] <= r["top"] <= r["x_max"]
        print(f"  top at o_end {math.exp(r['top']):.2f}, 95% CI [{math.exp(r['top_lo']):.2f}, "
              f"{math.exp(r['top_hi']):.2f}] (Fieller); {'inside' if inside else 'outside'} the tested range "
              f"[{lo:g}, {hi:g}]")
    else:
        print("  the data do not locate a top (its confidence set is unbounded)")
    print(f"  residual std {r['sigma']:.2f} points")
    for name in () if args.no_indicators else INDICATORS:
        steps = indicator_steps(read_runs(args.sweeps, name))
        if steps:
            print(f"{name} against o_end, step by step (ratio next / previous over the seeds that ran both):")
        for lo_o, hi_o, ratios in steps:
            up = sum(q > 1 for q in ratios)
            agree = max(up, len(ratios) - up)
            print(f"  {lo_o:g} -> {hi_o:g}: x{statistics.fmean(ratios):.3f} (seeds {min(ratios):.3f} to "
                  f"{max(ratios):.3f}), {'up' if up * 2 > len(ratios) else 'down'} in {agree}/{len(ratios)} seeds")


def indicator_steps(rows: list[tuple[int, float, float]]) -> list[tuple[float, float, list[float]]]:
    """(o_end, next o_end, per-seed ratios next / previous) for each step of the sorted o_end values."""
    by = {(s, o): v for s, o, v in rows}
    values = sorted({o for _, o, _ in rows})
    out = []
    for lo_o, hi_o in zip(values, values[1:]):
        seeds = sorted({s for s, o in by if o == lo_o} & {s for s, o in by if o == hi_o})
        ratios = [by[s, hi_o] / by[s, lo_o] for s in seeds if by[s, lo_o] != 0]
        if ratios:
            out.append((lo_o, hi_o, ratios))
    return out


if __name__ == "__main__":
    main()
