"""Bop (reste.optim): its update against the rule written out in float64, its edges (sign(0), a tie at the
threshold, weights without a gradient), exact resume from its state_dict, split_binary, and a digits CNN whose
binary weights Bop trains beyond what the same network learns with them frozen."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reste
from reste.optim import Bop, split_binary

pytestmark = pytest.mark.usefixtures("one_thread_module")


def bop_by_hand(w: torch.Tensor, m: torch.Tensor, g: torch.Tensor, gamma: float, threshold: float):
    """One step of the rule in float64: m <- m + gamma (g - m); w <- -sign(w) where sign(w) m > threshold. (The
    optimizer may round m differently in its last bit; random data never puts sign(w) m that near the threshold.)"""
    m = m + gamma * (g - m)
    s = torch.where(w < 0, -1.0, 1.0).double()
    flip = s * m > threshold
    return torch.where(flip, -s, s), m, int(flip.sum())


def test_steps_follow_the_rule_written_out_in_float64():
    """Three weight tensors in two groups: each step's weights and moving averages by hand, and its flip count the
    sum over all of them (review tests2 #1: a count of the last tensor's alone passed). A weight at +-0 with no
    signal becomes +1 (sign(0) = +1; review tests2 #2: with the gradients drawn, sign(0) = -1 passed by chance)."""
    torch.manual_seed(0)
    ws = [nn.Parameter(torch.randn(*shape, dtype=torch.float64)) for shape in ((6, 5), (4,), (3, 2, 2))]
    ws[0].data.view(-1)[:3] = torch.tensor([0.0, -0.0, 0.5])
    with pytest.warns(UserWarning, match=r"1 parameter\(s\) of 1 dimension \(shapes \[\(4,\)\]"):  # (a vector
        bop = Bop([{"params": ws[:2]}, {"params": ws[2:]}], gamma=0.3, threshold=0.05)  # beside matrices: below)
    refs = [(w.detach().clone(), torch.zeros_like(w)) for w in ws]
    total = 0
    for step in range(5):
        flips = 0
        for i, w in enumerate(ws):
            w.grad = torch.randn_like(w)
            if step == 0 and i == 0:
                w.grad.view(-1)[:2] = 0.0  # no signal at the two zeros: they take sign(0) = +1 as they are
            ref_w, ref_m, n = bop_by_hand(*refs[i], w.grad, 0.3, 0.05)
            refs[i], flips = (ref_w, ref_m), flips + n
        bop.step()
        if step == 0:
            assert ws[0].view(-1)[:2].tolist() == [1.0, 1.0]
        for w, (ref_w, ref_m) in zip(ws, refs):
            assert torch.equal(w.detach(), ref_w), step
            torch.testing.assert_close(bop.state[w]["m"], ref_m, rtol=1e-15, atol=1e-15)
        assert int(bop.flips) == flips
        total += flips
    assert int(bop.flipped) == total
    assert all(set(w.detach().unique().tolist()) <= {-1.0, 1.0} for w in ws) and 0 < total


def test_a_signal_on_the_threshold_does_not_flip_and_one_past_it_does():
    # exact in binary floating point, whatever the order or fusion of the update's operations
    w = nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
    bop = Bop([w], gamma=0.5, threshold=0.25)
    w.grad = torch.tensor([0.5, 0.5 + 2.0 ** -20, -0.5, 0.5])
    bop.step()
    assert w.tolist() == [1.0, -1.0, -1.0, -1.0] and int(bop.flips) == 1
    assert bop.state[w]["m"].tolist() == [0.25, 0.25 + 2.0 ** -21, -0.25, 0.25]


def test_weights_without_a_gradient_are_left_alone_and_bad_settings_are_refused():
    a, b = nn.Parameter(torch.tensor([0.3, -2.0])), nn.Parameter(torch.tensor([0.5]))
    bop = Bop([a, b], gamma=1.0, threshold=0.0)
    a.grad = torch.tensor([1.0, 1.0])
    bop.step()
    assert a.tolist() == [-1.0, -1.0] and b.tolist() == [0.5] and b not in bop.state
    assert bop.step(lambda: torch.tensor(7.0)).item() == 7.0  # the closure's loss comes back
    for kwargs, text in (({"gamma": 0.0}, "gamma must be in"), ({"gamma": 1.5}, "gamma must be in"),
                         ({"threshold": -1e-9}, "threshold must be >= 0"), ({"threshold": float("nan")}, ">= 0")):
        with pytest.raises(ValueError, match=text):
            Bop([a], **kwargs)


def test_a_resumed_bop_flips_exactly_as_an_uninterrupted_one():
    torch.manual_seed(1)
    grads = [torch.randn(4, 3) for _ in range(6)]
    start = torch.randn(4, 3)

    def run(steps, w, bop):
        for g in steps:
            w.grad = g.clone()
            bop.step()

    straight = nn.Parameter(start.clone())
    run(grads, straight, Bop([straight], gamma=0.2, threshold=0.1))
    first = nn.Parameter(start.clone())
    bop = Bop([first], gamma=0.2, threshold=0.1)
    run(grads[:3], first, bop)
    saved = bop.state_dict()
    second = nn.Parameter(first.detach().clone())
    resumed = Bop([second], gamma=0.2, threshold=0.1)
    resumed.load_state_dict(saved)
    run(grads[3:], second, resumed)
    assert torch.equal(second, straight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_weights_flip_as_float32_ones(dtype):
    """(review bf16user #1) m was kept in the weight's dtype: in float16, gamma * g at larq's defaults (1e-4 * 2e-4)
    rounded to 0 and no weight ever flipped; in bfloat16, once gamma (g - m) fell below half m's ulp, m stopped at
    about 256 gamma g, short of a threshold float32 passes. m is float32 for 16-bit weights: the same flips, at the
    same steps, as float32 weights (g = 2^-13, exact in all three), and a resume keeps m to the bit."""
    g = 2.0**-13
    for gamma, threshold, steps in ((1e-4, 1e-8, 100), (1e-4, 1e-5, 1200)):  # larq's defaults; past bf16's stall
        flipped_at = {}
        for kind in (torch.float32, dtype):
            w = nn.Parameter(torch.ones(4, dtype=kind))
            bop = Bop([w], gamma=gamma, threshold=threshold)
            for step in range(steps):
                w.grad = torch.full((4,), g, dtype=kind)
                bop.step()
                if int(bop.flips):
                    flipped_at[kind] = step
                    break
            assert bop.state[w]["m"].dtype == torch.float32
        assert flipped_at.get(dtype) is not None and flipped_at[dtype] == flipped_at[torch.float32], flipped_at
    w = nn.Parameter(torch.ones(4, dtype=dtype))
    bop = Bop([w])
    w.grad = torch.full((4,), g, dtype=dtype)
    bop.step()
    resumed = Bop([w])
    resumed.load_state_dict(bop.state_dict())  # (torch's load casts m to the weight's dtype: put back)
    assert torch.equal(resumed.state[w]["m"], bop.state[w]["m"]) and resumed.state[w]["m"].dtype == torch.float32


def test_split_binary_lists_each_binary_weight_once_and_the_rest_apart():
    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                                         nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2)), "ste", scaling="none")
    model[3].weight = model[1].weight  # tied: one weight
    binary, others = split_binary(model)
    assert [id(p) for p in binary] == [id(model[1].weight)]
    assert {id(p) for p in others} == {id(p) for p in model.parameters()} - {id(model[1].weight)}
    model[2].requires_grad_(False)  # a frozen batch norm is in neither list either (review mut3 #6)
    binary, others = split_binary(model)
    assert {id(p) for p in others} == {id(p) for p in model.parameters()} - {id(model[1].weight),
                                                                            id(model[2].weight), id(model[2].bias)}
    with pytest.raises(ValueError, match="no binary layer"):
        split_binary(nn.Linear(2, 2))
    model[1].weight.requires_grad_(False)  # frozen: in neither list, and Bop would have nothing to train
    with pytest.raises(ValueError, match="frozen"):
        split_binary(model)
    assert reste.Bop is Bop and reste.split_binary is split_binary and "Bop" in reste.__all__


