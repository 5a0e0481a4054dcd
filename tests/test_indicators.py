"""Equilibrium indicators computed by hand (numpy) on a tiny model (SPEC section 3)."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import reste
from reste import BinaryConv2d, BinaryLinear, EquilibriumMeter, estimating_error, gradient_stability


class Tiny(nn.Module):
    def __init__(self, estimator="reste") -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)  # float 3x3: never counted
        self.b1 = BinaryConv2d(4, 4, 3, padding=1, bias=False, weight_estimator=estimator)
        self.b2 = BinaryConv2d(4, 4, 3, padding=1, bias=False, weight_estimator=estimator)
        self.short = BinaryConv2d(4, 4, 1, bias=False, weight_estimator=estimator)  # 1x1: general only
        self.fc1 = BinaryLinear(4, 5, bias=False, weight_estimator=estimator)  # linear: general only
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.b2(torch.relu(self.b1(x))) + self.short(x)
        return self.fc(torch.relu(self.fc1(x.mean(dim=(2, 3)))))


PAPER = ["b1", "b2"]
GENERAL = ["b1", "b2", "short", "fc1"]


def make_model(estimator="reste", seed=0) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny(estimator)
    with torch.no_grad():
        model.b1.weight.view(-1)[0] = 0.0  # torch.sign(0) = 0 vs sign(0) = +1
        model.b2.weight.view(-1)[1] = 2.0  # beyond ReSTE's t = 1.5
        model.short.weight.view(-1)[0] = -0.05  # inside ReSTE's interval
    return model


def np_w(model, name):
    return getattr(model, name).weight.detach().double().numpy()


def np_g(model, name):
    return getattr(model, name).weight.grad.detach().double().numpy()


def hand_error_paper(model, o_end):
    total = 0.0
    for name in PAPER:
        w = np_w(model, name)
        f = np.sign(w) * np.abs(w) ** (1.0 / o_end)
        total += math.sqrt(((f - np.sign(w)) ** 2).sum())
    return total


def hand_reste_F(w, o, t=1.5, m=0.1):
    a = np.abs(w)
    s = np.where(w < 0, -1.0, 1.0)
    return np.where(a <= m, (m ** (1.0 / o) / m) * w, s * np.minimum(a, t) ** (1.0 / o))


def hand_error_general(model, F):
    total = 0.0
    for name in GENERAL:
        w = np_w(model, name)
        s = np.where(w < 0, -1.0, 1.0)
        total += math.sqrt(((F(w) - s) ** 2).sum())
    return total


def hand_stability(model, names):
    return sum(float(np.var(np.abs(np_g(model, n)), ddof=1)) for n in names)


def backward(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, 6, 6, generator=gen)
    target = torch.randint(0, 3, (3,), generator=gen)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), target).backward()


# ------------------------------------------------------------------ single values


@pytest.mark.parametrize("o_end", [3.0, 2.0])
def test_paper_error_by_hand(o_end):
    model = make_model()
    got = estimating_error(model, mode="paper", o_end=o_end)
    assert got.dim() == 0
    assert float(got) == pytest.approx(hand_error_paper(model, o_end), rel=1e-5)


def test_paper_error_is_at_the_models_own_o_end_by_default_as_the_meters():
    """(review arch3 #1, api3 #5) estimating_error's paper mode took o_end 3 whatever the model's, while the meter
    (reste train --indicators paper, Lightning, TensorBoard) takes the model's ReSTE o_end: a model of o_end 5 gave
    two numbers. Both now take the model's, else 3."""
    model = make_model()
    for est in reste.estimators_of(model):
        est.o_end = 5.0
    got = float(estimating_error(model, "paper"))
    assert got == pytest.approx(hand_error_paper(model, 5.0), rel=1e-5) != pytest.approx(hand_error_paper(model, 3.0))
    assert EquilibriumMeter(model, mode="paper").o_end == 5.0
    assert float(estimating_error(make_model("ste"), "paper")) == pytest.approx(hand_error_paper(make_model("ste"),
                                                                                                 3.0), rel=1e-5)


def test_paper_error_ignores_the_current_o_and_general_does_not():
    model = make_model()
    paper0, general0 = float(estimating_error(model, "paper")), float(estimating_error(model, "general"))
    reste.set_progress(model, 900, 1000)
    assert float(estimating_error(model, "paper")) == pytest.approx(paper0, rel=1e-7)
    assert float(estimating_error(model, "general")) != pytest.approx(general0, rel=1e-3)


@pytest.mark.parametrize("progress", [(0, 10), (5, 10), (999, 1000)])
def test_general_error_by_hand_reste(progress):
    model = make_model()
    reste.set_progress(model, *progress)
    o = 1.0 + (1.0 - math.cos(math.pi / 2 * progress[0] / progress[1])) * 2.0
    expected = hand_error_general(model, lambda w: hand_reste_F(w, o))
    assert float(estimating_error(model, "general")) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "estimator,F",
    [
        ("ste", lambda w: np.clip(w, -1.0, 1.0)),
        ("approx_sign", lambda w: np.where(np.abs(w) <= 1, 2 * w - w * np.abs(w), np.sign(w))),
        ("ede", lambda w: 10.0 * np.tanh(0.1 * w)),  # epoch 0: t = 0.1, k = 10
    ],
)
def test_general_error_by_hand_other_estimators(estimator, F):
    model = make_model(estimator)
    expected = hand_error_general(model, F)
    assert float(estimating_error(model, "general")) == pytest.approx(expected, rel=1e-5)
    # paper mode does not depend on the estimator
    assert float(estimating_error(model, "paper")) == pytest.approx(hand_error_paper(model, 3.0), rel=1e-5)


