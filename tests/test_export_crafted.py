"""Packed-model files made to disagree with themselves, with a valid SHA-256 (it only catches accidents).

Each is refused at load with one line, before anything reaches the kernels: a negative pad wrote before a
C buffer, a negative dilation read outside it (in the NumPy backend too), a short bias was read past its
end, aliased tensors and an inflated header took gigabytes, forward references failed later as bare
KeyErrors.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import reste
from reste.errors import UsageError
from reste.export import PackedModel, export_model
from reste.export import format as fmt


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """binary conv -> BN -> binary conv -> BN -> flatten -> linear, on 1x8x8 images."""
    torch.manual_seed(0)
    model = nn.Sequential(reste.BinaryConv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16),
                          reste.BinaryConv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Flatten(),
                          nn.Linear(16 * 64, 10)).eval()
    path = tmp_path_factory.mktemp("crafted") / "tiny.rbnn"
    export_model(model, path, input_size=(1, 8, 8), verify=False)
    return path


def _split(path: Path) -> tuple[dict[str, Any], bytes]:
    blob = path.read_bytes()[:-32]
    _, _, hlen = fmt._PREFIX.unpack_from(blob)
    start = fmt._PREFIX.size
    header = json.loads(zlib.decompress(blob[start:start + hlen]))
    data = blob[start + hlen + (-(start + hlen) % 8):]
    return header, data


def _seal(path: Path, header_text: bytes, data: bytes) -> None:
    """A file in the real layout, SHA-256 and all, around any header and data."""
    packed = zlib.compress(header_text, 9)
    prefix = fmt._PREFIX.pack(fmt.MAGIC, fmt.VERSION, len(packed))
    body = prefix + packed + b"\0" * (-(len(prefix) + len(packed)) % 8) + data
    path.write_bytes(body + hashlib.sha256(body).digest())


def _crafted(model_file: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    header, data = _split(model_file)
    header = copy.deepcopy(header)
    edit(header)
    out = tmp_path / "crafted.rbnn"
    _seal(out, json.dumps(header).encode(), data)
    return out


def _bconvs(h: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in h["nodes"] if n["op"] == "bconv"]


def _set(node: dict[str, Any], key: str, value: Any) -> None:
    node[key] = value


EDITS = {
    "negative pad (wrote before a C buffer)": lambda h: _set(_bconvs(h)[0], "pad", [-1, 3, 1, 1]),
    "negative pad of the second conv (its sign bits written by the first)":
        lambda h: _set(_bconvs(h)[1], "pad", [-1, 3, 1, 1]),
    "a pad of 10,000 (its corrections took gigabytes at load)": lambda h: _set(_bconvs(h)[0], "pad", [10_000] * 4),
    "negative dilation (read outside the buffer)": lambda h: _set(_bconvs(h)[0], "dil", [-40, 1]),
    "zero stride": lambda h: _set(_bconvs(h)[0], "stride", [0, 1]),
    "float stride": lambda h: _set(_bconvs(h)[0], "stride", [1.5, 1]),
    # the layer scale's one float as the bias of 16 channels: C read past it, NumPy broadcast it
    "short bias (read past its end)": lambda h: _set(_bconvs(h)[1], "b", _bconvs(h)[1]["alpha"]),
    "alpha of another length": lambda h: h["tensors"][_bconvs(h)[0]["alpha"]].__setitem__(1, [3]),
    "a forward reference (a cycle)": lambda h: _set(h["nodes"][1], "in", [len(h["nodes"]) - 1]),
    "a negative input": lambda h: _set(h["nodes"][2], "in", [-1]),
    "a node that takes itself": lambda h: _set(h["nodes"][2], "in", [2]),  # (review mut5 #4: a KeyError when run)
    "a fractional output": lambda h: h.__setitem__("output", 2.5),
    "a second input node": lambda h: _set(h["nodes"][2], "op", "input"),
    "float weights in a binary conv": lambda h: h["tensors"][_bconvs(h)[0]["w"]].__setitem__(0, "f32"),
    "a negative tensor shape": lambda h: h["tensors"][0].__setitem__(1, [-1]),
    "a negative offset": lambda h: h["tensors"][0].__setitem__(2, -8),
    "aliased tensors (each listed copy was loaded)": lambda h: h["tensors"].extend([list(h["tensors"][0])] * 50),
    "meta that is not a mapping": lambda h: h.__setitem__("meta", [1, 2]),
    # the input's shape: a raw TypeError when read, a raw conv2d error at the first call
    "an input shape that is a number": lambda h: _set(h["nodes"][0], "shape", -1),
    "an input shape of 2 channels for a 1-channel conv": lambda h: _set(h["nodes"][0], "shape", [2, 8, 8]),
    "an input shape with a zero": lambda h: _set(h["nodes"][0], "shape", [1, 0, 8]),
    "an input shape without (H, W) for a conv": lambda h: _set(h["nodes"][0], "shape", [1, 8]),
    # (review sec3 #5) each dimension under its bound, the product 10^10 values a sample: predict allocated them
    "an input shape of 10^10 values": lambda h: _set(h["nodes"][0], "shape", [1, 100_000, 100_000]),
    "a clip whose low end is above its high end": lambda h: h["nodes"].insert(len(h["nodes"]), {
        "op": "hardtanh", "lo": 1.0, "hi": -1.0, "in": [h["output"]]}) or h.__setitem__("output", len(h["nodes"]) - 1),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_a_crafted_file_is_refused_at_load_with_one_line(model_file, tmp_path, what):
    path = _crafted(model_file, tmp_path, EDITS[what])
    for backend in ("numpy", "c"):
        with pytest.raises(UsageError) as info:
            PackedModel.load(path, backend=backend)
        message = str(info.value)
        assert "\n" not in message and ("corrupted packed model" in message), message


NEWER = {  # what a newer writer would make: "upgrade reste", not "corrupted"
    "an attribute this reste does not know": lambda h: _set(_bconvs(h)[0], "new_attr", 1),
    "another format name": lambda h: h.__setitem__("format", "reste-packed-3"),
}


@pytest.mark.parametrize("what", list(NEWER))
def test_a_file_from_a_newer_writer_says_upgrade_in_one_line(model_file, tmp_path, what):
    path = _crafted(model_file, tmp_path, NEWER[what])
    with pytest.raises(UsageError) as info:
        PackedModel.load(path, backend="numpy")
    message = str(info.value)
    assert "\n" not in message and "newer reste" in message and "corrupted" not in message, message
    assert message.startswith(f"{path}: "), message  # the file it is about, as every other load error names it


def test_a_file_of_a_newer_format_version_says_upgrade_in_one_line(model_file, tmp_path):
    """(review mut5 #5) The prefix's version above this reste's: "upgrade reste", not "corrupted"."""
    blob = bytearray(model_file.read_bytes())
    _, _, hlen = fmt._PREFIX.unpack_from(blob)
    fmt._PREFIX.pack_into(blob, 0, fmt.MAGIC, fmt.VERSION + 1, hlen)
    path = tmp_path / "newer.rbnn"
    path.write_bytes(bytes(blob))
    with pytest.raises(UsageError, match=rf"was written by a newer reste \(format {fmt.VERSION + 1}\); upgrade reste$"):
        PackedModel.load(path, backend="numpy")


def test_a_header_without_the_format_name_is_refused(model_file, tmp_path):
    path = _crafted(model_file, tmp_path, lambda h: h.pop("format"))
    with pytest.raises(UsageError, match="header has no format name, not 'reste-packed'"):
        PackedModel.load(path, backend="numpy")


def _one_value_batch_norm(h: dict[str, Any]) -> None:
    affine = next(n for n in h["nodes"] if n["op"] == "affine")
    for key in ("scale", "shift"):
        h["tensors"][affine[key]][1] = [1]


def test_a_batch_norm_of_one_value_after_a_binary_conv_stays_a_step_and_broadcasts(model_file, tmp_path):
    """An affine of one value straight after a 16-channel binary conv (no writer makes it): the kernels read one
    value a channel (lanes 1-15 would be the padding's zeros), so it stays a separate step, which broadcasts as
    torch does, on both backends."""
    path = _crafted(model_file, tmp_path, _one_value_batch_norm)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    out = []
    for backend, fuse_signs in (("numpy", True), ("c", True), ("c", False)):  # (unfused signs: the C float epilogue)
        packed = PackedModel.load(path, backend=backend, fuse_signs=fuse_signs)
        assert sum(1 for _, _, fn in packed._steps if getattr(fn, "post", None) is not None) == 1, backend
        out.append(packed(x))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_the_untouched_file_loads(model_file, tmp_path):
    path = _crafted(model_file, tmp_path, lambda h: None)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(PackedModel.load(path, backend="numpy")(x), PackedModel.load(model_file,
                                                                                     backend="numpy")(x))


def test_a_flipped_bit_is_caught_by_the_checksum_and_a_version_1_file_still_loads(model_file, tmp_path):
    """(review mut5 #1, #2) One bit of a weight flipped (a disk's or a copy's accident) loaded and gave logits of
    1e37 where the SHA-256 went unchecked, and no test saw it; a version-1 file (no checksum: what an earlier
    reste wrote) loads, as the README says, and computes as its version-2 twin."""
    header, data = _split(model_file)
    kind, _shape, offset = [t for t in header["tensors"] if t[0] == "f32"][-1]
    blob = bytearray(model_file.read_bytes())
    _, _, hlen = fmt._PREFIX.unpack_from(blob)
    at = fmt._PREFIX.size + hlen + (-(fmt._PREFIX.size + hlen) % 8) + offset + 3  # a float's sign and exponent
    blob[at] ^= 0x40
    flipped = tmp_path / "flipped.rbnn"
    flipped.write_bytes(bytes(blob))
    with pytest.raises(UsageError, match=r"is a truncated or corrupted packed model \(SHA-256 mismatch\); export"):
        PackedModel.load(flipped, backend="numpy")
    old = bytearray(model_file.read_bytes()[:-fmt.DIGEST])
    fmt._PREFIX.pack_into(old, 0, fmt.MAGIC, 1, hlen)
    (tmp_path / "v1.rbnn").write_bytes(bytes(old))
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(PackedModel.load(tmp_path / "v1.rbnn", backend="numpy")(x),
                          PackedModel.load(model_file, backend="numpy")(x))
    old[at] ^= 0x40  # (no checksum to catch it there: the bit goes through)
    (tmp_path / "v1.rbnn").write_bytes(bytes(old))
    assert not np.array_equal(PackedModel.load(tmp_path / "v1.rbnn", backend="numpy")(x),
                              PackedModel.load(model_file, backend="numpy")(x))


def test_an_inflated_header_is_refused_before_it_is_read(model_file, tmp_path):
    """300 MB of spaces compress to a few hundred KB: inflated, they would take that memory."""
    header, data = _split(model_file)
    text = json.dumps(header).encode()
    out = tmp_path / "bomb.rbnn"
    _seal(out, text[:-1] + b" " * (fmt.MAX_HEADER + 1) + text[-1:], data)
    with pytest.raises(UsageError, match="header over 64 MiB"):
        PackedModel.load(out)


def test_deeply_nested_json_is_one_line(model_file, tmp_path):
    _, data = _split(model_file)
    out = tmp_path / "deep.rbnn"
    _seal(out, b"[" * 200_000 + b"]" * 200_000, data)
    with pytest.raises(UsageError, match="corrupted packed model"):
        PackedModel.load(out)


def test_non_finite_preprocessing_is_not_taken(model_file, tmp_path):
    """NaN in the recorded normalisation made raw uint8 images all-NaN inputs, and predictions from them."""
    meta = {"input_size": [1, 8, 8], "mean": [float("nan")], "std": [1.0], "pixel_scale": 255.0}
    path = _crafted(model_file, tmp_path, lambda h: h.__setitem__("meta", meta))
    model = PackedModel.load(path)
    assert model.preprocessing is None
    with pytest.raises(UsageError):
        model(np.zeros((1, 1, 8, 8), np.uint8))


def test_the_recorded_input_size_is_bounded_at_max_input_elements_values():
    """(review mut11 #19) the header's ``meta.input_size`` is taken up to ir.MAX_INPUT_ELEMENTS values (2**25) and
    refused past it, though each side alone is in range (the crafted-file tests bound only node 0's shape)."""
    from reste.export.ir import MAX_INPUT_ELEMENTS, Preprocessing

    def meta(size):
        return {"input_size": list(size), "mean": [0.0] * size[0], "std": [1.0] * size[0], "pixel_scale": 255}

    assert Preprocessing.from_meta(meta((2, 4096, 4096))) is not None  # exactly the bound
    assert MAX_INPUT_ELEMENTS == 2 * 4096 * 4096
    assert Preprocessing.from_meta(meta((2, 4097, 4096))) is None
    assert Preprocessing.from_meta(meta((3, 100_000, 100_000))) is None  # 3e10 values


def test_minus_infinity_padding_is_a_value_a_file_may_hold(tmp_path):
    """F.pad(value=-inf) before a max pool is a real idiom; only NaN is refused."""
    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = reste.BinaryConv2d(1, 4, 3, padding=1), nn.Linear(4 * 5 * 5, 10)

        def forward(self, x):
            return self.fc(torch.nn.functional.max_pool2d(
                torch.nn.functional.pad(self.conv(x), (1, 1, 1, 1), value=float("-inf")), 2).flatten(1))

    assert export_model(Padded().eval(), tmp_path / "inf.rbnn", input_size=(1, 8, 8))["verify"]["ok"]
    path = _crafted(tmp_path / "inf.rbnn", tmp_path, lambda h: _set(
        next(n for n in h["nodes"] if n["op"] == "cpad"), "value", float("nan")))
    with pytest.raises(UsageError, match="value must be a number, got nan"):
        PackedModel.load(path)


def test_the_exporter_refuses_what_a_reader_would(tmp_path):
    """Padding past a binary conv's reach is legal and exports (1x1 with padding 1); past MAX_PAD it could be
    written but not read: refused at export, naming the layer."""
    pad_one = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), reste.BinaryConv2d(4, 4, 1, padding=1), nn.Flatten(),
                            nn.Linear(4 * 10 * 10, 10)).eval()
    assert export_model(pad_one, tmp_path / "one.rbnn", input_size=(1, 8, 8))["verify"]["ok"]
    with pytest.raises(UsageError, match=r"cannot export: node 1 \(bconv, 0\) pad .* is over 1024: the packed file "
                                         r"pads a binary conv by at most 1024 pixels; pad less, or .*export_onnx$"):
        export_model(nn.Sequential(reste.BinaryConv2d(1, 4, 3, padding=1025)), tmp_path / "p.rbnn")


