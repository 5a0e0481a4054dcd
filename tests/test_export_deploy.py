"""review deploy: what a deployer of an exported model meets (torch.cat along the batch, predict on a model
that is no classifier, batch sizes, raw pixels out of range, meta arrays, interrupted ONNX writes, ...)."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from reste.errors import UsageError
from reste.export import PackedModel, export_model
from reste.layers import BinaryConv2d

pytestmark = pytest.mark.usefixtures("one_thread_module")


class _CatBatch(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.c, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b, self.fc = BinaryConv2d(16, 16, 3, padding=1), nn.Linear(16 if dim in (0, -4) else 32, 10)

    def forward(self, x):
        y = self.b(self.bn(self.c(x)))
        return self.fc(torch.cat([y, y], self.dim).mean((2, 3)))


@pytest.mark.parametrize("dim", [0, -4])
def test_cat_along_the_batch_is_refused_in_one_line(tmp_path, dim):
    """(review deploy #1) torch.cat along the batch gave 2N rows (an IndexError traceback from the check)."""
    path = tmp_path / "cb.rbnn"
    with pytest.raises(UsageError, match="cannot export torch.cat along the batch dimension") as info:
        export_model(_CatBatch(dim).eval(), path, input_size=(3, 8, 8))
    assert "\n" not in str(info.value) and not path.exists()
    with pytest.raises(UsageError, match="along the batch dimension"):
        export_model(_CatBatch(dim).eval(), path, input_size=(3, 8, 8), verify=False)
    if dim < 0:  # without the shapes a negative dim cannot be told from the batch
        with pytest.raises(UsageError, match="a negative one needs input_size"):
            export_model(_CatBatch(dim).eval(), path)


@pytest.mark.parametrize("dim", [1, -3])
def test_cat_after_the_batch_still_exports(tmp_path, dim):
    torch.manual_seed(0)
    model = _CatBatch(dim).eval()
    assert export_model(model, tmp_path / "c.rbnn", input_size=(3, 8, 8))["verify"]["ok"]
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(PackedModel.load(tmp_path / "c.rbnn")(x), model(x), atol=1e-4)


def test_a_file_with_cat_along_the_batch_is_refused(tmp_path):
    """(review deploy #1) a file whose cat names the batch: dim 0 at load, a negative one at the first call."""
    from test_export_crafted import _crafted

    torch.manual_seed(0)
    export_model(_CatBatch(1).eval(), tmp_path / "c.rbnn", input_size=(3, 8, 8), verify=False)

    def cat_dim(value):
        def edit(h):
            next(n for n in h["nodes"] if n["op"] == "cat")["dim"] = value
        return edit

    with pytest.raises(UsageError, match="corrupted packed model.*dim must be a dimension after the batch"):
        PackedModel.load(_crafted(tmp_path / "c.rbnn", tmp_path, cat_dim(0)))
    model = PackedModel.load(_crafted(tmp_path / "c.rbnn", tmp_path, cat_dim(-4)))
    with pytest.raises(UsageError, match="reaches the batch"):
        model(torch.randn(2, 3, 8, 8))
