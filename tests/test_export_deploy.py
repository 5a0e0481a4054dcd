"""review deploy: what a deployer of an exported model meets (torch.cat along the batch, predict on a model
that is no classifier, batch sizes, raw pixels out of range, meta arrays, interrupted ONNX writes, ...)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import reste
from reste.datasets import DATASETS
from reste.errors import UsageError
from reste.export import PackedModel, export_model
from reste.layers import BinaryConv2d

from cli_checks import one_line_error as _one_line_error
from export_checks import assert_computes_model, break_untraced_runs

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
    assert_computes_model(tmp_path / "c.rbnn", model, torch.randn(3, 3, 8, 8))


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


def _run(capsys, *argv):
    from reste.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A fully convolutional binarized model on 1x8x8 digits-like images: its output is (N, 3, 8, 8)."""
    from reste.export.ir import Preprocessing

    torch.manual_seed(0)
    seg = reste.binarize(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                                       nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1))).eval()
    path = tmp_path_factory.mktemp("seg") / "seg.rbnn"
    export_model(seg, path, input_size=(1, 8, 8), meta={**Preprocessing((1, 8, 8), (0.3,), (0.37,), 16.0).to_meta(),
                                                        "dataset": "digits"})
    return path


def test_predict_refuses_a_model_that_is_no_classifier(capsys, tmp_path, segmenter):
    """(review deploy #2) reste predict on a (N, 3, 8, 8) output: a TypeError, a broadcast error, or an (N, 8, 8)
    array written as "predictions" with status 0."""
    raw = np.random.default_rng(0).integers(0, 17, (12, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "y.npy", np.zeros(12, np.int64))
    for extra in (["-o", str(tmp_path / "s.csv")], ["-o", str(tmp_path / "s.npy")],
                  ["--labels", str(tmp_path / "y.npy"), "-o", str(tmp_path / "l.npy")]):
        line = _one_line_error(capsys, "predict", str(segmenter), str(tmp_path / "raw.npy"), *extra)
        assert "output is (N, 3, 8, 8), not (N, classes)" in line and "take classifiers" in line, line
    assert not any((tmp_path / n).exists() for n in ("s.csv", "s.npy", "l.npy", "raw.pred.npy"))
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "one.png")
    assert "not (N, classes)" in _one_line_error(capsys, "predict", str(segmenter), str(tmp_path / "one.png"))
    assert "not (N, classes)" in _one_line_error(capsys, "predict", str(segmenter), "--dataset", "digits")
    model = PackedModel.load(segmenter)
    assert tuple(model(raw).shape) == (12, 3, 8, 8)  # the model itself runs
    with pytest.raises(UsageError, match="not \\(N, classes\\)"):
        model.predict(raw)


def test_a_file_whose_output_is_an_inner_node_is_no_classifier(capsys, tmp_path):
    """(review deploy #2) a header whose output names an inner node (a feature map): no "predictions" of it."""
    from test_export_crafted import _crafted

    torch.manual_seed(0)
    export_model(_CatBatch(1).eval(), tmp_path / "c.rbnn", input_size=(3, 8, 8), verify=False)
    path = _crafted(tmp_path / "c.rbnn", tmp_path, lambda h: h.__setitem__("output", 0))
    x = torch.randn(4, 3, 8, 8)
    np.save(tmp_path / "x.npy", x.numpy())
    assert "output is (N, 3, 8, 8)" in _one_line_error(capsys, "predict", str(path), str(tmp_path / "x.npy"),
                                                         "-o", str(tmp_path / "o.npy"))
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("size", [-1, 0, 2.5, True, "4", None])
def test_predict_refuses_a_batch_size_that_is_no_positive_integer(tmp_path, size):
    """(review deploy #3) batch_size=-1 returned no predictions for 6 images; 0 and 2.5 raised raw errors."""
    torch.manual_seed(0)
    export_model(_CatBatch(1).eval(), tmp_path / "c.rbnn", input_size=(3, 8, 8), verify=False)
    model, x = PackedModel.load(tmp_path / "c.rbnn"), torch.randn(6, 3, 8, 8)
    with pytest.raises(UsageError, match=r"batch_size must be a positive integer .*got "):
        model.predict(x, batch_size=size)
    want = model(x).argmax(1).numpy()
    for good in (1, 4, np.int64(5), 256):
        np.testing.assert_array_equal(model.predict(x, batch_size=good), want)


def _interrupted(*_args, **_kwargs):
    raise KeyboardInterrupt  # a Ctrl-C, a preemption: the process stops where it is


