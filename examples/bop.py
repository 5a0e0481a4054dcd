"""Latent weights or none: the same binary CNN trained with estimators (STE, ReSTE) and with Bop, side by side.

    python examples/bop.py                       # digits (no download), 15 epochs each, a minute on 2 cores
    python examples/bop.py --dataset fashion-mnist --data-path /usr/share/datasets/fashion-mnist --epochs 5
    python examples/bop.py --epochs 1            # a quick look (tests/test_examples.py runs it)

Each row: the test accuracy after training, and for Bop how many binary weights flipped in the last epoch (the
paper's sign that the network still moves). The float parameters (batch norms, the first conv and the last
linear) take Adam in every row; only the binary weights' training differs.
"""
import argparse

import torch
from torch import nn

import reste
from reste import data, datasets
from reste.optim import Bop, Composite, split_binary

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
parser.add_argument("--data-path", help="Fashion-MNIST's folder (torchvision's layout)")
parser.add_argument("--epochs", type=int, default=15)
parser.add_argument("--gamma", type=float, default=3e-3, help="Bop's rate (larq's default 1e-4 is for long runs)")
parser.add_argument("--threshold", type=float, default=1e-6, help="Bop's flip threshold")
args = parser.parse_args()
spec = datasets.get_spec(args.dataset)
channels, size, _ = spec.input_size
train, test, _ = data.load_datasets(args.dataset, args.data_path, in_memory=True)
train_loader, test_loader = data.make_loaders(train, test, batch_size=64, eval_batch_size=512, device="cpu")


def float_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32),              # first conv: kept float
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(2),   # binary
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(2),   # binary
        nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, spec.num_classes))     # last linear: kept float


def run(name: str) -> tuple[float, int | None]:
    """Test accuracy (%) after training, and Bop's flips in the last epoch (None for an estimator)."""
    torch.manual_seed(0)
    if name == "bop":  # +-1 weights: the STE passes 1 there, and no scale, so Bop reads dL/dw of the binary weight
        model = reste.binarize(float_cnn(), "ste", scaling="none")
        binary, others = split_binary(model)
        bop = Bop(binary, gamma=args.gamma, threshold=args.threshold)
        optimizer = Composite(bop, torch.optim.Adam(others, lr=1e-3))  # stepped as one
    else:  # latent float weights, their sign in the forward, the estimator's g in the backward
        model = reste.binarize(float_cnn(), name, **({"o_end": 3.0} if name == "reste" else {}))
        optimizer, bop = torch.optim.Adam(model.parameters(), lr=1e-3), None
    flips = None
    for epoch in range(args.epochs):
        reste.set_progress(model, epoch, args.epochs)
        train_loader.set_epoch(epoch)
        model.train()
        before = int(bop.flipped) if bop else 0
        for images, labels in train_loader:
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
            optimizer.zero_grad()
        flips = int(bop.flipped) - before if bop else None  # (flipped: every step's flips, counted on the device)
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test_loader)
    return 100 * correct / len(test), flips


print(f"{args.dataset}, {args.epochs} epoch(s) each; Bop gamma {args.gamma:g}, threshold {args.threshold:g}")
for name in ("ste", "reste", "bop"):
    accuracy, flips = run(name)
    extra = "" if flips is None else f"  ({flips} weight flips in the last epoch)"
    print(f"{name:6s} test acc {accuracy:.2f}{extra}")