def test_zero_weight_counts_differently_in_the_two_modes():
    model = make_model()
    with torch.no_grad():
        for name in GENERAL:
            getattr(model, name).weight.zero_()
    assert float(estimating_error(model, "paper")) == 0.0
    n = sum(getattr(model, name).weight.numel() for name in GENERAL)
    # general: F(0) = 0 and sign(0) = +1, so the error is sqrt(numel) per layer
    expected = sum(math.sqrt(getattr(model, name).weight.numel()) for name in GENERAL)
    assert float(estimating_error(model, "general")) == pytest.approx(expected, rel=1e-6)
    assert n > 0


@pytest.mark.parametrize("mode,names", [("paper", PAPER), ("general", GENERAL)])
def test_stability_by_hand(mode, names):
    model = make_model()
    backward(model)
    got = gradient_stability(model, mode)
    assert got.dim() == 0
    assert float(got) == pytest.approx(hand_stability(model, names), rel=1e-5)


def test_a_float64_model_keeps_float64_indicators():
    """(review userB #4) Both sums are taken in float64 for a float64 model (float32 before: 1.5e-7 off), and in
    float32 otherwise."""
    model = make_model().double()
    gen = torch.Generator().manual_seed(1)
    x, target = torch.randn(3, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (3,), generator=gen)
    nn.functional.cross_entropy(model(x), target).backward()
    for mode, names in (("paper", PAPER), ("general", GENERAL)):
        assert gradient_stability(model, mode).dtype == torch.float64
        assert float(gradient_stability(model, mode)) == pytest.approx(hand_stability(model, names), rel=1e-12)
    error = estimating_error(model, "paper")
    assert error.dtype == torch.float64 and float(error) == pytest.approx(hand_error_paper(model, 3.0), rel=1e-12)
    assert estimating_error(make_model(), "paper").dtype == torch.float32


def test_the_indicator_functions_refuse_a_model_without_their_layers():
    """(review userA #8) A sum over no layer, 0, would read as a network in perfect equilibrium: refused, as the
    meter refuses it."""
    for f in (estimating_error, gradient_stability):
        with pytest.raises(ValueError, match="no binary layers"):
            f(nn.Sequential(nn.Conv2d(1, 1, 3)))
        with pytest.raises(ValueError, match="no binary 3x3 conv"):
            f(reste.binarize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))), "paper")


