"""An estimator used as an activation module before a binary layer of real inputs (larq's Activation("ste_sign")
before a QuantConv2D without an input_quantizer) exports as the 1W1A layer it is: packed inputs, XOR/popcount
(review larq1: it ran as a float conv of unpacked weights, about 10x slower)."""

from __future__ import annotations

import torch
from torch import nn

import reste
from reste.export import PackedModel, export_model
from reste.export.graph import to_graph
from reste.models.summary import layer_summary

from export_checks import assert_computes_model


def _model(separate: bool) -> nn.Sequential:
    def binary(cls, *args, **kwargs):
        if separate:  # the sign as a module of its own, the layer built for real inputs
            return [reste.get_estimator("ste_sign"), cls(*args, input_estimator=None, **kwargs)]
        return [cls(*args, **kwargs)]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                          *binary(reste.BinaryConv2d, 16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                          *binary(reste.BinaryConv2d, 16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                          nn.Flatten(), nn.BatchNorm1d(16 * 4 * 4),
                          *binary(reste.BinaryLinear, 16 * 4 * 4, 32), nn.BatchNorm1d(32), nn.Linear(32, 10))
    with torch.no_grad():  # batch norms of their own statistics, the same in both models
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_a_sign_module_before_a_layer_of_real_inputs_exports_as_a_1w1a_layer(tmp_path):
    separate, together = _model(True), _model(False)
    x = torch.randn(12, 3, 8, 8)
    assert torch.equal(separate(x), together(x))
    nodes = to_graph(separate, (3, 8, 8))[0]
    assert "sign" not in [n["op"] for n in nodes]
    assert [n["bin_in"] for n in nodes if n["op"] in ("bconv", "blinear")] == [True, True, True]
    paths = [tmp_path / "separate.rbnn", tmp_path / "together.rbnn"]
    for path, model in zip(paths, (separate, together)):
        verify = export_model(model, path, input_size=(3, 8, 8))["verify"]
        assert verify["ok"] and verify["packed"]["traced"] and verify["model"]["traced"]
    got = assert_computes_model(paths[0], separate, x)
    assert torch.equal(got, PackedModel.load(paths[1])(x))
    # the summary counts them as the file computes them: 1W1A
    def rows(model: nn.Module) -> list[tuple]:
        return [(r["precision"], r["input_precision"], r["binary_ops"]) for r in layer_summary(model, (3, 8, 8))
                if r["precision"] == 1 or r["name"] == "total"]

    assert rows(separate) == rows(together) and rows(separate)[-1][2] > 0


def test_a_sign_another_node_reads_stays_as_it_was(tmp_path):
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.sign = reste.get_estimator("ste")
            self.conv = reste.BinaryConv2d(8, 8, 3, padding=1, bias=False, input_estimator=None)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 4))

        def forward(self, x):
            s = self.sign(self.bn(self.stem(x)))
            return self.head(self.conv(s) + s)  # the signs read twice: by the conv and by the add

    model = Residual().eval()
    nodes = to_graph(model, (3, 8, 8))[0]
    assert [n["op"] for n in nodes].count("sign") == 1
    assert [n["bin_in"] for n in nodes if n["op"] == "bconv"] == [False]  # (the file's signs are the model's)
    path = tmp_path / "residual.rbnn"
    assert export_model(model, path, input_size=(3, 8, 8))["verify"]["ok"]
    assert_computes_model(path, model, torch.randn(6, 3, 8, 8))


def test_the_summary_counts_a_sign_read_elsewhere_too_as_the_file_computes_it():
    """A sign module's output read by a binary layer and by another node (a residual add, or a second binary layer)
    stays a float conv on the signs in the file (to_graph keeps the sign); the summary counted each such layer as
    1W1A (review diff34)."""
    class Shared(nn.Module):
        def __init__(self, second_binary: bool) -> None:
            super().__init__()
            self.second_binary = second_binary
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.sign = reste.get_estimator("ste")
            self.a = reste.BinaryConv2d(8, 8, 3, padding=1, bias=False, input_estimator=None)
            self.b = reste.BinaryConv2d(8, 8, 1, bias=False, input_estimator=None)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 4))

        def forward(self, x):
            s = self.sign(self.stem(x))
            return self.head(self.a(s) + (self.b(s) if self.second_binary else s))

    for second_binary in (False, True):
        model = Shared(second_binary).eval()
        exported = [n["bin_in"] for n in to_graph(model, (3, 8, 8))[0] if n["op"] == "bconv"]
        rows = {r["name"]: r for r in layer_summary(model, (3, 8, 8))}
        summarised = [rows[n]["input_precision"] == 1 for n in ("a", "b") if rows[n]["macs"]]
        assert summarised == exported == [False] * (1 + second_binary)
        assert rows["total"]["binary_ops"] == 0
