"""FlipRatio: larq's flip_ratio metric for reste's binary layers, counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reste
from reste import BinaryConv2d, BinaryLinear, FlipRatio
from reste.optim import Bop, Composite, split_binary


def _two_layers() -> nn.Sequential:
    model = nn.Sequential(BinaryLinear(4, 5, bias=False), BinaryLinear(5, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(20.0).reshape(5, 4) - 9.5)  # 10 negative, 10 positive
        model[1].weight.fill_(0.25)
    return model


def test_counts_the_signs_the_forward_uses() -> None:
    model = _two_layers()
    flips = FlipRatio(model)
    with torch.no_grad():
        model[0].weight.view(-1)[:3] *= -1      # 3 of 20 flip
        model[0].weight.view(-1)[3] = 0.0       # -6.5 -> 0: sign(0) is +1, a flip
        model[1].weight.view(-1)[0] = 0.0       # 0.25 -> 0: still +1, no flip
        model[1].weight.view(-1)[1] = 0.1       # moved, same sign
    assert float(flips.update()) == pytest.approx(4 / 30)
    assert float(flips.update()) == 0.0         # nothing moved since
    with torch.no_grad():
        model[1].weight.view(-1)[:5] = -1.0     # 5 of 10 flip
    assert float(flips.update()) == pytest.approx(5 / 30)
    values = flips.epoch_end()
    assert values["layers"] == pytest.approx({"0": 4 / 20 / 3, "1": 5 / 10 / 3})
    assert values["flip_ratio"] == pytest.approx(9 / 30 / 3)
    assert flips.history == [values]
    with pytest.raises(RuntimeError, match="no update"):
        flips.epoch_end()


def test_agrees_with_bop_flips() -> None:
    torch.manual_seed(0)
    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8),
                                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10)), "ste", scaling="none")
    binary, others = split_binary(model)
    bop = Bop(binary, gamma=0.5, threshold=0.0)
    optimizer = Composite(bop, torch.optim.Adam(others))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    flips, total, seen = None, sum(p.numel() for p in binary), 0
    for step in range(4):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if flips is None:  # the first step makes the weights +-1
            flips = FlipRatio(model)
            continue
        ratio = float(flips.update())
        assert ratio * total == pytest.approx(int(bop.flips))
        seen += int(bop.flips)
    assert seen > 0


def test_frozen_and_shared_weights() -> None:
    shared = BinaryConv2d(2, 2, 3, bias=False)
    twin = BinaryConv2d(2, 2, 3, bias=False)
    twin.weight = shared.weight                  # tied: counted once
    frozen = BinaryLinear(3, 3, bias=False).requires_grad_(False)
    flips = FlipRatio(nn.ModuleList([shared, twin, frozen]))
    assert [name for name, _ in flips.layers] == ["0"]
    with torch.no_grad():
        shared.weight.neg_()
        frozen.weight.neg_()
    assert float(flips.update()) == pytest.approx(float((shared.weight != 0).float().mean()))
    with pytest.raises(ValueError, match="no trainable binary weight"):
        FlipRatio(nn.Sequential(nn.Linear(2, 2), frozen))


def test_a_model_moved_to_another_device_after_construction_is_followed() -> None:
    # FlipRatio(model) then model.to(device), the order of a usual script: the signs kept from the construction are
    # on the old device (the meta device stands in for a GPU here)
    model = _two_layers()
    flips = FlipRatio(model)
    assert float(flips.update()) == 0.0          # a step on the old device: the epoch's sums are there too
    model.to("meta")
    ratio = flips.update()
    assert ratio.device.type == "meta" and ratio.shape == ()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (RESTE_TEST_DEVICE=cuda)")
def test_update_does_not_wait_for_the_gpu() -> None:
    # update() returns a 0-dim tensor so that a step need not wait for the device: nothing in it may copy from the
    # host (a list made a tensor on the GPU each step) or read a GPU value back
    model = _two_layers().cuda()
    flips = FlipRatio(model)
    flips.update()                               # the first may move what it keeps to the GPU
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            model[0].weight.neg_()
        flips.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_skipped_step_is_left_out_and_the_history_survives_a_state_dict() -> None:
    """(review research2) a step fp16's scaler skipped changed no sign and counted as 0 flips, pulling the epoch's
    mean down where EquilibriumMeter leaves it out; and the history had no state_dict for a resume."""
    model = _two_layers()
    flips = FlipRatio(model)
    with torch.no_grad():
        model[0].weight.view(-1)[:2] *= -1      # 2 of 20
    flips.update()
    flips.update(skipped=torch.tensor(True))    # (no sign moved: a skipped step)
    flips.update(skipped=False)
    values = flips.epoch_end()
    assert values["layers"] == pytest.approx({"0": 2 / 20 / 2, "1": 0.0})  # over the 2 steps taken, not 3
    flips.update(skipped=True)
    assert str(flips.epoch_end()["flip_ratio"]) == "nan"  # every step skipped: nothing measured
    with pytest.raises(TypeError, match="skipped is True, False or a bool tensor"):
        flips.update(skipped="yes")
    again = FlipRatio(model)
    again.load_state_dict(flips.state_dict())
    assert again.history[0] == values and len(again.history) == 2
    with pytest.raises(ValueError, match="takes what state_dict"):
        again.load_state_dict({"epochs": []})
