"""Binarize your own float CNN with reste and train it with your own loop, then export it to 1-bit packed form.

    python examples/own_model.py                           # digits (no download): 20 epochs, about 97 %
    python examples/own_model.py --dataset fashion-mnist --data-path /usr/share/datasets/fashion-mnist
                                  # (about 2 minutes an epoch on one CPU core, 45 for the 20: add --epochs 2 to try it)
    python examples/own_model.py --epochs 2                # a quick look (tests/test_examples.py runs --epochs 1)
"""
import argparse

import torch
from torch import nn

import reste
from reste import data, datasets
from reste.export import PackedModel, evaluate_packed, export_model
from reste.export.ir import Preprocessing

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
parser.add_argument("--data-path", help="Fashion-MNIST's folder (torchvision's layout)")
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--out", default="own_model.rbnn", help="the packed model's file")
args = parser.parse_args()
torch.manual_seed(0)
spec = datasets.get_spec(args.dataset)
channels, size, _ = spec.input_size

# conv -> BatchNorm everywhere: each binary conv's sign reads BN's signed output (a ReLU's would be +1 everywhere)
float_model = nn.Sequential(
    nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32),                 # first conv: reste keeps it float
    nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(2),      # binary
    nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(2),      # binary
    nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, spec.num_classes))        # last linear: float too
model = reste.binarize(float_model, estimator="reste", o_end=3.0)

train, test, _ = data.load_datasets(args.dataset, args.data_path, in_memory=True)
train_loader, test_loader = data.make_loaders(train, test, batch_size=64, eval_batch_size=512, device="cpu")
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
meter = reste.EquilibriumMeter(model, mode="general")
for epoch in range(args.epochs):
    reste.set_progress(model, epoch, args.epochs)    # ReSTE's o: 1 -> o_end over the run
    train_loader.set_epoch(epoch)                     # this epoch's order: a function of (seed, epoch)
    model.train()
    for images, labels in train_loader:
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        meter.update()
    indicators = meter.epoch_end()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test_loader)
    print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.4f}  test acc {100 * correct / len(test):.2f}  "
          f"estimating error {indicators['estimating_error']:.4g}  "
          f"gradient stability {indicators['gradient_stability']:.4g}")

# 1-bit export: checks the file against the model on 16 images; meta lets it take raw uint8 images
export_model(model, args.out, input_size=spec.input_size,
             meta={**Preprocessing(spec.input_size, spec.mean, spec.std, spec.scale).to_meta(),
                   "dataset": args.dataset})
packed = PackedModel.load(args.out)
top1 = evaluate_packed(packed, args.dataset, data_path=args.data_path)["top1"]
print(f"packed {args.out}: test acc {top1:.2f} (PyTorch model {100 * correct / len(test):.2f})")
