"""The export's op table (reste.export.ir), the runtime's imports, the C sources as package data,
and `reste predict` on raw images (image files, uint8 arrays) with the header's preprocessing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import reste
from reste import models
from reste.errors import UsageError
from reste.export import PackedModel, export_model, ir
from reste.export import format as fmt

pytestmark = pytest.mark.usefixtures("one_thread_module")

# what the inference side may load of reste: the table, the file format, the kernels and their builder
RUNTIME_MODULES = {"reste", "reste.errors", "reste.native", "reste.export", "reste.export.ir",
                   "reste.export.format", "reste.export.kernels", "reste.export.runtime"}


def _modules_after(statement: str) -> dict:
    code = (f"import sys, json; {statement}; "
            "print(json.dumps({'fx': 'torch.fx' in sys.modules, "
            "'reste': sorted(m for m in sys.modules if m.startswith('reste'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_runtime_loads_neither_torch_fx_nor_the_training_side():
    got = _modules_after("import reste.export.runtime")
    assert set(got["reste"]) <= RUNTIME_MODULES, got["reste"]
    for training in ("reste.estimators", "reste.layers", "reste.engine", "reste.models", "reste.export.graph"):
        assert training not in got["reste"]
    # torch 2.x loads torch.fx itself on `import torch`; the runtime must add nothing to that
    assert got["fx"] == _modules_after("import torch, numpy")["fx"]


def test_lazy_package_names_still_resolve():
    from reste.export import BACKENDS, compare, export_checkpoint, pack_bits  # noqa: F401

    assert reste.ReSTE is reste.estimators.ReSTE and "PackedModel" in dir(reste.export)
    with pytest.raises(AttributeError):
        reste.export.no_such_name  # noqa: B018
    with pytest.raises(AttributeError):
        reste.no_such_name  # noqa: B018


# ------------------------------------------------------------------ the op table


def test_every_exported_node_has_exactly_its_ops_keys(tmp_path):
    model = models.create("resnet20_1w1a").eval()
    export_model(model, tmp_path / "r.rbnn", input_size=(3, 32, 32), verify=False)
    header, _ = fmt.read(tmp_path / "r.rbnn")
    seen = set()
    for node in header["nodes"]:
        ir.check_node(node)
        op = ir.get_op(node["op"])
        assert not set(op.build_only) & set(node)  # builder-only keys are not written
        for key in op.tensors:
            assert node[key] is None or isinstance(node[key], int)
        seen.add(node["op"])
    assert {"input", "conv", "bconv", "affine", "add", "linear"} <= seen


def test_check_node_names_what_is_wrong():
    ir.check_node({"op": "relu", "in": [0]})
    with pytest.raises(ValueError, match=r"missing \['dim'\]"):
        ir.check_node({"op": "cat", "in": [0, 1]})
    with pytest.raises(ValueError, match=r"unexpected \['slope'\]"):
        ir.check_node({"op": "relu", "in": [0], "slope": 0.1})
    with pytest.raises(ValueError, match="2 inputs, expected 1"):
        ir.check_node({"op": "relu", "in": [0, 1]})
    assert ir.takes_sign({"op": "bconv", "bin_in": True}) and not ir.takes_sign({"op": "bconv", "bin_in": False})


def test_an_op_from_a_newer_reste_is_refused_in_one_line(tmp_path):
    writer = fmt.Writer()
    header = {"format": "reste-packed", "meta": {}, "output": 1,
              "nodes": [{"op": "input", "in": []}, {"op": "gelu", "in": [0]}]}
    writer.write(tmp_path / "new.rbnn", header)
    with pytest.raises(UsageError, match="unknown op 'gelu'.*newer reste"):
        PackedModel.load(tmp_path / "new.rbnn")


def test_call_and_forward_return_the_same_type(tmp_path):
    model = nn.Sequential(reste.BinaryConv2d(3, 4, 3, padding=1), nn.Flatten()).eval()
    export_model(model, tmp_path / "m.rbnn", input_size=(3, 5, 5), verify=False)
    packed = PackedModel.load(tmp_path / "m.rbnn")
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32)
    called, forward = packed(x), packed.forward(x)
    assert type(called) is type(forward) is torch.Tensor and called.dtype == torch.float32
    torch.testing.assert_close(called, forward, rtol=0, atol=0)


# ------------------------------------------------------------------ C sources as package data


def test_c_sources_are_package_files_and_shipped():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from reste import fused
    from reste.export import kernels as K

    root = Path(reste.__file__).parent
    for lib_source, path in ((K._C_SOURCE, "export/csrc/packed.c"), (K._CPU_SOURCE, "export/csrc/cpu_features.c"),
                             (fused._SOURCE, "csrc/fused.c")):
        assert lib_source.read_text(encoding="utf-8") == (root / path).read_text(encoding="utf-8")
    for py in root.rglob("*.py"):  # no C left in Python strings
        assert "#include" not in py.read_text(encoding="utf-8"), py
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["reste"]
    shipped = {p for g in globs for p in root.glob(g)}
    assert shipped == set(root.rglob("*.c")) and len(shipped) == 3


def test_a_changed_c_file_gets_a_fresh_build_and_a_missing_one_falls_back(tmp_path, monkeypatch):
    import ctypes

    from reste.native import NativeLibrary

    if NativeLibrary("probe", "int f(void) { return 1; }", {}).get() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("RESTE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "answer.c"
    signature = {"answer": ([], ctypes.c_int)}
    source.write_text("int answer(void) { return 41; }\n")
    assert NativeLibrary("answer", source, signature).get().answer() == 41
    source.write_text("int answer(void) { return 42; }\n")
    assert NativeLibrary("answer", source, signature).get().answer() == 42
    assert len(list((tmp_path / "cache").glob("answer_*.so"))) == 2  # the cache key follows the source
    missing = NativeLibrary("gone", tmp_path / "gone.c", {})
    assert missing.get() is None and "gone.c" in missing.error()