def test_bop_takes_the_model_and_warns_of_its_float_parameters():
    """(review apifuzz1) Bop(model.parameters()), the torch idiom, set BatchNorm's weights and biases and the float
    first and last layers' weights to +-1 without a word: it warns now, and Bop(model) trains the binary weights
    alone, as split_binary(model)[0]. Vectors alone (a hand-made binary vector) are no model's parameters: no
    warning."""
    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3),
                                         nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2)), "ste", scaling="none")
    with pytest.warns(UserWarning, match=r"Bop was given 7 parameter\(s\) of 1 dimension .*Bop\(model\) or "
                                         r"split_binary\(model\)\[0\]"):
        Bop(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bop = Bop(model, gamma=1.0, threshold=0.0)
        Bop([nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))])
    assert [id(w) for w in bop.param_groups[0]["params"]] == [id(model[2].weight)]
    with pytest.raises(ValueError, match=r"^Bop\(model\): the model has no binary layer"):  # (review diff34)
        Bop(nn.Sequential(nn.Linear(2, 2)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    F.cross_entropy(model(torch.randn(4, 1, 6, 6)), torch.tensor([0, 1, 0, 1])).backward()
    bop.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"2.weight"} and set(model[2].weight.unique().tolist()) <= {-1.0, 1.0}


def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return x[:1400], torch.tensor(d.target[:1400]), x[1400:], torch.tensor(d.target[1400:])


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4, 10))


