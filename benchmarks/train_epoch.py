"""Benchmark: a whole CIFAR-10-shaped training epoch through the real engine, beside the bare step.

It writes a synthetic CIFAR-10 in its real on-disk format (the python pickle batches
``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``, random uint8 images; 50,000 train
and 10,000 test images by default) into a temporary folder, and trains on it with
``reste.engine.train``: data loading (on the training device by default, as ``reste train``
does), the training steps, the test-split evaluation and the checkpoint of every epoch. The
first epoch pays for compilation and warm-up, so the figures are the median of the later epochs
(``--epochs``, default 2: the second alone), each timed from one epoch's end line to the next.

Beside it, in the same process, the bare step: the engine's own step (``_Run.step``: eager,
or the CUDA graph with ``--cuda-graphs``) repeated on one batch already on the device, timed
before and after the epochs (one median of both: a load that moves meanwhile skews neither side).

It prints the images/s of both, their ratio (issue 11's target: whole epoch / bare step >= 0.85),
and what the measured epoch implies for the wall time of each CIFAR-10 preset of the same model.

    python benchmarks/train_epoch.py --device cuda --amp bf16 --channels-last --cuda-graphs
    python benchmarks/train_epoch.py --device cpu --threads 2 --images 5000 --test-images 1000
    python benchmarks/train_epoch.py --json epoch.json     # also write the figures as JSON
    python benchmarks/train_epoch.py --device cpu --accumulate 4   # each step's batch in 4 micro-batches

On the CPU the images/s are those of this machine's cores; the ratio is the meaningful figure.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reste import engine, rundir
from reste.config import PRESETS, TrainConfig, check_accumulate
from reste.errors import UsageError


def write_cifar10(root: Path, train_images: int, test_images: int, seed: int = 0) -> Path:
    """A random CIFAR-10 in the python-batch format (five train batches and one test batch)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sizes = [train_images // 5 + (i < train_images % 5) for i in range(5)]
    for name, n in [*[(f"data_batch_{i + 1}", k) for i, k in enumerate(sizes)], ("test_batch", test_images)]:
        entry = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--model", default="resnet20_1w1a", help="a CIFAR-10 model of the zoo (default resnet20_1w1a)")
    ap.add_argument("--estimator", default="reste", help="estimator (default reste)")
    ap.add_argument("--batch-size", type=int, default=256, help="training batch size (default 256)")
    ap.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="none (default), bf16 or fp16")
    ap.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay each step as one CUDA graph")
    ap.add_argument("--accumulate", type=int, default=1,
                    help="micro-batches per optimizer step, as reste train --accumulate (default 1)")
    ap.add_argument("--data-device", default="auto", help="auto (the training device) or cpu")
    ap.add_argument("--images", type=int, default=50_000, help="train images (default 50,000)")
    ap.add_argument("--test-images", type=int, default=10_000, help="test images (default 10,000)")
    ap.add_argument("--epochs", type=int, default=2,
                    help="epochs to run; the median of those after the first is reported (default 2)")
    ap.add_argument("--steps", type=int, default=30, help="timed bare steps (default 30)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    try:
        check_accumulate(args.batch_size, args.accumulate, args.cuda_graphs)
    except UsageError as err:
        ap.error(str(err))
    if args.epochs < 2 or args.steps < 1 or args.images < args.batch_size or args.test_images < 1:
        ap.error("need --epochs >= 2 (the first is not timed), --steps >= 1, --test-images >= 1 and "
                 "--images >= --batch-size")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step(config: TrainConfig, run_dir: Path, steps: int) -> dict[str, float]:
    """The engine's own training step repeated on one device-resident batch: median seconds, and the path its
    estimators took."""
    with engine._torch_settings_kept():  # (as engine.train has them: a graphed run's choice of kernels ends with it)
        return _bare_step(config, run_dir, steps)


def _bare_step(config: TrainConfig, run_dir: Path, steps: int) -> dict[str, float]:
    run = engine._Run(config, run_dir, lambda _m: None, False)
    path = engine.kernel_path(run.device, run.model)
    engine.set_progress(run.model, config.epochs - 1, config.epochs)
    if run.graphed is not None:
        run.graphed.invalidate()
    images, target = next(iter(run.train_loader))
    images, target = engine._to_device(images, target, run.device, config.channels_last)
    for _ in range(5):  # warm-up (and, with --cuda-graphs, the capture)
        run.step(images, target)
    times = []
    for _ in range(steps):
        _sync(run.device)
        t0 = time.perf_counter()
        run.step(images, target)
        _sync(run.device)
        times.append(time.perf_counter() - t0)
    result = {"median_s": statistics.median(times), "images_per_s": images.shape[0] / statistics.median(times),
              "device": str(run.device), "times_s": times, "batch": images.shape[0], "kernel_path": path}
    if run.graphed is not None:  # its graphs and data on the device go now, not beside the epochs timed next
        run.graphed.invalidate()
    del run, images, target
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def both_sides(before: dict, after: dict) -> dict:
    """The bare step timed before and after the epochs, as one figure: the median of all its steps (a machine
    whose load moves while the epochs run would otherwise skew the ratio toward one side)."""
    times = before["times_s"] + after["times_s"]
    median = statistics.median(times)
    return {"median_s": median, "images_per_s": before["batch"] / median, "device": before["device"],
            "median_before_s": before["median_s"], "median_after_s": after["median_s"],
            "kernel_path": before["kernel_path"]}


def whole_epochs(config: TrainConfig, run_dir: Path) -> dict[str, float]:
    """Train through the engine; the last epoch's wall time (end line to end line)."""
    stamps: list[float] = []

    def log(message: str) -> None:
        if message.startswith("epoch "):
            stamps.append(time.perf_counter())
            print(f"  {message}", flush=True)

    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    with _timed(phases, config, stamps):
        engine.train(config, run_dir, progress=False, log=log)
    stamps.insert(0, t0)
    # the epochs after the first (which pays for compilation and warm-up): their median, so one slow epoch (a
    # collection, a page-cache flush at the checkpoint) cannot move the figure; with 2 epochs, the second
    later = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    metrics = rundir.read_metrics(run_dir)[-1]
    return {"epoch_s": statistics.median(later), "epochs_timed": len(later), "epoch_min_s": min(later),
            "epoch_max_s": max(later), "train_s": float(metrics["time"]), "first_epoch_s": stamps[1] - stamps[0],
            "last_epoch_phases_s": phases}


@contextlib.contextmanager
def _timed(phases: dict[str, float], config: TrainConfig, stamps: list[float]):
    """Time the parts of the last epoch (the steps, the eager warm-up and capture steps among them, the test
    evaluation, the checkpoint), each synchronised with the device, by wrapping the engine's functions."""
    device = engine.pick_device(config.device)
    saved: list[tuple[object, str, object]] = []  # (owner, name, the original) to put back

    def wrap(owner, name, label, when=lambda *_a: True):
        inner = getattr(owner, name)
        saved.append((owner, name, inner))

        def timed(*args, **kwargs):
            if len(stamps) < config.epochs - 1 or not when(*args):  # only the last epoch
                return inner(*args, **kwargs)
            _sync(device)
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                _sync(device)
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t

        setattr(owner, name, timed)

    wrap(engine._Run, "train_epoch", "training steps (all)")
    wrap(engine._Run, "save", "checkpoint")
    wrap(engine, "evaluate", "test evaluation")
    wrap(engine.GraphedStep, "__call__", CAPTURE,
         lambda step, *_: step._replay is None)
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


CAPTURE = "  of which eager warm-up and capture steps"  # the phase of a graphed epoch that its steps include


def full_epoch_s(epoch: dict, images: int, test_images: int) -> float:
    """The seconds of an epoch of CIFAR-10's 50,000 train and 10,000 test images, from one of ``images`` and
    ``test_images``: the steps (and the rest of the epoch) scale with the train images, the test evaluation with the
    test images; the checkpoint (one an epoch, its size the model's) and, with --cuda-graphs, the epoch's eager
    warm-up and capture steps (as many whatever the data's size) do not scale."""
    phases = epoch["last_epoch_phases_s"]
    checkpoint, evaluation = phases.get("checkpoint", 0.0), phases.get("test evaluation", 0.0)
    fixed = checkpoint + phases.get(CAPTURE, 0.0)
    rest = max(epoch["epoch_s"] - evaluation - fixed, 0.0)
    return rest * 50_000 / images + evaluation * 10_000 / test_images + fixed


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        return _measure(args)
    except UsageError as err:  # the run's own refusal (no CUDA device, --cuda-graphs on the CPU): one line
        raise SystemExit(f"train_epoch.py: {err}") from None


def _measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    base = dict(dataset="cifar10", model=args.model, estimator=args.estimator, batch_size=args.batch_size,
                eval_batch_size=max(args.batch_size, 256), epochs=args.epochs, warm_up=0, amp=args.amp,
                channels_last=args.channels_last, cuda_graphs=args.cuda_graphs, accumulate=args.accumulate,
                device=args.device,
                data_device=args.data_device, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="reste-epoch-") as tmp:
        data = write_cifar10(Path(tmp) / "cifar", args.images, args.test_images)
        config = TrainConfig(**base, data_path=str(data)).resolve()
        before = bare_step(config, Path(tmp) / "bare", args.steps)
        print(f"device {before['device']}, {args.model} ({args.estimator}), batch {args.batch_size}, amp {args.amp}"
              f"{', channels_last' if args.channels_last else ''}{', CUDA graphs' if args.cuda_graphs else ''}"
              f"{f', {args.accumulate} micro-batches per step' if args.accumulate > 1 else ''}; "
              f"{args.images:,} train / {args.test_images:,} test images")
        epoch = whole_epochs(config, Path(tmp) / "run")
        step = both_sides(before, bare_step(config, Path(tmp) / "bare-after", args.steps))
        print(f"bare step: {1000 * step['median_s']:.2f} ms median of {2 * args.steps}, timed before and after the "
              f"epochs ({1000 * step['median_before_s']:.2f} and {1000 * step['median_after_s']:.2f} ms) = "
              f"{step['images_per_s']:,.0f} images/s")
    # an epoch trains every image: the last partial batch too, with --cuda-graphs as well (eagerly, between captures)
    epoch_rate = args.images / epoch["epoch_s"]
    ratio = epoch_rate / step["images_per_s"]
    timed = (f"epoch {args.epochs}" if epoch["epochs_timed"] == 1 else
             f"median of epochs 2-{args.epochs} ({epoch['epoch_min_s']:.2f}-{epoch['epoch_max_s']:.2f} s)")
    print(f"whole epoch, {timed} (steps, test evaluation, checkpoint): {epoch['epoch_s']:.2f} s = "
          f"{epoch_rate:,.0f} train images/s (first epoch {epoch['first_epoch_s']:.1f} s)")
    for label, sec in epoch["last_epoch_phases_s"].items():
        print(f"  {label}: {sec:.3f} s")
    print(f"whole epoch / bare step: {ratio:.2f}  (issue 11 target >= 0.85: {'MET' if ratio >= 0.85 else 'NOT MET'})")
    implied: dict[str, float] = {}
    groups: dict[tuple[int, int], list[str]] = {}
    for name, preset in PRESETS.items():
        cfg = preset.settings
        if cfg.get("dataset") == "cifar10" and cfg.get("model") == args.model:
            implied[name] = cfg["epochs"] * full_epoch_s(epoch, args.images, args.test_images) / 3600
            groups.setdefault((cfg["epochs"], cfg.get("batch_size", 256)), []).append(name)
    for (epochs, batch), names in groups.items():
        note = "" if batch == args.batch_size else f"; measured at batch {args.batch_size}, the presets use {batch}"
        print(f"implied wall time of {epochs} epochs of 50,000 images: {implied[names[0]]:.2f} h "
              f"({', '.join(names)}{note})")
    path = step["kernel_path"]  # (RESTE_CUDA_EXT, and a graphed run's own choice: benchmarks/RESULTS.md, 2026-12-06)
    print(f"sign and the estimators' backward ran through: {path}")
    out = {"args": vars(args), "bare_step": step, "epoch": epoch, "epoch_images_per_s": epoch_rate,
           "epoch_over_step": ratio, "implied_hours": implied, "kernel_path": path}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
