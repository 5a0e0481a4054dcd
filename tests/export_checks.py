"""Checks that a packed file computes what its model computes, honest about float32 rounding on any CPU.

A binary network is discontinuous: where a sign's input lies within float32 rounding of zero (a near-tie), two
float32 computations may take either sign, and the logits after it differ by far more than rounding. So each of the
file and the model is compared with the file's float64 reference (exact binary sums), not with the other through a
bare tolerance: an image agrees within rounding, or flipped a sign at a near-tie; anything else is a mismatch.
"""

from __future__ import annotations

import torch
from torch import nn

from reste.export import PackedModel
from reste.export.exporter import model_reference
from reste.export.reference import Comparison, compare, trace_model


def assert_explained(c: Comparison, what: str) -> None:
    """Every image agrees with the float64 reference within float32 rounding, or flipped a sign
    where the reference is within rounding of zero (a near-tie: either sign is a correct float32
    answer). A flip needs a pre-activation within about 1e-6 of zero, so most images must agree;
    requiring at least one keeps the logit comparison alive whatever CPU this runs on."""
    assert c.traced, f"{what}: sign inputs not traced"
    assert c.mismatch == 0, f"{what}: {c.problems}"
    assert c.agree >= 1 and c.agree + c.near_tie == c.images, f"{what}: {c.summary()}"


def assert_computes_model(path, model: nn.Module, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """The packed file ``path`` and ``model`` (eval mode) each against the file's float64 reference on images ``x``
    (a float32 batch norm's shift allowed for, as the export's own check does): :func:`assert_explained` for both.
    Returns the file's logits (review tests, suggestion 1: the tests compared the two through a bare atol)."""
    ref = model_reference(model, path, x)
    trace: list[torch.Tensor] = []
    got = PackedModel.load(path, backend=backend).forward(x, trace=trace)
    assert_explained(compare(ref, got, trace), f"{path}")
    logits, sites = trace_model(model, x)
    assert_explained(compare(ref, logits.float(), sites), "the float32 model")
    return got


def break_untraced_runs(monkeypatch) -> None:
    """Make every packed model give logits 1 higher when run untraced than traced: an engine whose fused sign bits
    went wrong, which the export check must catch."""
    forward = PackedModel.forward

    def wrong_untraced(self, images, *, trace=None):
        out = forward(self, images, trace=trace)
        return out if trace is not None else out + 1.0

    monkeypatch.setattr(PackedModel, "forward", wrong_untraced)