def test_an_interrupted_onnx_export_leaves_the_earlier_file_whole(tmp_path, monkeypatch):
    """(review deploy #6) the ONNX file was written in place: a SIGTERM mid-write left a truncated .onnx (an ONNX
    runtime refuses it) under the final name, in place of the good one an earlier export wrote."""
    pytest.importorskip("onnxruntime")
    from reste.export import export_onnx, onnx_export, run_onnx

    torch.manual_seed(0)
    model = _CatBatch(1).eval()
    path = tmp_path / "m.onnx"
    info = export_onnx(model, path, (3, 8, 8))
    good = path.read_bytes()
    assert info["path"] == str(path) and info["bytes"] == len(good) and info["ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    real = onnx_export._export

    def half_then_stopped(deploy, x, where, dynamo):
        assert where != path  # never the final name
        real(deploy, x, where, dynamo)
        with open(where, "r+b") as f:
            f.truncate(where.stat().st_size // 2)
        raise KeyboardInterrupt

    for stop in ("write", "check"):
        monkeypatch.setattr(onnx_export, "_export", half_then_stopped if stop == "write" else real)
        monkeypatch.setattr(onnx_export, "check_onnx", _interrupted if stop == "check" else onnx_export.check_onnx)
        with pytest.raises(KeyboardInterrupt):
            export_onnx(model, path, (3, 8, 8))
        assert path.read_bytes() == good, stop
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"], stop  # no temporary file left
    monkeypatch.undo()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(path, x.numpy()), model(x).numpy(), atol=1e-4)


def test_an_interrupted_packed_check_leaves_no_unchecked_file_under_its_name(tmp_path, monkeypatch):
    """(review deploy #6) a stop during the 16-image check left the new, never checked, file in place."""
    from reste.export import exporter

    torch.manual_seed(0)
    path = tmp_path / "m.rbnn"
    export_model(_CatBatch(1).eval(), path, input_size=(3, 8, 8))
    good = path.read_bytes()
    monkeypatch.setattr(exporter, "verify_export", _interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(_CatBatch(1).eval(), path, input_size=(3, 8, 8))  # other weights
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["m.rbnn"]
    monkeypatch.undo()
    (tmp_path / "new").mkdir()
    export_model(_CatBatch(1).eval(), tmp_path / "new" / "m.rbnn", input_size=(3, 8, 8))
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["m.rbnn"]


def _photo(path, h=375, w=500):
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    img = ((np.sin(xx / 7.0) + np.cos(yy / 11.0)) * 60 + 128).astype(np.uint8)
    Image.fromarray(np.stack([img, img[::-1], img[:, ::-1]], -1)).save(path)
    return path


@pytest.mark.parametrize("h, w", [(375, 500), (500, 375), (300, 300)])
def test_an_imagenet_export_prepares_image_files_as_its_validation_images(tmp_path, h, w):
    """(review deploy #9) an image file went to the 224 crop with its shorter side scaled to 224, where ImageNet's
    evaluation resizes it to 256 first (1.14x the scale the model was evaluated at)."""
    T = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    from reste.datasets import get_spec
    from reste.export.from_checkpoint import _preprocessing
    from reste.export.inputs import model_inputs
    from reste.export.ir import Preprocessing

    s = get_spec("imagenet")
    meta = _preprocessing("imagenet", (3, 224, 224))
    prep = Preprocessing.from_meta(meta)
    assert meta["resize"] == 256 and prep.resize == 256 and "resize" not in _preprocessing("cifar10", None)
    photo = _photo(tmp_path / "photo.png", h, w)
    val = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(s.mean, s.std)])  # data/sets.py
    want = val(Image.open(photo).convert("RGB")).numpy()
    got = model_inputs(None, photo, (3, 224, 224), prep)[0]
    assert got.shape == want.shape and abs(got - want).max() < 1e-5


def test_a_recorded_resize_goes_through_export_and_predict(tmp_path, capsys):
    """(review deploy #9) the header's resize, written by export_model and used by reste predict photo.png."""
    T = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    from reste.export import ir

    torch.manual_seed(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = reste.binarize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(),
                                         nn.Linear(8 * 16 * 16, 5))).eval()
    path = tmp_path / "r.rbnn"
    export_model(model, path, input_size=(3, 16, 16),
                 meta=ir.Preprocessing((3, 16, 16), mean, std, 255.0, 20).to_meta())
    packed = PackedModel.load(path)
    assert packed.preprocessing.resize == 20
    photo = _photo(tmp_path / "p.png", 60, 90)
    x = T.Compose([T.Resize(20), T.CenterCrop(16), T.ToTensor(), T.Normalize(mean, std)])(
        Image.open(photo).convert("RGB"))[None]
    code, out, err = _run(capsys, "predict", str(path), str(photo), "-o", str(tmp_path / "p.json"))
    assert code == 0, err
    # (review deploy1, suggestion 3) the line names the kernels' variant too, as benchmarks/inference.py does
    assert f"s, {packed.kernel_name} kernels)" in err + out, err + out
    assert packed.kernel_name.startswith(packed.backend) and ("/" in packed.kernel_name) == (packed.backend == "c")
    assert [r["class"] for r in json.loads((tmp_path / "p.json").read_text())] == packed.predict(x).tolist()
    from reste.export import predict_images  # from Python, given the file's path (review types1, suggestion 2)

    assert predict_images(str(path), [photo])["classes"].tolist() == packed.predict(x).tolist()
    for bad in (12, 16.5, True):  # a crop of 16x16 needs a shorter side of 16 at least
        meta = {**ir.Preprocessing((3, 16, 16), mean, std, 255.0).to_meta(), "resize": bad}
        with pytest.raises(UsageError, match="a resize, if given, an integer at least"):
            export_model(model, tmp_path / "bad.rbnn", input_size=(3, 16, 16), meta=meta)


