#!/usr/bin/env python
"""Training images/s of wnzoo's pipeline against the authors' data path and against the BN twin.

    python benchmarks/train_speed.py [--models wn_resnet20 wn_resnet56] [--runs 3] [--steps 20]

Ours: the uint8 training set in device memory, crop/flip/normalize there (``wnzoo.data.DeviceData``),
channels_last. The authors' path: torchvision ``DataLoader`` over PIL images with RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor, Normalize, ``num_workers=0``, batch 128, the same model and SGD.
The BN twin runs on our pipeline. Each run times the three back to back; ratios are taken within a
run and reported as medians over runs.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import wnzoo
from wnzoo._datasets import DATASETS
from wnzoo.data import DeviceData, load_split
from wnzoo.registry import twin_name


class PILTrainSet(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        s = DATASETS["cifar10"]
        self.images, self.labels = images, labels
        self.tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor(), transforms.Normalize(s.mean, s.std)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def _run(model: torch.nn.Module, batches, steps: int, channels_last: bool) -> float:
    """images/s over ``steps`` SGD steps (after 2 warm-up steps), data loading included."""
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    it = iter(batches)
    n, t = 0, 0.0
    for i in range(steps + 2):
        if i == 2:
            t, n = time.perf_counter(), 0
        x, y = next(it)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["wn_resnet20", "wn_resnet56"])
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    images, labels = load_split(args.data, "cifar10", "train")
    ours = DeviceData.from_arrays(images, labels, "cifar10", seed=0)
    loader = DataLoader(PILTrainSet(images, labels), batch_size=128, shuffle=True, num_workers=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models:
        r_auth, r_bn = [], []
        for r in range(args.runs):
            torch.manual_seed(r)
            ip_ours = _run(wnzoo.create_model(name), ours.batches(r, 128, train=True), args.steps, True)
            ip_auth = _run(wnzoo.create_model(name), itertools.cycle(loader), args.steps, False)
            ip_bn = _run(wnzoo.create_model(twin_name(name)), ours.batches(r, 128, train=True), args.steps, True)
            r_auth.append(ip_ours / ip_auth)
            r_bn.append(ip_ours / ip_bn)
            print(f"{name} run {r + 1}: ours {ip_ours:.0f} img/s, authors' path {ip_auth:.0f} img/s, "
                  f"BN twin (ours) {ip_bn:.0f} img/s", flush=True)
        print(f"{name}: ours / authors' path = {statistics.median(r_auth):.2f}x, "
              f"WN / BN twin = {statistics.median(r_bn):.2f}x  (medians of {args.runs})")


if __name__ == "__main__":
    main()
