"""Figures: the estimators' curves, training curves of runs, and a sweep's summaries.

Everything draws on ``matplotlib.figure.Figure`` (the Agg canvas), so no GUI
backend is needed and pyplot's global state is left alone.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ..files import atomic_write
from ..errors import UsageError, cannot_write, option
from ..estimators import ESTIMATORS, ReSTE, get_estimator
from ..indicators import MEASURE, RUN_LEVEL, current_history
from ..rundir import (CURVES, RESUME_FREE, epoch_lines, file_in_the_way, in_the_way, read_metrics, run_config,
                      schedule_fields)

LABELS = {"estimating_error": "estimating error", "gradient_stability": "gradient stability (var |grad|)"}


def _figure(rows: int, cols: int, width: float = 5.0, height: float = 3.8) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width * cols, height * rows), layout="constrained")


FORMATS = (".png", ".pdf", ".svg")


def check_figure_path(path: str | Path) -> Path:
    """``path`` as a figure's file, refused in one line where it cannot be one: not .png, .pdf or .svg, or its folder
    missing or a file (a typo in --out made a stray tree of folders: review clifuzz #4; export and predict refuse)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"figures are written as PNG, PDF or SVG; give a .png, .pdf or .svg file name, "
                         f"not {path.name!r}")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; pass a file path")
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise UsageError(f"cannot write {path}: {in_the_way(blocker)}, not a folder")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: the folder {path.parent} does not exist")
    return path


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG, PDF or SVG, by the file name's suffix."""
    path = check_figure_path(path)
    try:
        # through a temporary file: a full disk leaves the figure that was there, not an empty file
        atomic_write(path, lambda f: fig.savefig(f, dpi=110, format=path.suffix.lower()[1:]))
    except OSError as err:
        raise cannot_write(err, path, "pass a writable --out") from None
    return path


# ------------------------------------------------------------------ estimators