def test_meta_takes_numpy_arrays_and_tensors(tmp_path):
    """(review deploy #7) a mean/std given as a NumPy array or a tensor: "can only convert an array of size 1 to a
    Python scalar" (a traceback), though _checked_meta had accepted them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), BinaryConv2d(8, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    for kind in (np.array, torch.tensor):
        path = tmp_path / f"{kind.__name__}.rbnn"
        export_model(model, path, input_size=(3, 6, 6), verify=False,
                     meta={"input_size": np.array([3, 6, 6]), "mean": kind(mean), "std": kind(std),
                           "pixel_scale": np.float32(255.0), "epoch": np.int64(3), "one": kind([7])})
        packed = PackedModel.load(path)
        prep = packed.preprocessing
        assert prep is not None and prep.input_size == (3, 6, 6) and prep.pixel_scale == 255.0
        np.testing.assert_allclose(prep.mean, mean, rtol=1e-6)
        np.testing.assert_allclose(prep.std, std, rtol=1e-6)
        assert packed.meta["epoch"] == 3 and packed.meta["one"] == [7]


def test_raw_pixels_above_the_recorded_white_are_refused(tmp_path, capsys):
    """(review deploy #4) 8-bit pixels (0..255) given to a model whose raw pixels run 0..16 (digits) were normalised
    far outside its data without a word (97.78% -> 72.50% accuracy)."""
    from reste.export.ir import Preprocessing

    torch.manual_seed(0)
    model = nn.Sequential(BinaryConv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(512, 10)).eval()
    path = tmp_path / "d.rbnn"
    export_model(model, path, input_size=(1, 8, 8), meta=Preprocessing((1, 8, 8), (0.3,), (0.37,), 16.0).to_meta())
    raw = np.random.default_rng(0).integers(0, 17, (20, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "raw255.npy", (raw.astype(np.uint16) * 255 // 16).astype(np.uint8))
    assert _run(capsys, "predict", str(path), str(tmp_path / "raw.npy"))[0] == 0  # 0..16: taken
    line = _one_line_error(capsys, "predict", str(path), str(tmp_path / "raw255.npy"), "-o", str(tmp_path / "b.npy"))
    assert "pixel values up to 255, but the model's raw pixels run 0..16" in line and "rescaling" in line, line
    assert not (tmp_path / "b.npy").exists()
    packed = PackedModel.load(path)
    big = np.concatenate([raw, raw[:1] + 1])  # one pixel of 17 in the last image
    for call in (packed, packed.forward, packed.predict, lambda x: packed.predict(x, batch_size=4)):
        with pytest.raises(UsageError, match="pixel values up to 17"):
            call(big)
        with pytest.raises(UsageError, match="pixel values up to 17"):
            call(torch.from_numpy(big))
    np.testing.assert_array_equal(packed.predict(raw, batch_size=4), packed(raw).argmax(1).numpy())


def test_export_prints_the_packed_report_before_the_onnx_step(tmp_path, capsys, monkeypatch, digits_checkpoint):
    """(review deploy #8) reste export printed nothing until the packed file, its check, the ONNX file and its check
    were all done (a minute of silence for ImageNet models), and an ONNX failure left the packed file's report
    unshown."""
    pytest.importorskip("onnx")
    from reste.export import from_checkpoint

    seen = {}
    real = from_checkpoint.export_onnx

    def onnx_step(*args, **kwargs):
        seen["before"] = capsys.readouterr().out  # what the user had read when the ONNX step began
        return real(*args, **kwargs)

    monkeypatch.setattr(from_checkpoint, "export_onnx", onnx_step)
    out_path = tmp_path / "d.rbnn"
    code, out, err = _run(capsys, "export", str(digits_checkpoint), str(out_path), "--onnx")
    assert code == 0, err
    assert seen["before"].startswith(f"wrote {out_path}\n") and "compression" in seen["before"]
    assert seen["before"].rstrip().endswith(f"writing {tmp_path / 'd.onnx'} (ONNX) ...")
    assert out.startswith(f"wrote {tmp_path / 'd.onnx'} (") and "compression" not in out

    def failed(*_args, **_kwargs):
        raise UsageError("ONNX export failed (torchscript: no; dynamo: no)")

    monkeypatch.setattr(from_checkpoint, "export_onnx", failed)
    code, out, err = _run(capsys, "export", str(digits_checkpoint), str(out_path), "--onnx")
    assert code == 2 and "compression" in out and "ONNX export failed" in err


class _MixesTheBatch(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c, self.bn, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), BinaryConv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 64 if how in ("flatten", "x.flatten()", "nn.Flatten(0)") else 16, 10)
        self.flat = nn.Flatten(0)

    def forward(self, x):
        y = self.b(self.bn(self.c(x)))
        if self.how == "mean((0, 2, 3))":
            return self.fc(y.mean((0, 2, 3)))
        if self.how == "mean(-4)":
            return self.fc(y.mean((2, 3)).unsqueeze(2).unsqueeze(3).mean(-4))
        if self.how == "flatten":
            return self.fc(torch.flatten(y))
        if self.how == "x.flatten()":
            return self.fc(y.flatten())
        return self.fc(self.flat(y))


@pytest.mark.parametrize("how", ["mean((0, 2, 3))", "mean(-4)", "flatten", "x.flatten()", "nn.Flatten(0)"])
def test_a_mean_or_flatten_over_the_batch_is_refused_in_one_line(tmp_path, how):
    """(review deploy #1, the same for mean and flatten) a mean or a flatten reaching the batch: a traceback from
    the check (IndexError, a matrix size error), or a file giving one row for N images."""
    what = "mean over" if how.startswith("mean") else "flatten of"
    with pytest.raises(UsageError, match=f"cannot export a {what} the batch dimension") as info:
        export_model(_MixesTheBatch(how).eval(), tmp_path / "m.rbnn", input_size=(3, 8, 8))
    assert "\n" not in str(info.value) and not (tmp_path / "m.rbnn").exists()


def test_a_file_with_a_mean_or_flatten_over_the_batch_is_refused(tmp_path):
    from test_export_crafted import _crafted

    torch.manual_seed(0)
    export_model(_CatBatch(1).eval(), tmp_path / "c.rbnn", input_size=(3, 8, 8), verify=False)

    def edit(op, key, value):
        def change(h):
            next(n for n in h["nodes"] if n["op"] == op)[key] = value
        return change

    for op, key, value in (("mean", "dims", [0, 2, 3]), ("mean", "dims", []), ("mean", "dims", [2, 3.0])):
        with pytest.raises(UsageError, match="corrupted packed model.*dims must be dimensions after the batch"):
            PackedModel.load(_crafted(tmp_path / "c.rbnn", tmp_path, edit(op, key, value)))
    model = PackedModel.load(_crafted(tmp_path / "c.rbnn", tmp_path, edit("mean", "dims", [-4, 2])))
    with pytest.raises(UsageError, match="mean along dimension -4 of 4-D values reaches the batch"):
        model(torch.randn(2, 3, 8, 8))

    def flatten_all(h):
        h["nodes"].append({"op": "flatten", "start": 0, "end": -1, "in": [h["output"]]})
        h["output"] = len(h["nodes"]) - 1

    with pytest.raises(UsageError, match="corrupted packed model.*the start one after the batch, got 0, -1"):
        PackedModel.load(_crafted(tmp_path / "c.rbnn", tmp_path, flatten_all))


def test_a_header_whose_class_names_are_no_list_is_refused_at_load(tmp_path, capsys):
    """(review deploy, suggestions) meta["classes"] = 5 gave `reste: error: TypeError: 'int' object is not
    iterable` (status 1) on --dataset."""
    from test_export_crafted import _crafted

    torch.manual_seed(0)
    names = [str(i) for i in range(10)]
    export_model(nn.Sequential(BinaryConv2d(1, 8, 3, padding=1), nn.Flatten(), nn.Linear(512, 10)).eval(),
                 tmp_path / "d.rbnn", input_size=(1, 8, 8), meta={"dataset": "digits", "classes": names})
    path = _crafted(tmp_path / "d.rbnn", tmp_path, lambda h: h["meta"].__setitem__("classes", 5))
    line = _one_line_error(capsys, "predict", str(path), "--dataset", "digits")
    assert "corrupted packed model" in line and "meta classes is not a list of names: 5" in line, line
    assert PackedModel.load(tmp_path / "d.rbnn").meta["classes"][3] == "3"


def test_the_channels_last_hint_for_one_image_is_its_own_transpose(tmp_path):
    """(review deploy, suggestions) one (H, W, C) image was told array.transpose(0, 3, 1, 2), a batch's transpose."""
    from reste.export.ir import Preprocessing

    torch.manual_seed(0)
    path = tmp_path / "c.rbnn"
    export_model(_CatBatch(1).eval(), path, input_size=(3, 8, 8), verify=False,
                 meta=Preprocessing((3, 8, 8), (0.5,) * 3, (0.25,) * 3, 255.0).to_meta())
    model = PackedModel.load(path)
    with pytest.raises(UsageError, match=r"it looks channels-last \(H, W, C\): transpose it to \(C, H, W\), "
                                         r"array.transpose\(2, 0, 1\)$"):
        model(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UsageError, match=r"array.transpose\(0, 3, 1, 2\) for \(N, H, W, C\)"):
        model(np.zeros((2, 8, 8, 3), np.uint8))
    assert model(np.zeros((8, 8, 3), np.uint8).transpose(2, 0, 1)).shape == (1, 10)


def test_predict_on_an_onnx_file_says_what_runs_it(tmp_path, capsys):
    """(review deploy, suggestions) `reste predict model.onnx` said "create one with reste export"."""
    pytest.importorskip("onnx")
    from reste.export import export_onnx

    torch.manual_seed(0)
    export_onnx(_CatBatch(1).eval(), tmp_path / "m.onnx", (3, 8, 8), check=False)
    line = _one_line_error(capsys, "predict", str(tmp_path / "m.onnx"))
    assert "is an ONNX file, which reste does not run: run it with onnxruntime" in line, line
    (tmp_path / "text.rbnn").write_text("no model")
    assert "is not a reste packed model" in _one_line_error(capsys, "predict", str(tmp_path / "text.rbnn"))


def test_the_stale_onnx_note_is_printed_with_onnx_written_elsewhere(tmp_path, capsys, digits_checkpoint):
    """(review deploy, suggestions) `reste export ... --onnx other.onnx` left OUT.onnx of an earlier export beside the
    new packed file without the note a plain export prints."""
    pytest.importorskip("onnx")
    out = tmp_path / "d.rbnn"
    (tmp_path / "d.onnx").write_bytes(b"an earlier export's")
    code, printed, err = _run(capsys, "export", str(digits_checkpoint), str(out), "--onnx", str(tmp_path / "o.onnx"))
    assert code == 0, err
    assert (f"note: {tmp_path / 'd.onnx'} beside it is from an earlier export, not this one (--onnx wrote "
            f"{tmp_path / 'o.onnx'} instead)") in printed
    code, printed, err = _run(capsys, "export", str(digits_checkpoint), str(out), "--onnx")
    assert code == 0 and "note:" not in printed, err


def test_export_says_which_checkpoint_it_exported(tmp_path, capsys, digits_checkpoint):
    """(review deploy, suggestions) `reste export RUN_DIR` took last.pt without a word (after a preemption, a model
    from inside an epoch), and the header's source was '' for `runs/live/` (a trailing slash)."""
    from reste.checkpoint import load_checkpoint, save_checkpoint

    code, out, err = _run(capsys, "export", str(digits_checkpoint), str(tmp_path / "a.rbnn"))
    assert code == 0 and f"\n  from {digits_checkpoint}, epoch 1\n" in out, err
    assert PackedModel.load(tmp_path / "a.rbnn").meta["source"] == "d.pt"
    run = tmp_path / "live"
    run.mkdir()
    save_checkpoint({**load_checkpoint(digits_checkpoint), "step": 50}, run / "last.pt")
    code, out, err = _run(capsys, "export", str(run) + "/", str(tmp_path / "b.rbnn"))
    assert code == 0, err
    assert f"  from {run / 'last.pt'}, step 50 of epoch 2 (taken inside an epoch: no test accuracy" in out
    assert PackedModel.load(tmp_path / "b.rbnn").meta["source"] == "live/last.pt"
    assert PackedModel.load(tmp_path / "b.rbnn").meta["test_acc"] is None  # (not epoch 1's: review mut5 #13)


@pytest.mark.parametrize("command", [False, True])
@pytest.mark.parametrize("during", ["check", "onnx"])
def test_a_sigterm_during_export_says_what_is_left_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch,
                                                                                digits_checkpoint, during, command,
                                                                                request):
    """(review deploy #6 and suggestions) a SIGTERM ended reste export with status 143 and no line at all, and left
    its temporary file. ``command``: as the reste command runs it, whose own stop handler gave way to none of the
    export's, which says more (review chaos6 #1)."""
    import os
    import signal

    pytest.importorskip("onnx")
    from reste import cli
    from reste.export import exporter, from_checkpoint

    if command:
        request.addfinalizer(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
        signal.signal(signal.SIGTERM, cli._raise_stopped)

    out, onnx = tmp_path / "d.rbnn", tmp_path / "d.onnx"
    assert _run(capsys, "export", str(digits_checkpoint), str(out), "--onnx")[0] == 0
    before = {p.name: p.read_bytes() for p in (out, onnx)}

    def terminated(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the export")

    monkeypatch.setattr(exporter if during == "check" else from_checkpoint,
                        "verify_export" if during == "check" else "export_onnx", terminated)
    code, printed, err = _run(capsys, "export", str(digits_checkpoint), str(out), "--onnx")
    assert code == 128 + signal.SIGTERM
    if during == "check":
        assert err == f"reste: export stopped by SIGTERM; {out} and {onnx} are as before (nothing half-written " \
                      "is left)\n"
        assert {p.name: p.read_bytes() for p in (out, onnx)} == before
    else:
        assert f"reste: export stopped by SIGTERM; {out} was written and checked; {onnx} is as before" in err
        assert onnx.read_bytes() == before["d.onnx"] and "compression" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx", "d.rbnn"]
    assert signal.getsignal(signal.SIGTERM) is (cli._raise_stopped if command else signal.SIG_DFL)


def test_a_ctrl_c_during_the_onnx_step_says_what_is_written(tmp_path, capsys, monkeypatch, digits_checkpoint):
    """(review ux1, suggestion 3) Ctrl-C while the ONNX file was written said "reste: interrupted" alone, where a
    stop signal says that the packed file is written and checked and the ONNX one as before."""
    pytest.importorskip("onnx")
    from reste.export import from_checkpoint

    out, onnx = tmp_path / "d.rbnn", tmp_path / "d.onnx"

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(from_checkpoint, "export_onnx", interrupted)
    code, _printed, err = _run(capsys, "export", str(digits_checkpoint), str(out), "--onnx")
    assert code == 130
    assert err == (f"reste: export stopped by Ctrl-C; {out} was written and checked; {onnx} is as before (nothing "
                   "half-written is left)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.rbnn"]


def test_an_invalid_recorded_preprocessing_is_named_as_such(tmp_path, capsys):
    """(review deploy, suggestions) a header whose preprocessing is invalid (std 0) was said to record none."""
    from test_export_crafted import _crafted

    from reste.export.ir import Preprocessing

    torch.manual_seed(0)
    export_model(_CatBatch(1).eval(), tmp_path / "c.rbnn", input_size=(3, 8, 8), verify=False,
                 meta=Preprocessing((3, 8, 8), (0.5,) * 3, (0.25,) * 3, 255.0).to_meta())
    path = _crafted(tmp_path / "c.rbnn", tmp_path, lambda h: h["meta"].__setitem__("std", [0.25, 0.0, 0.25]))
    np.save(tmp_path / "raw.npy", np.zeros((2, 3, 8, 8), np.uint8))
    line = _one_line_error(capsys, "predict", str(path), str(tmp_path / "raw.npy"))
    assert "the packed model records an invalid preprocessing (input_size [3, 8, 8], mean [0.5, 0.5, 0.5], std " \
           "[0.25, 0.0, 0.25], pixel_scale 255.0: one mean" in line, line
    with pytest.raises(UsageError, match="this packed model records an invalid preprocessing"):
        PackedModel.load(path)(np.zeros((2, 3, 8, 8), np.uint8))
    export_model(_CatBatch(1).eval(), tmp_path / "none.rbnn", input_size=(3, 8, 8), verify=False)
    assert "does not record its preprocessing" in _one_line_error(capsys, "predict", str(tmp_path / "none.rbnn"),
                                                                 str(tmp_path / "raw.npy"))


def test_a_full_disk_under_an_export_or_predictions_is_the_machines_not_a_bad_path(tmp_path, monkeypatch, capsys):
    """(review chaos #4) ENOSPC writing an export or predictions was "cannot write ...; pass a writable path", status
    2 (bad input, fails again as it is): the path is fine, the disk is full. It is said as for the other commands,
    status 1 ("free some space and run it again"); a path that cannot be written stays a usage error."""
    import errno
    import tempfile

    import numpy as np

    from reste import cli
    from reste.errors import UsageError
    from reste.export.predictions import save_predictions
    from reste.export.exporter import staged

    real = tempfile.mkstemp
    failure = {"errno": errno.ENOSPC}

    def refused(*args, **kwargs):
        raise OSError(failure["errno"], os.strerror(failure["errno"]), str(tmp_path / ".x.rbnn.abc.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(OSError) as info:
        with staged(tmp_path / "x.rbnn"):
            pass
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.rbnn")
    assert cli._unexpected(info.value, False, "export", []) == 1
    assert capsys.readouterr().err.strip() == (f"reste: error: No space left on device writing {tmp_path / 'x.rbnn'}; "
                                               "free some space and run it again")
    with pytest.raises(OSError, match="No space left"):
        save_predictions(tmp_path / "p.npy", np.zeros(3, dtype=np.int64))
    failure["errno"] = errno.EACCES
    with pytest.raises(UsageError, match=r"cannot write .*x.rbnn \(Permission denied\); pass a writable path"):
        with staged(tmp_path / "x.rbnn"):
            pass
    # (review rev16 #5) the packed file's own write (format.Writer, through atomic_write), and `reste plot --out`
    from reste.errors import cannot_write

    assert isinstance(cannot_write(OSError(errno.EACCES, "Permission denied"), tmp_path / "x", "r"), UsageError)
    monkeypatch.setattr(tempfile, "mkstemp", real)

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("reste.files.atomic_write", full)
    with pytest.raises(OSError) as info:
        export_model(_CatBatch(1).eval(), tmp_path / "m.rbnn", input_size=(3, 8, 8))
    assert info.value.errno == errno.ENOSPC and not isinstance(info.value, UsageError)
    from matplotlib.figure import Figure

    from reste.experiments import plots

    monkeypatch.setattr(plots, "atomic_write", full)  # (its own name of it, bound at its import)
    with pytest.raises(OSError) as info:
        plots._save(Figure(), tmp_path / "c.png")
    assert info.value.errno == errno.ENOSPC


@pytest.mark.parametrize("scale", [16.0, 255.0])
def test_a_data_sets_test_split_goes_through_the_normalisation_the_file_records(tmp_path, scale):
    """(review newuser2 #1) a model of your own trained on other units, which the export records (Preprocessing):
    `reste predict FILE --dataset digits` fed it the data set's normalisation (98.06% scored as 21.11%). Its images
    are now mapped to the recorded units: the same top-1 as normalising the raw pixels as the file says. (review
    mut9 #1) A file whose pixels are 8-bit (a scale of 255, not digits' 16) was fed digits' pixels over 255: 10%
    for 85.8%; they are the data set's pixels in the file's units, as its raw 8-bit pixels would be."""
    import numpy as np

    from reste import models
    from reste.data import load_datasets
    from reste.export import evaluate_packed
    from reste.export.ir import Preprocessing
    from reste.export.runtime import class_scores

    torch.manual_seed(0)
    model = models.create("digits_1w1a", 10)
    train, test, _ = load_datasets("digits", in_memory=True)
    x, y = ((train.data.double() / 16.0 - 0.9) / 0.05).float(), train.labels  # its own units
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(60):
        batch = torch.arange(step * 64, step * 64 + 64) % len(y)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    own = Preprocessing((1, 8, 8), (0.9,), (0.05,), scale)
    export_model(model.eval(), tmp_path / "own.rbnn", input_size=(1, 8, 8), meta=own.to_meta())
    packed = PackedModel.load(tmp_path / "own.rbnn")
    from reste.export.inputs import normalise

    raw = np.rint(test.data.numpy() * (scale / 16.0))  # the test digits as the file's raw pixels
    own_units = torch.from_numpy(normalise(raw, own, scale))  # what `reste predict raw.npy` computes
    wanted = class_scores(packed.forward(own_units)).argmax(1)
    top1 = 100.0 * int((wanted == test.labels).sum()) / len(test)
    assert evaluate_packed(packed, "digits")["top1"] == top1  # (exactly: review diff14 #1, float64 made -0s of 0s)
    # (review types1 #3) backend= was ignored for a PackedModel given: the result named its loaded kernels
    by_numpy = evaluate_packed(packed, "digits", backend="numpy")
    assert (by_numpy["backend"], by_numpy["top1"]) == ("numpy", top1) and packed.backend != "numpy"
    from reste.export.evaluation import _to_recorded
    from reste.datasets import get_spec

    remap = _to_recorded(packed.meta, get_spec("digits"))
    assert torch.equal(remap(test.images), own_units)
    part = {k: v for k, v in own.to_meta().items() if k != "pixel_scale"}  # (review diff14 #3) a part of one
    with pytest.raises(UsageError, match="records only part of its preprocessing \\(input_size, mean, std of "):
        _to_recorded(part, get_spec("digits"))
    theirs = class_scores(packed.forward(test.images)).argmax(1)  # (the data set's units: what --dataset fed it)
    assert (theirs != wanted).sum() > len(test) // 10
    assert top1 > 50  # (a model that learnt: the units matter to it)
    # (review mut9 #2) another resize than the data set's test images had is refused whatever the normalisation
    for mean, std, pixel_scale in (((0.9,), (0.05,), scale), (get_spec("digits").mean, get_spec("digits").std, 16.0)):
        resized = Preprocessing((1, 8, 8), mean, std, pixel_scale, resize=12).to_meta()
        with pytest.raises(UsageError, match=r"records its own resize \(12\), not digits's test images'"):
            _to_recorded(resized, get_spec("digits"))


def test_a_signal_models_file_names_its_input_shape_for_raw_uint8(tmp_path, capsys):
    """(review newuser2 #7) it was told to export again with a Preprocessing, which a (C, L) model cannot record, and
    to pass (N, C, H, W) images."""
    model = reste.binarize(nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8),
                                         nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.Flatten(),
                                         nn.Linear(512, 4)), "ste").eval()
    export_model(model, tmp_path / "sig.rbnn", input_size=(1, 64))
    np.save(tmp_path / "u8.npy", np.zeros((3, 1, 64), np.uint8))
    line = _one_line_error(capsys, "predict", str(tmp_path / "sig.rbnn"), str(tmp_path / "u8.npy"))
    assert line.endswith("takes inputs of shape (N, 1, 64), not images: it cannot take raw uint8 images; pass them "
                         "preprocessed, as float32 in a .npy file")


def test_a_resume_leaves_a_live_exports_staging_file_alone(tmp_path):
    """(review chaos5 #6) A run's start (a resume) removes the temporary files that killed writers left in its folder;
    it also removed the staging file of an export writing into the run's folder at that moment, and the export then
    failed, told to pass a writable path. The export locks its staging file while it lives: a live one is kept, a dead
    one (a killed export's, or a killed checkpoint write's) removed as before."""
    import multiprocessing

    from reste import rundir
    from reste.cli import main
    from reste.export.exporter import staged

    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--threads", "1"]) == 0
    dead = run / ".last.pt.abcdef12.tmp"
    dead.write_bytes(b"half a checkpoint")
    with staged(run / "model.rbnn") as live:
        live.write_bytes(b"an export being written")
        other = multiprocessing.get_context("fork").Process(  # another process: an flock of this one's is its own
            target=lambda: rundir.RunDirectory.open(run, fresh=False).close())
        other.start()
        other.join(60)
        assert other.exitcode == 0
        assert live.exists() and not dead.exists()
    assert (run / "model.rbnn").read_bytes() == b"an export being written" and not live.exists()


@pytest.mark.parametrize("name", DATASETS)  # (every built-in: a new one is not left out)
def test_raw_pixels_get_the_very_inputs_training_gave_them(name):
    """(review mut5 #10) A packed model's raw pixels (`reste predict raw.npy`) are normalised in float32 in the order
    the training data is (divide, subtract, divide): every pixel value of every channel gives the bits the data
    set's Normalize gives, not one ulp off (in float64 and rounded once, 1 in 10 pixel values moved: a sign input
    within an ulp of 0 could flip, and predict disagree with --dataset on an image)."""
    from reste.data.memory import Normalize
    from reste.datasets import get_spec
    from reste.export.inputs import normalise
    from reste.export.ir import Preprocessing

    spec = get_spec(name)
    channels, top = spec.input_size[0], int(spec.scale)
    raw = np.broadcast_to(np.arange(top + 1, dtype=np.uint8)[:, None, None, None], (top + 1, channels, 1, 1)).copy()
    prep = Preprocessing(tuple(spec.input_size), tuple(spec.mean), tuple(spec.std), float(spec.scale))
    got = normalise(raw, prep, prep.pixel_scale)
    assert got.dtype == np.float32
    assert torch.equal(torch.from_numpy(got), Normalize.of(name)(torch.from_numpy(raw)))


@pytest.mark.parametrize("width, height", [(300, 199), (387, 256), (199, 300), (256, 389)])
def test_an_image_file_is_resized_and_cropped_as_torchvisions_transforms_do(tmp_path, width, height):
    """(review mut5 #11) `reste predict photo.jpg` of a model that records resize 256 (ImageNet's) takes torchvision's
    Resize(256) and CenterCrop(224), pixel for pixel: the longer side's length and an odd spare's half rounded as
    torchvision rounds them (either rounded otherwise moved nearly every pixel, and no test saw it)."""
    from PIL import Image
    from torchvision import transforms

    from reste.export.inputs import read_image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    ours = read_image(path, (3, 224, 224), resize=256)[0]
    theirs = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR,
                                                   antialias=True), transforms.CenterCrop(224),
                                 transforms.PILToTensor()])(Image.open(path).convert("RGB")).numpy()
    assert ours.shape == theirs.shape == (3, 224, 224) and np.array_equal(ours, theirs)


def test_reste_export_fails_a_file_whose_untraced_run_differs(tmp_path, capsys, monkeypatch, digits_checkpoint):
    """(review mut5, suggestion 1) The export check's untraced run, through the command: status 1 and a line that
    says what differs (the file stays, for the bug report)."""
    break_untraced_runs(monkeypatch)
    code, out, err = _run(capsys, "export", str(digits_checkpoint), str(tmp_path / "m.rbnn"))
    assert code == 1 and (tmp_path / "m.rbnn").is_file()
    assert "run untraced (its sign bits passed on) it gives other logits than traced" in err, err
    assert "packed file untraced: other logits than traced" in out


def test_eval_and_export_of_a_packed_model_name_reste_predict(tmp_path, capsys):
    """(review deploy1, suggestion 2) `reste eval model.rbnn` and `reste export model.rbnn out.rbnn` said "is not a
    checkpoint (not a PyTorch file)", with no word of what runs it; a file that only ends in .rbnn is still a
    checkpoint's business."""
    path = tmp_path / "m.rbnn"
    export_model(_CatBatch(1).eval(), path, input_size=(3, 8, 8), verify=False)
    for argv, what in ((("eval", str(path)), "evaluate"), (("export", str(path), str(tmp_path / "o.rbnn")), "export")):
        line = _one_line_error(capsys, *argv)
        assert line.endswith(f"{path} is a packed model (what `reste export` writes), not a checkpoint to {what}; run "
                             f"it with `reste predict {path} --dataset NAME`, which scores it on a data set's test "
                             "split"), line
    assert not (tmp_path / "o.rbnn").exists()
    (tmp_path / "text.rbnn").write_text("no model")
    assert "is not a checkpoint (not a PyTorch file)" in _one_line_error(capsys, "eval", str(tmp_path / "text.rbnn"))
