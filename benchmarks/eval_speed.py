#!/usr/bin/env python
"""Speed of wnzoo's eval path against the straightforward one, on the real CIFAR-10 test images.

    python benchmarks/eval_speed.py [--data ../shared/data/cifar10] [--runs 3] [--limit N] [--device cpu]

Ours (``wnzoo.evaluation``): the fused model (``wnzoo.fuse``), channels_last, the uint8 test set held on
the device (``DeviceData``), batches of ``--batch-size`` under ``torch.inference_mode``.
Baseline (the usual torchvision recipe): a Dataset that turns each image into a PIL image and applies
``ToTensor`` + ``Normalize``, ``DataLoader(batch_size=128, num_workers=0)``, the unfused model under
``torch.no_grad``. Both start from the same uint8 arrays in memory and the same model, and both timings
include their own setup (fusing and the device copy for ours, the loader for the baseline).

Each run times the baseline and ours back to back; the speed-up is the median over runs of the ratio
within a run, so a machine whose load drifts between runs still compares like with like. The script
exits 1 if the two paths' predictions (argmax) differ on any image.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import wnzoo
from wnzoo._datasets import DATASETS
from wnzoo.data import DataError, DeviceData, load_split
from wnzoo.evaluation import inference_model, predict, resolve_device


class PILDataset(Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per item: uint8 HWC → PIL image → transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device) -> torch.Tensor:
    stats = DATASETS["cifar10"]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(stats.mean, stats.std)])
    loader = DataLoader(PILDataset(images, labels, tf), batch_size=128, shuffle=False, num_workers=0)
    model.eval()
    out = []
    with torch.no_grad():
        for x, _ in loader:
            out.append(model(x.to(device)).argmax(1).cpu())
    return torch.cat(out)


def ours(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device,
         batch_size: int) -> torch.Tensor:
    fast = inference_model(model, device, channels_last=True)
    data = DeviceData.from_arrays(images, labels, "cifar10", device, channels_last=True)
    return predict(fast, data, batch_size).argmax(1).cpu()


def timed(fn, device: torch.device, *args) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    preds = fn(*args)  # ends with .cpu(), which waits for the device
    return time.perf_counter() - start, preds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/cifar10", help="CIFAR-10 source (any wnzoo.data source)")
    ap.add_argument("--models", nargs="+", default=["wn_resnet56", "wn_resnet110"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N test images")
    ap.add_argument("--batch-size", type=int, default=256, help="our batch size (the baseline keeps 128)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.runs < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--runs and --limit must be positive")
    try:
        device = resolve_device(args.device)
        images, labels = load_split(args.data, "cifar10", "test")
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images, labels = images[:args.limit], labels[:args.limit]
    print(f"{len(images)} images, device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'model':<14} {'baseline s':>10} {'ours s':>8} {'base img/s':>10} {'ours img/s':>10} {'speed-up':>9}  "
          f"runs (ratio)  same predictions")
    all_same = True
    for name in args.models:
        torch.manual_seed(0)
        model = wnzoo.create_model(name).to(device)
        times_b, times_o, ratios, same = [], [], [], True
        for _ in range(args.runs):
            tb, pb = timed(baseline, device, model, images, labels, device)
            to, po = timed(ours, device, model, images, labels, device, args.batch_size)
            times_b.append(tb)
            times_o.append(to)
            ratios.append(tb / to)
            same &= torch.equal(pb, po)
        tb, to, ratio = statistics.median(times_b), statistics.median(times_o), statistics.median(ratios)
        all_same &= same
        print(f"{name:<14} {tb:>10.2f} {to:>8.2f} {len(images) / tb:>10.0f} {len(images) / to:>10.0f} {ratio:>8.2f}×  "
              f"{' '.join(f'{r:.2f}' for r in ratios)}  {'yes' if same else 'NO'}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
