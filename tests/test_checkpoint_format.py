"""Checkpoint format 3 keeps the model's options and the estimator's settings apart, and a run
directory written before it (format 2, both sets merged under ``model_options``) still loads,
resumes, evaluates and exports.

``tests/fixtures/format2_run`` is the run directory that reste wrote at commit d0fb2f4 with

    reste train --dataset digits --model digits_1w1a --epochs 2 --o-end 2.5 --scaling channel --seed 1

(config.json, metrics.jsonl, last.pt and best.pt; the lock file left out).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import reste
from reste import engine, models, rundir
from reste.checkpoint import VERSION, load_checkpoint, model_arguments, model_from_checkpoint
from reste.data import load_datasets
from reste.engine import evaluate_checkpoint, resume
from reste.errors import UsageError
from reste.export import PackedModel, export_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "format2_run"
SETTINGS = {"estimator": "reste", "estimator_options": {"o_end": 2.5}, "a32": False, "scaling": "channel"}

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _estimators_as_saved(model: torch.nn.Module) -> None:
    ests = reste.estimators_of(model)
    assert ests and all(isinstance(e, reste.ReSTE) and e.o_end == 2.5 for e in ests)
    assert all(m.scaling == "channel" for _, m in reste.binary_layers(model))


def test_a_format_2_checkpoint_loads_with_the_two_sets_apart():
    ckpt = load_checkpoint(FIXTURE / "last.pt")
    assert ckpt["version"] == 2 and ckpt["model_options"]["o_end"] == 2.5  # merged, as format 2 saved them
    assert model_arguments(ckpt) == ({"num_classes": 10}, SETTINGS)
    model = model_from_checkpoint(ckpt)
    _estimators_as_saved(model)
    o = {e.o for e in reste.estimators_of(model)}
    assert len(o) == 1 and o.pop() > 1.0  # the schedule state after 2 epochs came back with the weights


def test_format_3_stores_the_two_sets_apart(tmp_path):
    assert VERSION == 3
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    result = resume(run, {"epochs": 3}, force=True, progress=False, log=lambda _m: None)
    assert result["epochs"] == 3
    old, new = rundir.read_metrics(FIXTURE), rundir.read_metrics(run)
    assert [m["epoch"] for m in new] == [1, 2, 3] and new[:2] == old
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["version"] == 3 and ckpt["epoch"] == 3
    assert ckpt["model_options"] == {"num_classes": 10}
    # a format-3 run writes every estimator option out, those the format-2 run left at their defaults too
    full = {**SETTINGS, "estimator_options": {"o": 1.0, "t": 1.5, "interval": 0.1, "o_end": 2.5, "schedule": "cosine"}}
    assert {k: ckpt[k] for k in SETTINGS} == full
    assert model_arguments(ckpt) == ({"num_classes": 10}, full)
    _estimators_as_saved(model_from_checkpoint(ckpt))


def test_a_format_2_checkpoint_evaluates_to_its_logged_accuracy(monkeypatch):
    selected = []

    def cuda_device(dev):  # cuda:N is made current for the evaluation (kernels launch on the current device)
        selected.append(dev)
        return contextlib.nullcontext()

    monkeypatch.setattr(engine, "cuda_device", cuda_device)
    logged = rundir.read_metrics(FIXTURE)[-1]["test_acc"]
    result = evaluate_checkpoint(FIXTURE / "best.pt", device="cpu")
    assert selected == [torch.device("cpu")]
    assert result["epoch"] == 2 and result["stored_top1"] == logged
    _, test, _ = load_datasets("digits")
    assert abs(result["top1"] - logged) <= 100.0 / len(test) + 1e-9  # one image at most, on another CPU


def test_a_format_2_checkpoint_exports(tmp_path):
    report = export_checkpoint(FIXTURE / "best.pt", tmp_path / "m.rbnn")
    assert report["verify"]["ok"], report["verify"]
    packed = PackedModel.load(tmp_path / "m.rbnn")
    assert packed.meta["model_options"] == {"num_classes": 10}
    assert {k: packed.meta[k] for k in SETTINGS} == SETTINGS
    model = model_from_checkpoint(load_checkpoint(FIXTURE / "best.pt"))
    _, test, _ = load_datasets("digits")
    images = test.images[:64]
    with torch.no_grad():
        expected = model(images).argmax(1).numpy()
    assert np.mean(packed(images).argmax(1).numpy() == expected) >= 0.95


def test_models_create_takes_the_two_sets_apart():
    model = models.create("fmnist_vgg_1w1a", width=8, estimator="fda", estimator_options={"w": 0.5})
    assert model.conv1.out_channels == 8 and all(e.w == 0.5 for e in reste.estimators_of(model))
    with pytest.raises(UsageError, match=r"no option 'depth' \(its options: width\).*those of 'fda': n, n_end, w"):
        models.create("fmnist_vgg_1w1a", estimator="fda", depth=3)
    with pytest.raises(ValueError, match="given twice"):
        models.create("resnet20_1w1a", estimator="ste", clip=1.0, estimator_options={"clip": 2.0})
    with pytest.raises(ValueError, match="bad hyper-parameters for estimator 'ste'"):
        models.create("resnet20_1w1a", estimator="ste", estimator_options={"width": 8})


def test_structure_damage_finds_a_file_cut_short_or_replaced_from_its_end(tmp_path):
    """(review chaos2 #2) `reste show SWEEP_DIR` reads a stopped run's last.pt only as far as its zip's central
    directory: a file cut anywhere, or other bytes, is damaged; a changed byte inside needs the whole read."""
    from reste.checkpoint import damage, save_checkpoint, structure_damage

    path = tmp_path / "last.pt"
    blob = save_checkpoint({"epoch": 3, "model": {"w": torch.arange(5000.0)}}, path)
    assert structure_damage(path) is None and damage(path) is None
    assert structure_damage(FIXTURE / "last.pt") is None  # format 2
    comment = len(blob) - 77  # (its 77 bytes: "reste-sha256:" and 64 hex digits; before them the 22-byte record)
    for cut in (10, len(blob) // 2, comment - 10, comment, comment + 5, comment + 12, comment + 13, len(blob) - 1):
        path.write_bytes(blob[:cut])  # (review diff12 #1: a cut that kept under 13 comment bytes passed as whole)
        assert structure_damage(path) is not None and damage(path) is not None, cut - comment
        with pytest.raises(UsageError, match="corrupted|truncated"):
            load_checkpoint(path)
    at = blob.find(b"PK\x01\x02")  # (review diff12 #3) a central directory entry's "version needed" byte changed:
    version = bytearray(blob)  # zipfile's NotImplementedError escaped, and `reste show SWEEP_DIR` failed whole
    version[at + 6] = 97
    path.write_bytes(bytes(version))
    assert structure_damage(path).startswith("NotImplementedError: ") and damage(path) is not None
    with pytest.raises(UsageError, match="corrupted|truncated"):
        load_checkpoint(path)
    path.write_bytes(b"\0" * 100)
    assert structure_damage(path) == "not a PyTorch zip file"
    changed = bytearray(blob)
    changed[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(changed))
    assert structure_damage(path) is None and damage(path) == "SHA-256 mismatch"
    assert structure_damage(tmp_path / "gone.pt") == "missing"
    tag = bytearray(blob)  # (review diff13 #6) a byte of the checksum's tag changed: "no checksum", and whole
    tag[-70] ^= 1
    path.write_bytes(bytes(tag))
    assert structure_damage(path) == damage(path) == "its checksum record is damaged"
    torch.save({"w": torch.zeros(3)}, path)  # (review diff13 #5) a whole zip that no resume takes
    assert structure_damage(path) == "not a reste checkpoint (no 'reste-checkpoint' header)"


def test_a_stop_right_after_the_temporary_file_is_made_removes_it(tmp_path, monkeypatch):
    """(review chaos6 #5) a stop signal's exception raised between mkstemp and the try that removes the file left
    .NAME.XXXX.tmp: the writer's object is made before the file, and the export's lock inside the try."""
    from reste import files

    real, made = files.tempfile.mkstemp, []
    monkeypatch.setattr(files.tempfile, "mkstemp", lambda *a, **kw: (made.append(real(*a, **kw)) or made[-1]))
    # the stop, as the writer's object is made
    monkeypatch.setattr(files, "_Writes", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    assert list(tmp_path.iterdir()) == [] and made == []  # (the object first: no file was made)


def test_the_writers_object_closes_quietly_after_the_write(tmp_path):
    """(review compat3) The object atomic_write hands its writer is an io.RawIOBase, whose finalizer calls close(),
    which flushes: after the write its file is closed, and Python 3.13 printed "Exception ignored in:
    <reste.files._Writes ...> ValueError: flush of closed file" after each checkpoint a run wrote."""
    from reste import files

    handed = []
    files.atomic_write(tmp_path / "f.bin", lambda f: handed.append(f) or f.write(b"x"))
    handed[0].close()  # what its finalizer does (it raised ValueError)
    assert (tmp_path / "f.bin").read_bytes() == b"x" and handed[0].closed
    files._Writes().close()  # one never handed a file (mkstemp failed): AttributeError before


def test_the_exports_staging_file_goes_when_its_lock_is_stopped(tmp_path, monkeypatch):
    import fcntl

    from reste.export import exporter

    monkeypatch.setattr(fcntl, "flock", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        with exporter.staged(tmp_path / "m.rbnn"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_without_a_key_it_needs_is_one_line(tmp_path, capsys):
    """(review mut4 #7) A checkpoint whose checksum is whole but which lacks a key eval, export or resume reads (or
    holds it as another type) is refused naming the key, not a KeyError where it is first read."""
    from reste.checkpoint import REQUIRED, save_checkpoint
    from reste.cli import main

    whole = load_checkpoint(FIXTURE / "last.pt")
    path = tmp_path / "last.pt"
    for key, kind in REQUIRED.items():
        for broken in ({k: v for k, v in whole.items() if k != key}, {**whole, key: None if kind is not str else 3}):
            save_checkpoint({**broken, "version": VERSION}, path)
            with pytest.raises(UsageError, match=rf"is incomplete \(missing or malformed: {key}\); use another"):
                load_checkpoint(path)
    assert main(["eval", str(path)]) == 2  # the last written: metrics None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is incomplete (missing or malformed: metrics)" in err, err


def test_a_checkpoint_whose_class_names_are_malformed_is_one_line(tmp_path):
    """(review fuzz1 #2) ``classes`` held as a number passed its checks and ended in "TypeError: 'int' object is not
    iterable" in eval and resume; its export named the export's own temporary file as the corrupted one."""
    from reste.checkpoint import save_checkpoint

    whole = load_checkpoint(FIXTURE / "last.pt")
    path = tmp_path / "last.pt"
    for fine in (None, ["a", "b"], [0, 1]):  # (a plugin data set's classes named by numbers: review diff25 #2)
        save_checkpoint({**whole, "classes": fine, "version": VERSION}, path)
        assert load_checkpoint(path)["classes"] == fine
    for broken in (5, "abc", {"a": 1}):
        save_checkpoint({**whole, "classes": broken, "version": VERSION}, path)
        with pytest.raises(UsageError, match=r"is incomplete \(missing or malformed: classes\); use another"):
            load_checkpoint(path)


def test_model_from_checkpoint_takes_a_path_and_refuses_what_is_no_checkpoint(tmp_path):
    """(review api3 #3) a path (as load_checkpoint, evaluate_checkpoint and export take) gave "string indices must
    be integers", and a plain state_dict a bare KeyError: a path is read, anything else refused in one line."""
    want = model_from_checkpoint(load_checkpoint(FIXTURE / "best.pt"))
    for given in (FIXTURE / "best.pt", str(FIXTURE / "best.pt")):
        got = model_from_checkpoint(given)
        assert all(torch.equal(a, b) for a, b in zip(want.state_dict().values(), got.state_dict().values())
                   if torch.is_tensor(a))
    for odd in (torch.nn.Linear(2, 2).state_dict(), ["x"]):
        with pytest.raises(UsageError, match="takes a reste checkpoint .* has no 'reste-checkpoint' header"):
            model_from_checkpoint(odd)


def _with_sha(raw: bytes) -> bytes:
    """A zip's bytes with the checksum comment reste writes (what a crafted file can carry as well)."""
    import hashlib
    import struct

    comment = b"reste-sha256:" + hashlib.sha256(raw).hexdigest().encode()
    return raw[:-2] + struct.pack("<H", len(comment)) + comment


def test_a_crafted_checkpoint_that_would_take_more_memory_than_its_size_is_refused(tmp_path):
    """(review sec3 #4) a member deflated inside a checkpoint (torch.save stores them as they are) inflated a 1.2 MB
    file to 1 GB in eval, export and show; (#3) a metrics entry holding a small nest of shared lists was expanded
    without bound when a resume wrote the line back. Both are refused in one line before anything is built."""
    import io
    import zipfile

    from reste.checkpoint import _inflated, checkpoint_bytes, structure_damage

    state = {k: v for k, v in load_checkpoint(FIXTURE / "best.pt").items()
             if k not in ("format", "version", "software")}
    state["junk"] = torch.zeros(200_000, dtype=torch.uint8)
    plain = checkpoint_bytes(state)
    (tmp_path / "plain.pt").write_bytes(plain)
    assert load_checkpoint(tmp_path / "plain.pt")["junk"].numel() == 200_000
    source, out = zipfile.ZipFile(io.BytesIO(plain)), io.BytesIO()
    biggest = max(source.infolist(), key=lambda m: m.file_size).filename
    with zipfile.ZipFile(out, "w") as packed:
        for member in source.infolist():
            info = zipfile.ZipInfo(member.filename)
            info.compress_type = zipfile.ZIP_DEFLATED if member.filename == biggest else zipfile.ZIP_STORED
            packed.writestr(info, source.read(member.filename))
    (tmp_path / "bomb.pt").write_bytes(_with_sha(out.getvalue()))
    assert (tmp_path / "bomb.pt").stat().st_size < len(plain) - 150_000  # (the zeros inflate from almost nothing)
    with pytest.raises(UsageError, match=rf"refusing to load .*bomb.pt: its member '{biggest}' is compressed, which "
                                         "torch.save never does"):
        load_checkpoint(tmp_path / "bomb.pt")
    assert "is compressed" in structure_damage(tmp_path / "bomb.pt")  # (reste show's quick read)
    # (review mut11 #2) stored members whose sizes sum past the file's own: the branch after the compressed one
    assert _inflated(io.BytesIO(plain), len(plain)) is None
    assert "larger than the file" in _inflated(io.BytesIO(plain), len(plain) // 2)
    nest: list = [0]
    for _ in range(30):
        nest = [nest, nest]
    # (review mut11 #9) nor a text of 200 characters or more, nor a key that is not text
    for junk in ({"junk": nest}, {"note": "x" * 300}, {1: 0.5}):
        (tmp_path / "nest.pt").write_bytes(checkpoint_bytes({**state, "metrics": {**state["metrics"], **junk}}))
        with pytest.raises(UsageError, match=r"is incomplete \(missing or malformed: metrics\)"):
            load_checkpoint(tmp_path / "nest.pt")


def test_the_writers_object_flushes_to_its_file(tmp_path):
    """(review mut12) The object atomic_write hands its writer passes a flush on to its file: what was written
    before it is in the file when the writer goes on through the descriptor (fileno) it also hands over. Its flush
    doing nothing failed no test."""
    import os

    from reste import files

    def write(f):
        f.write(b"head ")
        f.flush()
        os.write(f.fileno(), b"tail")

    files.atomic_write(tmp_path / "f.bin", write)
    assert (tmp_path / "f.bin").read_bytes() == b"head tail"


def test_atomic_write_syncs_the_whole_content_before_the_rename(tmp_path, monkeypatch):
    """(review mut12) The file's content is on its way to the disk when it is synced: atomic_write flushes Python's
    buffer before its fsync (without the flush the fsync synced an empty or partial file, and the close wrote the
    rest after: a crash after the rename could leave a torn file; no test failed)."""
    import os

    from reste import files

    synced = []
    real = files.os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size) or real(fd))
    files.atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x" * 1000))
    assert synced[0] == 1000 and (tmp_path / "f.bin").read_bytes() == b"x" * 1000


def test_a_map_location_this_machine_has_not_is_not_called_a_corrupted_file(tmp_path):
    """(review apifuzz1) load_checkpoint(path, map_location="cuda") on a machine without CUDA (or "cuda:99", or a
    misspelt "gpu") said the whole file was "truncated or corrupted; use another checkpoint". It says the file is whole
    and what to pass; a file that is damaged is still called so, whatever the map_location."""
    for where in ("gpu", "cuda:99"):
        with pytest.raises(UsageError, match=rf"^cannot load checkpoint .*best.pt with map_location='{where}' \(.*\); "
                                             r"the file is whole: load it with map_location='cpu'"):
            load_checkpoint(FIXTURE / "best.pt", map_location=where)
    assert load_checkpoint(FIXTURE / "best.pt", map_location=torch.device("cpu"))["epoch"] == 2
    cut = tmp_path / "cut.pt"
    cut.write_bytes((FIXTURE / "best.pt").read_bytes()[:-100])
    with pytest.raises(UsageError, match="is truncated or corrupted"):
        load_checkpoint(cut, map_location="gpu")


def test_model_from_checkpoint_refuses_a_device_it_cannot_use_before_building(monkeypatch):
    """(review apifuzz1) device="gpu" gave torch's list of every device type, device="cuda" on a machine without CUDA
    "Found no NVIDIA driver on your system", both after the model was built; each is one line naming the device."""
    with pytest.raises(UsageError, match=r"^model_from_checkpoint: unknown device 'gpu'; pass cpu, cuda or cuda:N"):
        model_from_checkpoint(FIXTURE / "best.pt", device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"^model_from_checkpoint: device 'cuda:0', but torch finds no CUDA GPU"):
        model_from_checkpoint(FIXTURE / "best.pt", device="cuda:0")
    assert not model_from_checkpoint(FIXTURE / "best.pt", device=torch.device("cpu")).training


def test_make_folders_takes_back_the_folders_it_made_when_a_deeper_one_fails(tmp_path):
    """(review mut13) A level that cannot be made (a name too long for the file system) after levels this call made:
    those are removed again, deepest first, and the error is the mkdir's; a folder that was there stays."""
    import errno

    from reste import files

    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError) as info:
        files.make_folders(tmp_path / "kept" / "a" / "b" / ("x" * 300))
    assert info.value.errno == errno.ENAMETOOLONG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not list((tmp_path / "kept").iterdir())


def test_orphaned_temporaries_lists_files_of_atomic_writes_names_alone(tmp_path):
    """(review mut13, suggestion 5) its callers remove what it lists: a folder named like a temporary file, and files
    of other names, are never listed."""
    from reste.files import orphaned_temporaries

    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"x")         # atomic_write's name: listed
    (tmp_path / ".best.pt.q_9Zx7Y.tmp").mkdir()                  # a folder of that name: not
    for other in (".last.pt.ab1.tmp", "last.pt.abc123.tmp", ".last.pt.abc123.tmp.bak", "metrics.jsonl"):
        (tmp_path / other).write_bytes(b"x")
    assert orphaned_temporaries(tmp_path) == [tmp_path / ".last.pt.abc123.tmp"]
    assert orphaned_temporaries(tmp_path / "missing") == []