def test_stability_needs_gradients():
    with pytest.raises(RuntimeError):
        gradient_stability(make_model(), "paper")


def test_bad_mode_and_empty_model():
    model = make_model()
    with pytest.raises(ValueError):
        estimating_error(model, mode="bogus")
    with pytest.raises(ValueError):
        EquilibriumMeter(model, mode="bogus")
    with pytest.raises(ValueError, match="no binary layers"):
        EquilibriumMeter(nn.Sequential(nn.Conv2d(1, 1, 3)), mode="general")
    # only 1x1 binary convs, or binary linears (a binarized MLP): nothing for the paper mode, which the error says
    # (it said "no binary layers", wrong for such a model)
    for binary in (BinaryConv2d(1, 1, 1), reste.BinaryConv1d(1, 1, 3),  # a 1-D kernel of 3 is not a 3x3 one
                   reste.binarize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)))):
        with pytest.raises(ValueError, match="no binary 3x3 conv.*use mode='general'"):
            EquilibriumMeter(nn.Sequential(binary), mode="paper")


# ------------------------------------------------------------------ the meter


def run_meter(mode, epochs=3, iters=2):
    """Train the tiny model a little, recording hand-computed values after each step."""
    model = make_model()
    meter = EquilibriumMeter(model, mode=mode, **({"o_end": 3.0} if mode == "paper" else {}))  # (paper's alone)
    names = PAPER if mode == "paper" else GENERAL
    per_epoch, logged = [], []
    step = 0
    for epoch in range(epochs):
        reste.set_progress(model, epoch, epochs)
        o = 1.0 + (1.0 - math.cos(math.pi / 2 * epoch / epochs)) * 2.0
        its = []
        for _ in range(iters):
            backward(model, seed=step)
            step += 1
            with torch.no_grad():  # a plain SGD step (torch.optim's first step is slow to import)
                for p in model.parameters():
                    if p.grad is not None:
                        p.sub_(0.5 * p.grad)
            meter.update()
            if mode == "paper":
                e = hand_error_paper(model, 3.0)
            else:
                e = hand_error_general(model, lambda w: hand_reste_F(w, o))
            its.append((e, hand_stability(model, names)))
        per_epoch.append(its)
        logged.append(meter.epoch_end())
    return meter, per_epoch, logged


def test_meter_paper_mode():
    meter, per_epoch, logged = run_meter("paper")
    for its, got in zip(per_epoch, logged):
        e_last, s_last = its[-1]  # the last iteration of the epoch
        assert got["estimating_error"] == pytest.approx(e_last, rel=1e-5)
        assert got["gradient_stability"] == pytest.approx(s_last, rel=1e-5)
        # the iterations differ, so "last" is a real choice
        assert its[0][1] != pytest.approx(s_last, rel=1e-3)
    summary = meter.summary()
    assert summary["estimating_error"] == pytest.approx(np.mean([its[-1][0] for its in per_epoch]), rel=1e-5)
    assert summary["gradient_stability"] == pytest.approx(sum(its[-1][1] for its in per_epoch), rel=1e-5)
    assert meter.history == logged


def test_meter_general_mode():
    meter, per_epoch, logged = run_meter("general")
    for its, got in zip(per_epoch, logged):
        assert got["estimating_error"] == pytest.approx(np.mean([e for e, _ in its]), rel=1e-5)
        assert got["gradient_stability"] == pytest.approx(np.mean([s for _, s in its]), rel=1e-5)
    summary = meter.summary()
    all_e = [np.mean([e for e, _ in its]) for its in per_epoch]
    all_s = [np.mean([s for _, s in its]) for its in per_epoch]
    assert summary["estimating_error"] == pytest.approx(np.mean(all_e), rel=1e-5)
    assert summary["gradient_stability"] == pytest.approx(np.mean(all_s), rel=1e-5)


def test_meter_state_round_trip_and_misuse():
    meter, _, _ = run_meter("paper", epochs=2, iters=1)
    other = EquilibriumMeter(make_model(), mode="paper")
    assert other.summary() == {}
    other.load_state_dict(meter.state_dict())
    assert other.summary() == meter.summary()
    with pytest.raises(RuntimeError):
        other.epoch_end()  # no update since the last epoch_end