def estimator_curves(progress: float = 0.5, x: torch.Tensor | None = None
                     ) -> list[tuple[str, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """(label, x, F(x), g(x)) for every registered estimator; ReSTE at o = 1, 2, 3. F is ``None`` for an
    estimator that defines no ``_f`` (its g is drawn alone).

    Estimators with a schedule are shown at ``progress`` (0 = start, 1 = end of training).
    """
    if not 0.0 <= progress <= 1.0:
        raise UsageError(f"{option('--at', 'progress')} must be in [0, 1], got {progress}")
    if x is None:
        x = torch.linspace(-2.0, 2.0, 4001, dtype=torch.float64)
    curves = []
    for name in ESTIMATORS:
        if name == "reste":
            ests = [(f"reste o={o}", ReSTE(o=float(o), o_end=float(o), schedule="constant")) for o in (1, 2, 3)]
        else:
            est = get_estimator(name)
            est.set_progress(progress * 1000.0, 1000)
            values = est.schedule_values()
            detail = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            ests = [(f"{name}{f' ({detail})' if detail else ''}", est)]
        for label, est in ests:
            f = est.forward_equivalent(x) if type(est).defines_f() else None
            curves.append((label, x, f, est.derivative(x)))
    return curves


def plot_estimators(out: str | Path = "estimators.png", progress: float = 0.5) -> Path:
    """One figure: the forward-equivalent F (left) and backward g (right) of every estimator."""
    check_figure_path(out)  # (before any work)
    curves = estimator_curves(progress)
    fig = _figure(1, 2, width=6.4, height=4.8)
    ax_f, ax_g = fig.subplots(1, 2)
    colors = _colors(len(curves))  # each curve its own colour, a plugin's too
    styles = ["-", "--"]
    x0 = curves[0][1]
    ax_f.plot(x0, torch.where(x0 < 0, -1.0, 1.0), color="black", lw=1, ls=":", label="sign")
    for i, (label, x, f, g) in enumerate(curves):
        kw = dict(color=colors[i], ls=styles[i % 2], lw=1.6)
        if f is not None:
            ax_f.plot(x, f, **kw)
        ax_g.plot(x, g, label=label if f is not None else f"{label} (no F: it defines no _f)", **kw)
    ax_f.set_title("forward equivalent F(x) (actual forward: sign)")
    ax_g.set_title("backward multiplier g(x) = F'(x)")
    for ax in (ax_f, ax_g):
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
    ax_f.set_ylim(-1.25, 1.25)
    low = min(float(g.min()) for *_, g in curves)
    ax_g.set_ylim(min(-0.1, 1.1 * low), max(5.2, min(12.0, max(float(g.max()) for *_, g in curves) * 1.05)))
    ax_g.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"reste estimators (scheduled ones at {progress:.0%} of training)")
    return _save(fig, out)


# --------------------------------------------------------------- run curves


def _run_name(run_dir: Path, all_dirs: Sequence[Path]) -> str:
    names = [d.name for d in all_dirs]
    if names.count(run_dir.name) > 1 or run_dir.name.startswith("seed"):
        return f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


def _series(metrics: list[dict[str, Any]], key: str) -> list[float]:
    """The values of ``key`` per epoch, NaN (a gap in the curve) where a line lacks it."""
    return [float(m[key]) if isinstance(m.get(key), (int, float)) else math.nan for m in metrics]


def _run_config(run_dir: Path) -> dict[str, Any]:
    """A run's settings (``rundir.run_config``) flattened (``estimator_options.o_end`` -> ``o_end``); {} when
    unreadable."""
    try:
        config = run_config(run_dir, checked=True).to_dict()
    except UsageError:
        return {}
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for group in ("estimator_options", "model_options"):
        flat.update(config.get(group) or {})
    return flat


_LEGEND_FREE = (*(k for k in RESUME_FREE if k != "accumulate"), "preset")


def _setting_labels(dirs: Sequence[Path]) -> list[str]:
    """One legend label per run: the settings that differ between the runs (its name otherwise)."""
    names = [_run_name(d, dirs) for d in dirs]
    configs = [_run_config(d) for d in dirs]
    if len(dirs) < 2 or not all(configs):
        return names
    # not the settings free to change on resume (threads, tensorboard, ...: none changes what a run trains, as the
    # sweep's identity leaves them out), but accumulate, which does with BatchNorm (review experiments #6, #8)
    keys = sorted({k for c in configs for k in c} - set(_LEGEND_FREE))
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    # each run names its own settings only: an option of another run's estimator is not one of this run's
    # an unset setting is named only where unset means something (indicators=off), not bop_gamma=off on an SGD run
    labels = [textwrap.fill(", ".join(f"{k}={_shown(c[k])}" for k in differ if k in c
                                      and (c[k] is not None or k in _OFF_WHEN_UNSET)), 70) for c in configs]
    if not differ or len(set(labels)) < len(labels):
        return names if not differ else [f"{lab} ({n})" for lab, n in zip(labels, names)]
    return labels


_OFF_WHEN_UNSET = ("indicators",)  # the settings whose unset value is a choice of its own, said as off


def _shown(value: Any) -> Any:
    """A setting's value as a legend shows it: an unset one (``indicators`` not measured, no ``preset``) as off."""
    return "off" if value is None else value


def _panel_axes(fig: Any, count: int) -> list[Any]:
    """``count`` axes in one row (up to 3) or two rows (the first one fuller), none left empty."""
    rows = [count] if count <= 3 else [math.ceil(count / 2), count // 2]
    cols = math.lcm(*rows)
    grid = fig.add_gridspec(len(rows), cols)
    return [fig.add_subplot(grid[r, j * (cols // n):(j + 1) * (cols // n)]) for r, n in enumerate(rows)
            for j in range(n)]


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None,
              labels: Sequence[str] | None = None, metrics: Sequence[list[dict[str, Any]] | None] | None = None,
              *, modes: Sequence[str | None] | None = None) -> Path:
    """Training curves of runs: accuracy, loss (log axis), learning rate and estimator schedule,
    and the indicators when logged. Several runs share the figure, one colour each, labelled by ``labels`` or else
    the settings that differ between them (from their config.json); ``out`` may be .png, .pdf or .svg.
    ``metrics``: a run's epochs where its folder is gone (a sweep's epochs.csv kept them), None: read them there;
    ``modes``: the indicator mode of such a run (its sweep's setting's), which no config.json gives."""
    dirs = [Path(d) for d in run_dirs]
    if out is not None:
        check_figure_path(out)  # the one-line refusal, before any work
    fig = runs_figure(dirs, labels, metrics, modes=modes)
    if out is None:
        out = dirs[0] / CURVES if len(dirs) == 1 else Path(CURVES)
    return _save(fig, out)


def runs_figure(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None,
                metrics_of: Sequence[list[dict[str, Any]] | None] | None = None, *,
                modes: Sequence[str | None] | None = None) -> Any:
    """The figure of :func:`plot_runs` (a ``matplotlib.figure.Figure``), not saved."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise UsageError("give at least one run directory")
    data = []
    given = list(metrics_of) if metrics_of is not None else [None] * len(dirs)
    # a run drawn from a sweep's epochs.csv has no config.json: its mode is its setting's (given)
    given_modes = list(modes) if modes is not None else [None] * len(dirs)
    measured: set[str] = set()  # the runs' indicator modes (a run whose mode is not known: none)
    left_out: list[str] = []  # the runs whose earlier epochs measured the indicators otherwise
    for d, label, kept, mode in zip(dirs, _setting_labels(dirs) if labels is None else labels, given, given_modes):
        # each epoch once, in order (a repeated line is its last: as show and the report count it), not file order
        metrics = kept if kept is not None else epoch_lines(read_metrics(d))[0]
        if not metrics:
            raise UsageError(f"{d} has no finished epoch yet")
        # its indicators: its current mode's epochs alone (review paper #1), as show and the report count them
        mode = (mode if kept is not None else None) or _run_config(d).get("indicators")
        history, how, _ = current_history(metrics, mode)
        now = {m["epoch"] for m in history}
        if any(k in m for m in metrics if m["epoch"] not in now for k in LABELS):
            left_out.append(f"{label} (from epoch {history[0]['epoch']} on)" if history else label)
        if history and (mode or MEASURE in history[-1]):  # (review readme2 #1: None beside "general" read as two)
            measured.add(how)
        data.append((label, metrics, [m if m["epoch"] in now else {} for m in metrics]))
    # any estimator's schedule values, a plugin's too; a run resumed with --force may switch estimator: a key can
    # be in some lines only
    sched = list(dict.fromkeys(k for _, ms, _ in data for m in ms for k in schedule_fields(m)))
    has_lr = any("lr" in m for _, ms, _ in data for m in ms)
    panels = ["acc", "loss"] + (["schedule"] if has_lr or sched else [])
    panels += [k for k in LABELS if any(k in m for _, _, ms in data for m in ms)]
    fig = _figure(2 if len(panels) > 3 else 1, 3 if len(panels) != 4 else 2, width=4.6)
    axes = _panel_axes(fig, len(panels))
    by_panel = dict(zip(panels, axes))
    lr_ax = by_panel.get("schedule") if has_lr else None
    twin = (by_panel["schedule"].twinx() if has_lr else by_panel["schedule"]) if sched else None
    several = len(data) > 1
    colors = _colors(len(data))
    for i, (name, metrics, current) in enumerate(data):
        color = colors[i]
        # several runs: a marker shape each as well as a colour (red and green look alike to some readers);
        # train and test differ by line style, and train's markers are hollow (one run's too: a 1-epoch run draws
        # no line, only its two points: newuser3 #3)
        mark = _run_marker(i) if several else None
        ep = [m["epoch"] for m in metrics]
        for panel in ("acc", "loss"):
            ax = by_panel[panel]
            ax.plot(ep, _series(metrics, f"train_{panel}"), color=color, ls="--", marker=mark or "o", ms=4,
                    mfc="none")
            ax.plot(ep, _series(metrics, f"test_{panel}"), color=color, marker=mark or "o", ms=4 if mark else 3)
        if lr_ax is not None:
            lr_ax.plot(ep, _series(metrics, "lr"), color=color, marker=mark or ".", ms=4 if mark else None)
        for j, k in enumerate(sched):
            if twin is not None and any(k in m for m in metrics):
                twin.plot(ep, _series(metrics, k), color=color, ls=["--", ":", "-.", (0, (1, 3))][j % 4],
                          marker=mark or "x", ms=4, mfc="none" if mark else None)
        for panel in LABELS:
            if panel in by_panel:
                by_panel[panel].plot(ep, _series(current, panel), color=color, marker=mark or ".",
                                     ms=4 if mark else None)
    schedule_title = "learning rate and schedule" if has_lr and sched else "learning rate" if has_lr else "schedule"
    titles = {"acc": "accuracy (%)", "loss": "cross-entropy loss (log)", "schedule": schedule_title, **LABELS}
    if left_out:  # (review paper #1: a run's two modes were drawn as one curve)
        warnings.warn(f"plot: {', '.join(left_out)}: a resume measured the indicators otherwise (another --indicators "
                      "or o_end, with --force) or turned them off, so their curves draw the current mode's epochs "
                      "only, as reste show counts them", UserWarning, stacklevel=3)
        titles.update({k: f"{v}\n(current mode only: epochs of another left out)" for k, v in LABELS.items()})
    if len(measured) > 1:  # other layers, F, sign(0) and averaging: one axis would compare what does not compare
        warnings.warn("plot: these runs measured the indicators in other modes (paper and general: other layers, "
                      "F and averaging), so their indicator curves do not compare; plot each mode's runs apart",
                      UserWarning, stacklevel=3)
        titles.update({k: f"{v} (modes differ!)" for k, v in LABELS.items()})
    for panel, ax in by_panel.items():
        ax.set_title(titles[panel])
        _epoch_axis(ax)
        if left_out and panel in LABELS:  # the epochs left out: as in the other panels, empty
            ax.set_xlim(by_panel["acc"].get_xlim())
        ax.grid(alpha=0.3)
        if panel == "gradient_stability":
            _maybe_log(ax, [m.get(panel) for _, _, ms in data for m in ms])
    _log_if_positive(by_panel["loss"], [m.get(k) for _, ms, _ in data for m in ms for k in ("train_loss", "test_loss")])
    if lr_ax is not None:
        lr_ax.set_ylabel("learning rate (solid)")
    if twin is not None:
        twin.set_ylabel(", ".join(f"{k} ({['dashed', 'dotted', 'dash-dot', 'sparse dots'][j % 4]})"
                                  for j, k in enumerate(sched)))
    # one run named as the caller names it (a sweep's "o_end=3 seed 0") says which it is too (review newuser #1)
    _legends(fig, by_panel, [(name, ms) for name, ms, _ in data], several or labels is not None)
    return fig


RUN_MARKERS = "osD^vP*Xph<>"  # one per run (or setting) of a figure, as its colour


def _run_marker(i: int) -> str:
    return RUN_MARKERS[i % len(RUN_MARKERS)]


def _colors(count: int) -> list[Any]:
    """One distinct colour per run: matplotlib's ten, then tab20's twenty, then as many from a colour map."""
    from matplotlib import colormaps

    if count <= 10:
        return [f"C{i}" for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / (count - 1)) for i in range(count)]


def _log_if_positive(ax: Any, values: list[Any]) -> None:
    """A log axis when every finite value is positive (a diverged run then no longer flattens the others)."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if vals and min(vals) > 0:
        ax.set_yscale("log")


def _legends(fig: Any, by_panel: dict[str, Any], data: list[tuple[str, Any]], several: bool) -> None:
    """Train/test line styles in the accuracy panel; with several runs (or named ones), one entry per run below."""
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="0.3", ls="--", marker="o", ms=4, mfc="none", label="train"),
              Line2D([], [], color="0.3", marker="o", ms=3, label="test")]
    by_panel["acc"].legend(handles=styles, fontsize=7, loc="lower right", handlelength=3.5)
    if several:
        colors = _colors(len(data))
        runs = [Line2D([], [], color=colors[i], lw=2, marker=_run_marker(i), ms=6, label=name)
                for i, (name, _) in enumerate(data)]
        fig.legend(handles=runs, loc="outside lower center", ncols=min(len(runs), 3), fontsize=8)


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # (one epoch: a tick at 1, not 0.96)


def _maybe_log(ax: Any, values: list[Any], ratio: float = 30.0, axis: str = "y") -> None:
    """Log scale on ``axis`` when the positive values span more than ``ratio``."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and v > 0]
    if vals and max(vals) / min(vals) > ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


# ---------------------------------------------------------------- sweep plots


def _short(label: str) -> str:
    return label.replace("estimator=", "")


def _epoch_means(runs: list[dict[str, Any]], key: str) -> list[float] | None:
    """Per-epoch mean over ``runs`` (``report.collect``'s, of one setting) of metric ``key`` (None if no run has
    it in every epoch)."""
    series = [[m.get(key) for m in run["metrics"]] for run in runs]
    series = [v for v in series if v and all(x is not None for x in v)]
    if not series or len({len(v) for v in series}) > 1:
        return None
    return [statistics.fmean(v) for v in zip(*series)]


SWEEP_FIGURES = ("indicators.png", "error_vs_stability.png", "accuracy_vs_o_end.png")


def sweep_figures(out: Path, manifest: dict[str, Any], rows: list[dict[str, Any]],
                  runs: list[dict[str, Any]], warning: str = "") -> list[str]:
    """Write the sweep's figures into ``out`` from ``report.collect``'s rows and runs; returns their file names.

    With the indicators: ``indicators.png`` and ``error_vs_stability.png`` (``warning``, the caller's
    ``report.paper_warning``, under it); with an ``o_end`` axis in the grid and runs at two values of it or more:
    ``accuracy_vs_o_end.png``.
    """
    written = []
    wanted = wanted_figures(manifest, rows)
    have_ind = "indicators.png" in wanted
    mode = None if "indicators" in manifest["grid"] else manifest["base"].get("indicators") or "general"
    if have_ind:
        if indicators_figure(out, manifest, runs):
            written.append("indicators.png")
        written.append(error_vs_stability_figure(out, rows, mode, warning))
    o_axis = _o_axis(manifest)
    if "accuracy_vs_o_end.png" in wanted:
        written.append(o_end_figure(out, manifest, rows, o_axis, indicators=have_ind, mode=mode))
    return written


def _o_axis(manifest: dict[str, Any]) -> str | None:
    return next((a for a in manifest["grid"] if a in ("o_end", "estimator_options.o_end")), None)


def wanted_figures(manifest: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The figures the sweep's tables call for (any other of SWEEP_FIGURES in its folder is an earlier sweep's)."""
    names = []
    if any(r["estimating_error_mean"] is not None for r in rows):
        names += ["indicators.png", "error_vs_stability.png"]
    o_axis = _o_axis(manifest)
    if o_axis and len({str(r.get(o_axis)) for r in rows if r["n"]}) > 1:  # a curve needs two values of o_end
        names.append("accuracy_vs_o_end.png")
    return names


def indicators_figure(out: Path, manifest: dict[str, Any], runs: list[dict[str, Any]]) -> str | None:
    """``indicators.png``: both indicators per epoch, mean over seeds, one line per setting; None (nothing written)
    when no run has them per epoch (runs reported from a runs.csv without its epochs.csv)."""
    fig = _figure(1, 2, width=6.0, height=4.4)
    axes = fig.subplots(1, 2)
    drawn = False
    for i, s in enumerate(manifest["settings"]):
        for ax, key in zip(axes, LABELS):
            means = _epoch_means([r for r in runs if r["setting"] == s["label"]], key)
            if means:
                ax.plot(range(1, len(means) + 1), means, marker="o", ms=3, color=f"C{i % 10}",
                        ls="-" if i < 10 else "--", label=_short(s["label"]))
                drawn = True
    for ax, key in zip(axes, LABELS):
        ax.set_title(f"{LABELS[key]}\nper epoch, mean over seeds", fontsize=10)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        _maybe_log(ax, [y for line in ax.get_lines() for y in line.get_ydata()],
                   ratio=30.0 if key == "gradient_stability" else 4.0)
    if not drawn:
        return None
    axes[1].legend(fontsize=8)
    _save(fig, out / "indicators.png")
    return "indicators.png"


def error_vs_stability_figure(out: Path, rows: list[dict[str, Any]], mode: str | None = "general",
                              warning: str = "") -> str:
    """``error_vs_stability.png``: one point per setting (the run-level indicators of ``mode``, averaged over
    seeds); ``warning``, when given, goes under the figure (``report.paper_warning``)."""
    fig = _figure(1, 1, width=6.8, height=5.2)
    ax = fig.subplots()
    pts = [r for r in rows if r["estimating_error_mean"] is not None and r["gradient_stability_mean"] is not None]
    for i, r in enumerate(pts):
        ax.errorbar(r["estimating_error_mean"], r["gradient_stability_mean"], xerr=r["estimating_error_std"],
                    yerr=r["gradient_stability_std"], fmt=_run_marker(i), ms=7, color=f"C{i % 10}",
                    capsize=3, label=_short(r["setting"]))
    ax.legend(fontsize=8, loc="best")
    error, stability = RUN_LEVEL[mode] if mode else ("run-level, each setting's mode",) * 2
    ax.set_xlabel(f"estimating error ({error})")
    ax.set_ylabel(f"gradient stability: var |grad| ({stability})")
    ax.set_title("the equilibrium: error vs stability, one point per setting\n(bars: std over seeds)")
    ax.grid(alpha=0.3)
    _maybe_log(ax, [r["gradient_stability_mean"] for r in pts])
    _maybe_log(ax, [r["estimating_error_mean"] for r in pts], ratio=4.0, axis="x")
    if warning:
        fig.supxlabel(textwrap.fill(warning, 90), fontsize=8, color="darkred")
    _save(fig, out / "error_vs_stability.png")
    return "error_vs_stability.png"


def o_end_figure(out: Path, manifest: dict[str, Any], rows: list[dict[str, Any]], o_axis: str, *,
                 indicators: bool, mode: str | None = "general") -> str:
    """``accuracy_vs_o_end.png``: accuracies (and the indicators, run-level values of ``mode``: their panels say
    how they were made from the epochs', as error_vs_stability.png's axes do) against the grid's ``o_axis``, one
    line per combination of the other axes."""
    others = [a for a in manifest["grid"] if a != o_axis]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get(o_axis) is not None and r["n"]:
            groups.setdefault(",".join(f"{a}={r.get(a)}" for a in others), []).append(r)
    panels = [("best_acc", "best test accuracy (%)"), ("final_acc", "final test accuracy (%)")]
    if indicators:  # (review stats1, suggestion 1: the paper mode's stability is a sum over epochs, not a mean)
        made = RUN_LEVEL[mode] if mode else ("each setting's mode",) * 2
        panels += [("estimating_error", f"{LABELS['estimating_error']}\n({made[0]})"),
                   ("gradient_stability", f"{LABELS['gradient_stability']}\n({made[1]})")]
    cols = 2
    rows_ = math.ceil(len(panels) / cols)
    fig = _figure(rows_, cols, width=4.6, height=3.6)
    axes = list(fig.subplots(rows_, cols, squeeze=False).flat)
    for i, (name, grp) in enumerate(groups.items()):
        grp = sorted(grp, key=lambda r: float(r[o_axis]))
        xs = [float(r[o_axis]) for r in grp]
        for ax, (key, _title) in zip(axes, panels):
            ax.errorbar(xs, [r[f"{key}_mean"] for r in grp], yerr=[r[f"{key}_std"] or 0 for r in grp],
                        marker="o", capsize=3, color=f"C{i % 10}", label=name or None)
    for ax, (key, title) in zip(axes, panels):
        ax.set_xscale("log")
        ticks = sorted({float(r[o_axis]) for g in groups.values() for r in g})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("o_end")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if key == "gradient_stability":
            _maybe_log(ax, [r[f"{key}_mean"] for g in groups.values() for r in g])
    if len(groups) > 1:
        axes[0].legend(fontsize=7)
    fig.suptitle("ReSTE: effect of o_end (mean ± std over seeds)")
    _save(fig, out / "accuracy_vs_o_end.png")
    return "accuracy_vs_o_end.png"