def test_a_graph_the_writer_makes_but_its_reader_refuses_is_called_a_bug_at_export(monkeypatch, tmp_path):
    from reste.export import exporter, ir

    def refuse(header):
        raise UsageError("unknown op 'gelu' in the packed model; it needs a newer reste")

    monkeypatch.setattr(ir, "check_graph", refuse)
    with pytest.raises(UsageError) as info:
        exporter.export_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), tmp_path / "m.rbnn",
                              input_size=(1, 2, 2))
    message = str(info.value)
    assert "this is a bug in reste" in message and "\n" not in message, message


def test_tensors_sharing_bytes_are_refused_before_any_is_copied(model_file, tmp_path, monkeypatch):
    """A small file whose entries all point at the same bytes would take one copy each (memory without bound):
    the overlap is refused before the first copy."""
    header, data = _split(model_file)
    header = copy.deepcopy(header)
    header["tensors"] = [["f32", [len(data) // 4], 0]] * 200
    path = tmp_path / "shared.rbnn"
    _seal(path, json.dumps(header).encode(), data)
    copies = []
    real = fmt.np.frombuffer
    monkeypatch.setattr(fmt.np, "frombuffer", lambda *a, **k: copies.append(1) or real(*a, **k))
    with pytest.raises(UsageError, match="tensors overlap"):
        fmt.read(path)
    assert not copies


def test_geometry_beyond_any_real_model_is_refused_at_load(model_file, tmp_path):
    """A stride, padding, dilation, kernel or pooled size over ir.MAX_GEOMETRY would make inference allocate and
    compute without bound (a float conv's pad of 20000 asks for terabytes): refused in one line when loaded."""
    from reste.export import ir

    path = _crafted(model_file, tmp_path, lambda h: _set(_bconvs(h)[0], "stride", [ir.MAX_GEOMETRY + 1, 1]))
    with pytest.raises(UsageError, match=rf"stride must be a list of 2 integers in \[1, {ir.MAX_GEOMETRY}\]"):
        PackedModel.load(path, backend="numpy")
    with pytest.raises(ValueError, match="integers in"):
        ir._attributes("conv", {"stride": [1, 1], "pad": [20000] * 4, "dil": [1, 1], "groups": 1, "bin_in": False},
                       "node 1 (conv)")
    with pytest.raises(ValueError, match="size must be two integers in"):
        ir._attributes("adaptive_avgpool", {"size": [30000, 30000]}, "node 2 (adaptive_avgpool)")


def test_an_attribute_that_does_not_fit_its_shapes_is_one_line_when_run(model_file, tmp_path):
    """The load checks each attribute's type and range; one that only fails on the shapes it meets (a flatten of
    dimensions the tensor does not have) is a UsageError naming the node, not a raw torch error."""
    def bad_flatten(h):
        node = next(n for n in h["nodes"] if n["op"] == "flatten")
        node["start"], node["end"] = 7, 9

    model = PackedModel.load(_crafted(model_file, tmp_path, bad_flatten), backend="numpy")
    with pytest.raises(UsageError) as info:
        model(np.zeros((2, 1, 8, 8), np.float32))
    message = str(info.value)
    assert "\n" not in message and "cannot run on images of shape (1, 8, 8)" in message, message
