"""Each metrics line records how its indicators were measured, and ``reste show``, a sweep's report and ``reste plot``
count a run's current mode alone, as its training does (review paper #1); an ``o_end`` the indicators would not read
is refused (review paper #3)."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest

from reste import engine
from reste.config import TrainConfig
from reste.experiments.plots import runs_figure
from reste.experiments.report import run_status
from reste.indicators import MEASURE, current_history, run_indicators
from reste.rundir import METRICS, epoch_lines, read_metrics
from reste.runinfo import run_summary, show_run


def line(epoch, error, stability=1.0, **measure):
    return {"epoch": epoch, "test_acc": 50.0, "estimating_error": error, "gradient_stability": stability, **measure}


PAPER3 = [line(1, 10.0, **{MEASURE: 3.0}), line(2, 12.0, **{MEASURE: 3.0})]


def test_the_current_history_is_the_last_lines_measured_alike():
    general = [line(3, 20.0, **{MEASURE: None}), line(4, 30.0, **{MEASURE: None})]
    lines, mode, o_end = current_history(PAPER3 + general, "general")
    assert ([m["epoch"] for m in lines], mode, o_end) == ([3, 4], "general", None)
    paper5 = [line(3, 7.0, 2.0, **{MEASURE: 5.0}), line(4, 9.0, 4.0, **{MEASURE: 5.0})]  # another o_end
    assert run_indicators(PAPER3 + paper5, "paper") == {"mode": "paper", "o_end": 5.0, "epochs": 2, "unmeasured": 0,
                                                        "first_epoch": 3, "estimating_error": 8.0,
                                                        "gradient_stability": 6.0}
    # (review diff26 #5) an epoch of which nothing was measured is left out of the values, and of the count
    skipped = line(5, float("nan"), float("nan"), **{MEASURE: 5.0})
    assert run_indicators(PAPER3 + paper5 + [skipped], "paper") == {
        "mode": "paper", "o_end": 5.0, "epochs": 2, "unmeasured": 1, "first_epoch": 3, "estimating_error": 8.0,
        "gradient_stability": 6.0}
    # an epoch without them (turned off, then on again: the meter's history started again) ends it
    off = {"epoch": 3, "test_acc": 50.0}
    assert [m["epoch"] for m in current_history([*PAPER3, off, line(4, 1.0, **{MEASURE: 3.0})], "paper")[0]] == [4]
    assert run_indicators([*PAPER3, off], "paper") is None and run_indicators([], "paper") is None


def test_lines_that_do_not_say_how_count_as_the_runs_mode():
    """Lines written before the measure was recorded: all of them, in the run's mode (None: general), as before."""
    old = [line(1, 10.0), line(2, 20.0)]
    assert run_indicators(old, "paper") == {"mode": "paper", "o_end": None, "epochs": 2, "unmeasured": 0,
                                            "first_epoch": 1, "estimating_error": 15.0, "gradient_stability": 2.0}
    assert run_indicators(old, None)["mode"] == "general"
    resumed = [*old, line(3, 30.0, **{MEASURE: 3.0})]  # resumed in its mode by a reste that records it
    assert run_indicators(resumed, "paper")["epochs"] == 3


@pytest.fixture(scope="module")
def switched(tmp_path_factory):
    """A 2-epoch paper-mode digits run, then resumed for 4 epochs in the general mode (--force): (its folder, the
    resume's result, its log, its summary before the resume)."""
    run = tmp_path_factory.mktemp("modes") / "run"
    log: list[str] = []
    engine.train(TrainConfig(epochs=2, threads=1, indicators="paper"), run, progress=False, log=log.append)
    before = run_summary(run)
    result = engine.resume(run, {"epochs": 4, "indicators": "general"}, force=True, progress=False, log=log.append)
    return run, result, log, before


def test_each_line_records_how_its_indicators_were_measured(switched):
    run, _, log, before = switched
    assert [m[MEASURE] for m in read_metrics(run)] == [3.0, 3.0, None, None]  # digits_1w1a's ReSTE o_end; general
    assert any("count epoch 3 on only" in text for text in log)
    epochs = [text for text in log if text.startswith("epoch ")]
    assert len(epochs) == 4 and not [text for text in epochs if MEASURE in text]  # no schedule value
    assert list(before["last"]["schedule"]) == ["o"]
    assert before["indicators"]["mode"] == "paper" and before["indicators"]["o_end"] == 3.0