def test_the_indicators_stay_on_the_weights_device():
    """No tensor of another device enters the sums: on a GPU a CPU zero copied to it waits for the queued step
    (twice per step). The meta device stands in for the GPU: every op must see meta tensors only."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Devices(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen |= {(str(func), a.device.type) for a in tree_leaves((args, kwargs or {}))
                          if isinstance(a, torch.Tensor)}
            return func(*args, **(kwargs or {}))

    net = torch.nn.Sequential(BinaryConv2d(4, 4, 3), BinaryConv2d(4, 4, 3)).to("meta")
    for layer in net:
        layer.weight.grad = torch.empty_like(layer.weight)
    with Devices() as mode:
        for kind in ("general", "paper"):
            assert estimating_error(net, kind).device.type == "meta"
            assert gradient_stability(net, kind).device.type == "meta"
    assert {device for _, device in mode.seen} == {"meta"}, sorted(mode.seen)


def test_the_run_level_values_of_each_mode():
    from reste.indicators import run_level

    history = [{"estimating_error": 2.0, "gradient_stability": 1.0},
               {"estimating_error": 4.0, "gradient_stability": 3.0}]
    assert run_level(history, "general") == {"estimating_error": 3.0, "gradient_stability": 2.0}
    assert run_level(history, "paper") == {"estimating_error": 3.0, "gradient_stability": 4.0}  # the authors' sum
    assert run_level([], "paper") == {}
    # (review stats1 #1) an epoch of which nothing was measured (every step skipped: NaN) counts in neither
    skipped = {"estimating_error": float("nan"), "gradient_stability": float("nan")}
    assert run_level([history[0], skipped, history[1]], "paper") == run_level(history, "paper")
    assert run_level([skipped, history[1]], "general") == {"estimating_error": 4.0, "gradient_stability": 3.0}
    assert all(math.isnan(v) for v in run_level([skipped], "general").values())


def test_paper_mode_takes_the_models_o_end_unless_told():
    from reste import models

    assert EquilibriumMeter(models.create("resnet20_1w1a", estimator_options={"o_end": 5.0}), "paper").o_end == 5.0
    assert EquilibriumMeter(models.create("resnet20_1w1a", estimator="ste"), "paper").o_end == 3.0
    assert EquilibriumMeter(models.create("resnet20_1w1a"), "paper", o_end=2.0).o_end == 2.0


def test_frozen_layers_are_left_out_of_gradient_stability():
    model = nn.Sequential(BinaryLinear(4, 4), BinaryLinear(4, 2))
    model[1].weight.requires_grad_(False)
    model(torch.randn(3, 4)).sum().backward()
    alone = torch.var(model[0].weight.grad.abs().flatten())
    assert float(gradient_stability(model)) == pytest.approx(float(alone))  # raised 'has no gradient' before
    meter = EquilibriumMeter(model)
    with pytest.warns(UserWarning, match=r"1 of 2 binary layers are frozen or of one weight \(1\) and left out"):
        meter.update()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meter.update()  # said once
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="every layer of the 'general' indicators is frozen"):
        gradient_stability(model)
    with pytest.raises(RuntimeError, match="after backward"):
        gradient_stability(nn.Sequential(BinaryLinear(4, 4), BinaryLinear(4, 2)))


def test_a_stability_read_before_zero_grad_is_taken():
    model = nn.Sequential(BinaryLinear(4, 4), BinaryLinear(4, 2))
    model(torch.randn(3, 4)).sum().backward()
    s = gradient_stability(model)
    model.zero_grad()
    meter = EquilibriumMeter(model)
    meter.update(s)
    assert meter.epoch_end()["gradient_stability"] == pytest.approx(float(s))


def test_zeroed_gradients_are_said():
    """(review newuser2 #2) after zero_grad(set_to_none=False) the stability was 0.0, "perfectly stable", silently;
    after zero_grad() the same mistake was an error. A warning, as a tiny model's first step may zero them all."""
    model = nn.Sequential(BinaryLinear(4, 4), BinaryLinear(4, 2))
    meter = EquilibriumMeter(model)
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        model.zero_grad(set_to_none=False)
        meter.update()
    with pytest.warns(UserWarning, match=r"the gradient stability of this epoch is 0: every gradient it read was "
                                         r"zero; compute the indicators after backward\(\) and before zero_grad"):
        meter.epoch_end()
    # (review mut3 #4) a one-step epoch's stability is 0 by itself (a zero-initialised branch's first step): no word
    meter = EquilibriumMeter(model)
    model(torch.randn(3, 4)).sum().backward()
    model.zero_grad(set_to_none=False)
    meter.update()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert meter.epoch_end()["gradient_stability"] == 0.0


def test_saved_measure_passes_over_a_state_it_cannot_read():
    """(review mut3 #5) A resume asks it of every checkpoint's meter state: a paper-mode state without a number
    o_end (or a history that is no list, a mode unknown) is None, not a TypeError that stops the resume."""
    from reste.indicators import saved_measure

    assert saved_measure({"mode": "paper", "history": [{}], "o_end": 3}) == (1, 3.0)
    assert saved_measure({"mode": "general", "history": [{}, {}]}) == (2, None)
    for state in ({"mode": "paper", "history": [{}]}, {"mode": "paper", "history": [{}], "o_end": "3"},
                  {"mode": "general", "history": {}}, {"mode": "other", "history": []}, None, []):
        assert saved_measure(state) is None, state


def test_a_meter_refuses_a_history_of_another_mode():
    general, _, _ = run_meter("general", epochs=1, iters=1)
    paper = EquilibriumMeter(make_model(), mode="paper")
    with pytest.raises(ValueError, match="saved indicator history is in the 'general' mode, this run's is 'paper'"):
        paper.load_state_dict(general.state_dict())
    at_two = EquilibriumMeter(make_model(), mode="paper", o_end=2.0)
    with pytest.raises(ValueError, match="o_end=3, this run's is 2"):
        at_two.load_state_dict(EquilibriumMeter(make_model(), mode="paper", o_end=3.0).state_dict())
    paper.load_state_dict({"history": general.state_dict()["history"]})  # an older state, without its mode
    assert len(paper.history) == 1


def test_paper_mode_takes_o_end_of_restes_only(isolated):
    """(review extend #9) Another estimator's hyper-parameter named o_end (a plugin's, sharing ReSTE's flag) moved
    the paper mode's F from 3 to 7; a ReSTE subclass's (a schedule of one's own) is ReSTE's."""

    @reste.register_estimator
    class Clip7(reste.Estimator):
        name = "clip7_test"
        hyperparameters = (reste.Param("o_end", float, 7.0, "something else", "[1, inf)"),)
        _g = staticmethod(lambda x, o_end: (x.abs() <= 1).to(x.dtype))

    @reste.register_estimator
    class MyReSTE(reste.ReSTE):
        name = "my_reste_test"

    assert EquilibriumMeter(Tiny("clip7_test"), "paper").o_end == 3.0
    assert EquilibriumMeter(Tiny(reste.get_estimator("my_reste_test", o_end=6.0)), "paper").o_end == 6.0


def test_general_indicators_refuse_an_estimator_without_f_before_training(isolated):
    """An estimator of one's own with _g alone: EquilibriumMeter(mode='general') says so when it is built (it failed
    at the first update(), after a training step, inside a Lightning fit too); the paper mode takes it."""

    @reste.register_estimator
    class OnlyG(reste.Estimator):
        name = "only_g_test"
        hyperparameters = ()
        _g = staticmethod(lambda x: (x.abs() <= 1).to(x.dtype))

    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2)),
                           "only_g_test")
    with pytest.raises(ValueError, match="estimator\\(s\\) 'only_g_test' define no _f; .* or use mode='paper'"):
        EquilibriumMeter(model, mode="general")
    assert EquilibriumMeter(model, mode="paper").mode == "paper"


