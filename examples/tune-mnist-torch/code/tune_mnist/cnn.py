"""A small PyTorch CNN on MNIST as a Ray Tune function trainable, for clusters whose nodes
have the MNIST files and, ideally, GPUs. Not run by this project's tests: the test
machines have no PyTorch, no MNIST and no GPU (examples/tune-digits is the sample the
tests run). docs/tune.md, "A PyTorch sample", says how to run it.

The data is read from disk, never downloaded: every node needs torchvision's MNIST
layout (``MNIST/raw/*-ubyte``) under ``$MNIST_DIR`` (default ``/srv/mnist``); set it
for the Ray unit with ``ray_environment: {MNIST_DIR: ...}`` in the inventory.

One report per epoch: validation accuracy and a checkpoint (weights, optimizer state,
epoch), so ASHA can stop a poor trial early and PBT can continue a trial from a better
one's checkpoint with mutated ``lr``/``momentum``. ``restored: 1`` marks the first
epoch after a checkpoint was loaded (the driver counts PBT restores with it).
"""

from __future__ import annotations

import os
import tempfile

import torch
from ray import tune
from torch import nn
from torch.utils.data import DataLoader, random_split
from torchvision import datasets, transforms

MAX_EPOCHS = 1000  # the spec's `epochs` stops a trial long before this
VALIDATION = 5000  # images of the 60,000 training images held out for the metric


def data_dir() -> str:
    root = os.environ.get("MNIST_DIR", "/srv/mnist")
    if not os.path.isdir(os.path.join(root, "MNIST", "raw")):
        raise FileNotFoundError(f"no MNIST data under {root}/MNIST/raw on this node: copy it there or set "
                                "MNIST_DIR (inventory: ray_environment) on every Ray node; nothing is downloaded")
    return root


def loaders(batch: int) -> tuple[DataLoader, DataLoader]:
    norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    full = datasets.MNIST(data_dir(), train=True, download=False, transform=norm)
    # the same split in every trial and on every node
    train, val = random_split(full, [len(full) - VALIDATION, VALIDATION], generator=torch.Generator().manual_seed(0))
    return (DataLoader(train, batch_size=batch, shuffle=True, num_workers=0),
            DataLoader(val, batch_size=1000, num_workers=0))


class Net(nn.Module):
    def __init__(self, channels: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),           # 28 -> 14
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # 14 -> 7
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels * 7 * 7, hidden), nn.ReLU(),
            nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def accuracy(model: nn.Module, val: DataLoader, device: torch.device) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in val:
            right += (model(x.to(device)).argmax(dim=1) == y.to(device)).sum().item()
            total += len(y)
    return right / total


def train(config: dict) -> None:
    # Ray sets CUDA_VISIBLE_DEVICES to the GPU this trial was given (a fraction shares one)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Net(int(config["channels"]), int(config["hidden"]), float(config["dropout"])).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=float(config["momentum"]))
    train_data, val_data = loaders(int(config.get("batch", 64)))
    start, restored = 0, False
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, restored = state["epoch"], True
        for group in opt.param_groups:  # PBT may have mutated these since the checkpoint
            group["lr"], group["momentum"] = float(config["lr"]), float(config["momentum"])
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start, MAX_EPOCHS):
        model.train()
        for x, y in train_data:
            opt.zero_grad()
            loss_fn(model(x.to(device)), y.to(device)).backward()
            opt.step()
        acc = accuracy(model, val_data, device)
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1},
                       os.path.join(d, "state.pt"))
            tune.report({"accuracy": acc, "restored": int(restored)}, checkpoint=tune.Checkpoint.from_directory(d))
        restored = False
