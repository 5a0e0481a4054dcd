"""The fused kernels' scalar arguments (reste.kernel_args), checked exactly where a kernel's tolerance could not see
them."""

from __future__ import annotations

import math

import pytest

from reste.kernel_args import f32, kernel_scalars


@pytest.mark.parametrize("w", [0.1, 0.3, 0.7, 1 / 3, 0.5])
def test_fdas_w_is_passed_whole_as_its_float32_value_and_the_rest(w):
    """(review mut3 #7) FDA's w goes to a kernel as f32(w) and w - f32(w), so that the kernel rebuilds w in float64
    and its (2i+1) w terms round as the PyTorch expression's: with the rest dropped, a third of the C++ extension's
    outputs moved in their last bits, below every tolerance that compares it."""
    (hi, rest, four_w_over_pi, *_), n, o = kernel_scalars("fda", {"w": w, "n": 17})
    assert hi == f32(w) and hi + rest == w and o is None and n == 17
    assert (rest != 0.0) == (f32(w) != w)  # (0.5 is a float32: no rest)
    assert four_w_over_pi == 4.0 * w / math.pi