def test_an_o_end_that_the_general_mode_would_not_read_is_refused():
    """(review paper #3) EquilibriumMeter(mode="general", o_end=5) measured what it measures without one (each layer's
    estimator at its current o) and saved 5 in its state as if used. Refused in one line; the paper mode takes it,
    and the general mode without one (its state's o_end the model's, unused) is as it was."""
    model = make_model()
    with pytest.raises(ValueError, match=r"^o_end applies to the 'paper' indicators only \(.*\): drop o_end, or pass "
                                         r"mode='paper'$"):
        EquilibriumMeter(model, mode="general", o_end=5.0)
    with pytest.raises(ValueError, match="o_end must be a number >= 1"):  # a bad one is said so, whatever the mode
        EquilibriumMeter(model, mode="general", o_end=0.5)
    assert EquilibriumMeter(model, mode="paper", o_end=5.0).state_dict()["o_end"] == 5.0
    general = EquilibriumMeter(model, mode="general")
    assert (general.state_dict()["o_end"], general.measure()) == (3.0, {"indicators_o_end": None})
    assert EquilibriumMeter(model, mode="paper").measure() == {"indicators_o_end": 3.0}


def test_the_paper_modes_o_end_is_checked_when_the_meter_is_made():
    """(review api #2) o_end=0 failed at the first update with a ZeroDivisionError; a negative or NaN one gave
    nonsense silently. Refused as ReSTE's o_end is; a NumPy number is taken."""
    import numpy as np

    model = Tiny()
    for bad in (0, -2.0, float("nan"), float("inf"), True, "3"):
        with pytest.raises(ValueError, match="o_end must be a number >= 1"):
            EquilibriumMeter(model, mode="paper", o_end=bad)
    assert EquilibriumMeter(model, mode="paper", o_end=np.float32(2.5)).o_end == 2.5
    assert EquilibriumMeter(model, mode="paper", o_end=torch.tensor(2.5)).o_end == 2.5  # as ReSTE's (diff11 #6)
    for bad in (0, -1, True):  # (review types1 #1) and by estimating_error itself: 0 raised ZeroDivisionError
        with pytest.raises(ValueError, match="o_end must be a number >= 1"):
            estimating_error(model, "paper", bad)
    assert torch.isfinite(estimating_error(model, "general", 0))  # (the general mode reads no o_end)