def _train(flip: bool, data) -> tuple[float, int, nn.Module]:
    """Test accuracy after 6 epochs: Bop on the binary weights (or none: they stay as initialised), Adam on the
    rest; and the flips over the run."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(0)
    model = reste.binarize(_cnn(), "ste", scaling="none")
    binary, others = split_binary(model)
    bop, adam = Bop(binary, gamma=3e-3, threshold=1e-6), torch.optim.Adam(others, lr=0.01)
    flips = 0
    for epoch in range(6):
        model.train()
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(xtr), 64):
            batch = order[i:i + 64]
            F.cross_entropy(model(xtr[batch]), ytr[batch]).backward()
            if flip:
                bop.step()
                flips += int(bop.flips)
            adam.step()
            bop.zero_grad()
            adam.zero_grad()
    model.eval()
    with torch.no_grad():
        return (model(xte).argmax(1) == yte).float().mean().item(), flips, model


def test_bop_trains_a_binarized_digits_cnn_beyond_its_frozen_binary_weights():
    data = _digits()
    frozen, _, _ = _train(False, data)
    trained, flips, model = _train(True, data)
    # on the machine that wrote this: 0.87 frozen, 0.955 with Bop (seeds 0 and 1). Measured across instruction sets
    # (review cpu2, ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA): these seeds clear the bar by 0.058 or more as
    # AVX-512, AVX2 and no vector unit compute them; over seeds 2 to 19 the closest cleared it by 0.013 (seed 3)
    assert trained > 0.9 and trained >= frozen + 0.03, (trained, frozen)
    assert flips > 0
    for _, layer in reste.binary_layers(model):
        assert set(layer.weight.detach().unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("estimator, scaling, said", [
    ("approx_sign", "none", "approx_sign: g(-1), g(+1) = 0, 0"),  # its weights never flip after the first step
    ("sign_swish", "none", "sign_swish: g(-1), g(+1) = -0.195, -0.195"),  # they flip the wrong way
    ("ste", "layer", "scaling 'layer'"),
])
def test_split_binary_names_layers_whose_gradient_bop_cannot_read(estimator, scaling, said):
    """(review userA #3) Bop reads the gradient of the binary weight itself: the STE (g = 1 at +-1) without a
    scale. Another estimator or a scale trained nothing, silently; `reste train` refuses them, the API warns."""
    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(),
                                         nn.Linear(16, 3)), estimator, scaling=scaling)
    with pytest.warns(UserWarning, match=re.escape(f"'1' ({said})")):
        split_binary(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_binary(reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(),
                                                  nn.Linear(4, 3)), "ste", scaling="none"))


def test_a_composites_zero_grad_passes_set_to_none_on():
    """(review tests2 #15) Composite.zero_grad(set_to_none=False) left None where zeros were asked for, untested."""
    from reste.optim import Composite

    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = Composite(Bop([a]), torch.optim.SGD([b], lr=0.1))
    for set_to_none in (False, True):
        (a.sum() + b.sum()).backward()
        opt.zero_grad(set_to_none=set_to_none)
        assert all((p.grad is None) if set_to_none else torch.equal(p.grad, torch.zeros_like(p)) for p in (a, b))


def test_one_cycle_and_cyclic_schedulers_take_a_composite_as_documented():
    """(review api3 #2) the docs said OneCycleLR and CyclicLR take a list with a value per group; they need
    cycle_momentum=False too (Bop has no momentum to cycle), which the docs now say: with it, both run and move Bop's
    factor on gamma and Adam's rate each from its own list."""
    from reste.optim import Composite

    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3),
                                         nn.Flatten(), nn.Linear(144, 10)), "ste", scaling="none")
    binary, others = split_binary(model)

    def composite():
        return Composite(Bop(binary, gamma=1e-3, threshold=1e-6), torch.optim.Adam(others, lr=1e-2))

    for make in (lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[1.0, 1e-2], total_steps=10,
                                                                  cycle_momentum=False),
                 lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=[0.1, 1e-3], max_lr=[1.0, 1e-2],
                                                               step_size_up=3, cycle_momentum=False)):
        opt = composite()
        sched = make(opt)
        seen = []
        for _ in range(4):
            loss = model(torch.randn(2, 1, 8, 8)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen.append([group["lr"] for group in opt.param_groups])
        assert seen[0] != seen[-1]
        assert all(0 < bop <= 1.0 + 1e-9 and 0 < adam <= 1e-2 * (1 + 1e-9) for bop, adam in seen)  # each its own
    with pytest.raises(ValueError, match="momentum"):  # what the docs' note is for
        torch.optim.lr_scheduler.OneCycleLR(composite(), max_lr=[1.0, 1e-2], total_steps=10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16bit_weights_average_is_the_float32_weights_to_the_bit(dtype):
    """(review mut12) m of a 16-bit weight is updated in float32 from its gradient, as a float32 weight's: m's bits
    equal after steps of gradients that 16 bits hold exactly (the test above uses one gradient, 2^-13, whose
    difference with m 16 bits held well enough: computing g - m in the weight's dtype failed no test)."""
    torch.manual_seed(0)
    grads = [torch.randn(64).to(dtype) for _ in range(6)]
    start = torch.randn(64).sign()
    ms = []
    for kind in (torch.float32, dtype):
        w = nn.Parameter(start.to(kind))
        bop = Bop([w], gamma=0.3, threshold=0.5)
        for g in grads:
            w.grad = g.to(kind)
            bop.step()
        ms.append(bop.state[w]["m"])
    assert ms[1].dtype == torch.float32 and torch.equal(ms[1], ms[0])
