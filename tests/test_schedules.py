"""Schedules: the estimator ramps (SPEC section 2) and the learning rate (SPEC section 6)."""

from __future__ import annotations

import math

import pytest
from torch import nn

import reste
from reste import schedules

SPEC_O = [(0, 1.0), (250, 1.15224), (500, 1.58579), (750, 2.23463), (999, 2.99686)]


@pytest.mark.parametrize("epoch,value", SPEC_O)
def test_cosine_ramp_spec_values(epoch, value):
    assert schedules.ramp("cosine", 1.0, 3.0, epoch, 1000) == pytest.approx(value, abs=1e-5)


def test_o_schedule_through_estimator_and_model():
    est = reste.ReSTE(o=1.0, o_end=3.0)
    model = nn.Sequential(reste.BinaryConv2d(1, 2, 3), reste.BinaryLinear(2, 2))
    for epoch, value in SPEC_O:
        est.set_progress(epoch, 1000)
        assert est.o == pytest.approx(value, abs=1e-5)
        assert reste.set_progress(model, epoch, 1000)["o"] == pytest.approx(value, abs=1e-5)
        assert {round(e.o, 9) for e in reste.estimators_of(model)} == {round(est.o, 9)}


def test_cosine_ramp_is_slow_then_fast_and_never_reaches_the_end():
    vals = [schedules.ramp("cosine", 1.0, 3.0, e, 100) for e in range(100)]
    steps = [b - a for a, b in zip(vals, vals[1:])]
    assert all(s > 0 for s in steps)
    assert all(b > a for a, b in zip(steps, steps[1:]))  # convex: accelerating
    assert vals[-1] < 3.0
    assert schedules.ramp("cosine", 1.0, 3.0, 100, 100) == pytest.approx(3.0)


def test_other_ramps():
    assert schedules.ramp("linear", 2.0, 4.0, 3, 12) == pytest.approx(2.5)
    assert schedules.ramp("constant", 2.0, 4.0, 3, 12) == 2.0
    assert schedules.ramp("log", 0.1, 10.0, 5, 10) == pytest.approx(1.0)
    assert schedules.ramp("log", 1e-3, 10.0, 1, 4) == pytest.approx(1e-3 * 10 ** (0.25 * 4))


@pytest.mark.parametrize(
    "args, words",
    [(("bogus", 1.0, 2.0, 0, 10), "bogus"), (("linear", 1.0, 2.0, 0, 0), "epochs must be positive"),
     (("linear", 1.0, 2.0, -1, 10), "epoch must be >= 0"), (("log", 0.0, 2.0, 1, 10), "needs positive ends"),
     # (review mut3 #1) a NaN or infinite epoch made every schedule value, so every gradient, NaN; a bool is no
     # number; a log ramp's end must be positive as its start
     (("cosine", 1.0, 3.0, math.nan, 10), "epoch must be finite"), (("cosine", 1.0, 3.0, 5, math.inf),
                                                                    "epochs must be finite"),
     (("linear", 1.0, 3.0, True, 10), "epoch must be a number"), (("log", 1.0, 0.0, 1, 10), "needs positive ends")],
)
def test_ramp_validation(args, words):
    with pytest.raises(ValueError, match=words):
        schedules.ramp(*args)


def test_learning_rate_warm_up():
    got = [schedules.learning_rate(0.1, e, 1000, warm_up=5) for e in range(5)]
    assert got == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.10])


def test_learning_rate_cosine_after_warm_up():
    epochs, warm = 1000, 5
    lrs = [schedules.learning_rate(0.1, e, epochs, warm_up=warm) for e in range(epochs)]
    tail = lrs[warm:]
    assert tail[0] == pytest.approx(0.1)
    assert all(b <= a for a, b in zip(tail, tail[1:]))
    assert all(v > 0 for v in lrs)
    assert lrs[-1] < 1e-5  # ends near 0
    half = warm + (epochs - warm) // 2
    assert lrs[half] == pytest.approx(0.05, abs=5e-4)
    # a cosine: lr(k) = 0.05 (1 + cos(pi k / K)) over the K epochs after warm-up
    K = epochs - warm
    for k in (0, 10, 300, 700, K - 1):
        assert lrs[warm + k] == pytest.approx(0.05 * (1 + math.cos(math.pi * k / K)), rel=1e-9, abs=1e-12)


def test_learning_rate_without_warm_up():
    lrs = [schedules.learning_rate(0.1, e, 250) for e in range(250)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] < 1e-4 and lrs[-1] > 0
    assert all(b < a for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_lr": 0.0, "epoch": 0, "epochs": 10},
        {"base_lr": 0.1, "epoch": 0, "epochs": 0},
        {"base_lr": 0.1, "epoch": -1, "epochs": 10},
        {"base_lr": 0.1, "epoch": 0, "epochs": 10, "warm_up": 10},
        {"base_lr": 0.1, "epoch": 0, "epochs": 10, "warm_up": -1},
    ],
)
def test_learning_rate_validation(kwargs):
    with pytest.raises(ValueError):
        schedules.learning_rate(**kwargs)


@pytest.mark.parametrize("kind", ["cosine", "linear", "log", "constant"])
def test_past_its_epochs_a_ramp_holds_its_end(kind):
    end = 1.0 if kind == "constant" else 3.0
    assert [schedules.ramp(kind, 1.0, 3.0, e, 10) for e in (10, 11, 20, 1e6)] == [pytest.approx(end)] * 4


def test_fdas_term_count_is_exact_where_the_ramp_lands_on_an_integer_in_floats_just_below():
    """n from 0 to 22 over 22 epochs: at epoch 15 the linear ramp is 14.999999999999998 in floats; n is 15."""
    from reste.estimators import get_estimator

    fda = get_estimator("fda", n=0, n_end=22)
    assert schedules.ramp("linear", 0, 22, 15, 22) < 15
    counts = []
    for epoch in range(22):
        fda.set_progress(epoch, 22)
        counts.append(fda.n)
    assert counts == list(range(22))


def test_the_learning_rate_holds_zero_past_the_last_epoch():
    """(review api #4) past ``epochs`` the cosine rose back to the base lr (a loop running longer than it said,
    a fine-tune going on), while every estimator ramp holds its end; a fractional or bool warm_up was taken."""
    from reste.schedules import learning_rate

    assert [learning_rate(0.1, e, 10) for e in (10, 15, 20)] == [0.0, 0.0, 0.0]
    assert learning_rate(0.1, 9, 10) > 0.0
    for warm_up in (5.5, True):
        with pytest.raises(ValueError, match="warm_up must be an integer"):
            learning_rate(0.1, 3, 10, warm_up)