def test_a_binary_layer_the_forward_did_not_use_is_left_out_of_that_step():
    """A layer the step's forward skipped (an auxiliary head; a branch skipped at random, as stochastic depth does)
    has no gradient while the others have: it is left out of that step with a warning that names it (review api
    #10: an error ended the training loop at a random step)."""
    model = nn.ModuleDict({"body": BinaryLinear(4, 4), "aux": BinaryLinear(4, 2)})
    model["body"](torch.randn(3, 4)).sum().backward()
    with pytest.warns(UserWarning, match=r"layer 'aux' got no gradient in a step while other binary layers got "
                                         r"theirs .* leaves it out of such steps"):
        alone = float(gradient_stability(model))
    assert alone == pytest.approx(float(torch.var(model["body"].weight.grad.abs())))
    meter = EquilibriumMeter(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meter.update()
    model["aux"](torch.randn(3, 4)).sum().backward()  # the next step uses it: both count
    meter.update()
    assert meter.epoch_end()["gradient_stability"] > 0
    model.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="compute the indicators after backward"):  # no layer has one: misuse
        gradient_stability(model)
    model["aux"].weight.requires_grad_(False)
    model["body"](torch.randn(3, 4)).sum().backward()
    assert float(gradient_stability(model)) == pytest.approx(float(torch.var(model["body"].weight.grad.abs())))