def test_show_and_the_report_count_the_current_mode_as_training_does(switched):
    """(review paper #1) show averaged the two paper-mode epochs with the two general-mode ones, labelled "general
    mode, 4 epochs", where the run's own last line counts epochs 3 and 4."""
    run, result, _, _ = switched
    done = result["indicators"]
    ind = run_summary(run)["indicators"]
    assert (ind["mode"], ind["o_end"], ind["epochs"], ind["first_epoch"]) == ("general", None, 2, 3)
    for key in ("estimating_error", "gradient_stability"):
        assert ind[key] == pytest.approx(done[key], rel=1e-12)
    assert f"indicators (general mode, 2 epochs from epoch 3 on): estimating error {done['estimating_error']:.4g} " \
        in show_run(run)
    status, row = run_status(run)
    assert status == "done"
    assert (row["estimating_error"], row["gradient_stability"]) == (ind["estimating_error"], ind["gradient_stability"])


def test_a_run_written_before_the_measure_shows_as_it_did(switched, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(switched[0], run)
    lines = epoch_lines(read_metrics(run))[0]
    (run / METRICS).write_text("".join(json.dumps({k: v for k, v in m.items() if k != MEASURE}) + "\n"
                                       for m in lines))
    ind = run_summary(run)["indicators"]
    assert (ind["mode"], ind["epochs"]) == ("general", 4)
    assert ind["estimating_error"] == pytest.approx(sum(m["estimating_error"] for m in lines) / 4)


def test_plot_draws_the_current_modes_epochs_and_says_so(switched):
    """(review paper #1) plot drew epochs 1-2 (paper) and 3-4 (general) as one curve, without a word."""
    run = switched[0]
    with pytest.warns(UserWarning, match=r"run \(from epoch 3 on\): a resume measured the indicators otherwise"):
        fig = runs_figure([run])
    axes = {ax.get_title().split("\n")[0]: ax for ax in fig.axes}
    assert "(current mode only: epochs of another left out)" in axes["estimating error"].get_title()
    ys = list(axes["estimating error"].get_lines()[0].get_ydata())
    assert [math.isnan(y) for y in ys] == [True, True, False, False]
    one = run.parent / "one"  # a run of one mode: drawn whole, without a word
    engine.train(TrainConfig(epochs=1, threads=1, indicators="paper"), one, progress=False, log=lambda _: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = runs_figure([one])
    assert not [ax for ax in fig.axes if "left out" in ax.get_title()]


def test_the_lightning_callback_refuses_an_o_end_its_indicators_would_not_read():
    """(review paper #3) BinarizationCallback(indicators=True, o_end=5) measured as without it."""
    lightning = pytest.importorskip("reste.integrations.lightning")
    refused = r"^o_end applies to the 'paper' indicators only .*pass indicators='paper'$"
    for indicators in (True, "general", False):
        with pytest.raises(ValueError, match=refused):
            lightning.BinarizationCallback(indicators=indicators, o_end=5.0)
    assert lightning.BinarizationCallback(indicators="paper", o_end=5.0).o_end == 5.0
    assert lightning.BinarizationCallback(indicators=True).o_end is None


@pytest.mark.parametrize("again", [{"indicators": "general"}, {"indicators": "paper"}])
def test_a_run_written_before_the_measure_and_resumed_in_another_mode_counts_the_new_mode_alone(tmp_path, again):
    """(review diff11 #1) a run of a version that did not record the measure, resumed with --force in another mode:
    its old lines counted as the new mode's. The resume writes the checkpoint's own measure into the lines of its
    history, so show counts the new mode's epochs alone, as the training line; resumed in the same mode, all."""
    run = tmp_path / "old"
    engine.train(TrainConfig(epochs=2, threads=1, indicators="paper"), run, progress=False, log=lambda _: None)
    lines = read_metrics(run)
    (run / METRICS).write_text("".join(json.dumps({k: v for k, v in m.items() if k != MEASURE}) + "\n"
                                       for m in lines))  # as the earlier version wrote them
    result = engine.resume(run, {"epochs": 4, **again}, force=True, progress=False, log=lambda _: None)
    ind = run_summary(run)["indicators"]
    same = again["indicators"] == "paper"
    assert (ind["mode"], ind["epochs"]) == (again["indicators"], 4 if same else 2)
    for key in ("estimating_error", "gradient_stability"):
        assert ind[key] == pytest.approx(result["indicators"][key], rel=1e-12)
    assert [m[MEASURE] for m in read_metrics(run)][:2] == [3.0, 3.0]  # the old lines now say how