@pytest.mark.parametrize("mode", ["general", "paper"])
def test_a_step_fp16_s_scaler_skipped_is_left_out(mode):
    """(review math #1) a step the GradScaler skips has inf or NaN gradients: fed to the meter, it made the epoch's
    and the run's gradient stability NaN. A real GradScaler (on the CPU) skips a step whose loss overflows; the
    meter leaves it out, in the general mode from the mean, in the paper mode as the epoch's last step."""
    from reste.indicators import amp_scale, amp_skipped

    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    meter = EquilibriumMeter(model, mode=mode)
    taken = []
    for step, factor in enumerate([1.0, 1.0, float("inf"), 1.0, float("inf")]):  # the epoch's last step skipped
        optimizer.zero_grad()
        scaler.scale(model(torch.randn(4, 2, 5, 5)).sum() * factor).backward()
        before = amp_scale(scaler)
        scaler.step(optimizer)
        scaler.update()
        skipped = amp_skipped(before, amp_scale(scaler))
        assert bool(skipped) == (factor != 1.0)
        if not skipped:
            taken.append((float(estimating_error(model, mode)), float(gradient_stability(model, mode))))
        meter.update(skipped=skipped)
    got = meter.epoch_end()
    want = taken[-1] if mode == "paper" else np.mean(taken, axis=0)
    assert got["estimating_error"] == pytest.approx(want[0], rel=1e-5)
    assert got["gradient_stability"] == pytest.approx(want[1], rel=1e-5)
    assert amp_scale(torch.amp.GradScaler("cpu", enabled=False)) is None and amp_skipped(None, None) is None


def test_a_binary_layer_of_one_weight_is_left_out_of_gradient_stability():
    """(review math #3) the unbiased variance of one weight is undefined: one such layer made the sum, each epoch's
    value and the run's NaN, with only torch's warning."""
    torch.manual_seed(0)
    bnn = reste.binarize(nn.Sequential(nn.Linear(4, 1), nn.Linear(1, 1), nn.Linear(1, 3), nn.Linear(3, 2)), "ste")
    bnn(torch.randn(8, 4)).sum().backward()
    meter = EquilibriumMeter(bnn, mode="general")
    with pytest.warns(UserWarning, match=r"1 of 2 binary layers are frozen or of one weight \(1\)"):
        meter.update()
    values = meter.epoch_end()
    want = float(torch.var(bnn[2].weight.grad.abs().flatten()))
    assert values["gradient_stability"] == pytest.approx(want, rel=1e-6)
    from reste.integrations.tensorboard import layer_indicators  # (review rev14 #2: per layer, it raised)

    per_layer = layer_indicators(meter)
    assert "indicators/1/gradient_stability" not in per_layer and "indicators/1/estimating_error" in per_layer
    assert per_layer["indicators/2/gradient_stability"] == pytest.approx(want, rel=1e-6)
    # (review rev14 #12) a last step fp16's scaler skipped: the error alone, no stability of its inf gradients
    assert set(layer_indicators(meter, stability=False)) == {"indicators/1/estimating_error",
                                                              "indicators/2/estimating_error"}


def test_a_model_whose_binary_layers_all_have_one_weight_is_refused_before_any_step():
    """(review rev14 #10) it failed after its first step, saying to unfreeze a layer."""
    bnn = reste.binarize(nn.Sequential(nn.Linear(4, 1), nn.Linear(1, 1), nn.Linear(1, 3)), "ste")
    with pytest.raises(ValueError, match="every binary layer of the 'general' indicators is frozen .* or has a single "
                                         "weight"):
        EquilibriumMeter(bnn, mode="general")


def test_the_partial_sums_of_another_mode_are_not_taken_and_all_frozen_is_refused_at_once():
    """(review rev15 #6) a resume with another --indicators mode (--force) took the paper meter's last value as the
    general meter's running sum; (rev15 #9) a model whose binary layers are all frozen failed after its first step."""
    torch.manual_seed(0)
    model = Tiny()
    model(torch.randn(2, 2, 5, 5)).sum().backward()
    paper = EquilibriumMeter(model, mode="paper")
    paper.update()
    general = EquilibriumMeter(model, mode="general")
    general.load_partial_state(paper.partial_state())
    general.update()
    want = EquilibriumMeter(model, mode="general")
    want.update()
    assert general.epoch_end() == want.epoch_end()
    for layer in (model.b1, model.b2, model.short, model.fc1):
        layer.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="is frozen \\(requires_grad=False\\) or has a single weight"):
        EquilibriumMeter(model, mode="general")


def test_a_meter_continued_from_its_partial_state_after_a_skipped_step_gives_the_same_epoch():
    """(review tests2 #3) A mid-epoch checkpoint of the general-mode meter after a skipped step (fp16's inf): the
    count of the steps taken was not checked across it, and the resumed epoch's mean could divide by the wrong count.
    The same float operations, so the same values exactly."""
    torch.manual_seed(0)
    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 3)),
                           "ste")
    x = torch.randn(2, 1, 6, 6)
    start = copy.deepcopy(model.state_dict())

    def run(split):
        model.load_state_dict(start)
        meter = EquilibriumMeter(model)
        for i, skipped in enumerate([False, True, False, False]):
            if i == split:
                state = meter.partial_state()
                meter = EquilibriumMeter(model)
                meter.load_partial_state(state)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * i)  # (each step's weights their own)
            model.zero_grad()
            model(x).sum().backward()
            meter.update(skipped=torch.tensor(skipped))
        return meter.epoch_end()

    straight = run(None)
    for split in (1, 2, 3):
        assert run(split) == straight, split


@pytest.mark.parametrize("mode", ["general", "paper"])
def test_an_epoch_made_nan_by_a_nan_gradient_is_said_not_left_out_silently(mode):
    """(review research1) an estimator whose g returns NaN makes a step's gradient NaN: the epoch's stability is NaN
    though every step was measured, and summary() left that epoch out without a word, as one whose every step fp16's
    scaler skipped (a run-level value that hid the NaN). A skipped epoch stays silent."""
    torch.manual_seed(0)
    model = Tiny()
    meter = EquilibriumMeter(model, mode=mode)
    for epoch in range(2):
        model.zero_grad()
        model(torch.randn(4, 2, 5, 5)).sum().backward()
        if epoch == 1:
            model.b1.weight.grad[0, 0, 0, 0] = float("nan")
        meter.update()
        if epoch == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                meter.epoch_end()
        else:
            with pytest.warns(UserWarning, match=r"stability \(nan\) is not finite though 1 step was measured.*; "
                                                 r"summary\(\) and the run-level values leave this epoch out"):
                meter.epoch_end()
    assert len(meter.history) == 2 and meter.summary()["gradient_stability"] == meter.history[0]["gradient_stability"]
    overflow = EquilibriumMeter(model, mode=mode)  # (review mut13) an inf epoch is in the run's values: said so
    model.zero_grad()
    (model(torch.randn(4, 2, 5, 5)).sum() * 1e30).backward()
    overflow.update()
    with pytest.warns(UserWarning, match=r"stability \(inf\) is not finite .*; summary\(\)'s and the run-level "
                                         r"values are then inf too"):
        overflow.epoch_end()
    assert overflow.summary()["gradient_stability"] == math.inf
    skipping = EquilibriumMeter(model, mode=mode)  # every step skipped by fp16's scaler: left out without a warning
    model.b1.weight.grad[0, 0, 0, 0] = float("inf")
    skipping.update(skipped=torch.tensor(True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        skipping.epoch_end()


def test_update_refuses_a_stability_or_skipped_of_the_wrong_kind():
    """(review apifuzz1) update(stability="x") was taken and failed at the next update ("can only concatenate str"),
    update(skipped="yes") as "new(): invalid data type 'str'"."""
    model = Tiny()
    model(torch.randn(2, 2, 5, 5)).sum().backward()
    meter = EquilibriumMeter(model)
    with pytest.raises(TypeError, match=r"^EquilibriumMeter.update: stability is gradient_stability\(model\)'s value"):
        meter.update(stability="x")
    with pytest.raises(TypeError, match=r"^EquilibriumMeter.update: skipped is True, False or a bool tensor"):
        meter.update(skipped="yes")
    meter.update(stability=0.5, skipped=torch.tensor(False))
    meter.update(skipped=False)
    assert meter._count == 2
