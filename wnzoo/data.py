"""CIFAR-10/100 from the sources users have, and a device-resident training/eval pipeline.

``load_split(source, dataset, split)`` returns ``(images uint8 NHWC, labels int64)`` numpy arrays.
``DeviceData`` keeps those uint8 arrays on the training device and batches, augments (crop with
4-px zero padding, horizontal flip, optional cutout) and normalizes there, so no DataLoader worker
or host-to-device copy sits on the hot path. Its randomness derives from ``(seed, epoch)`` only,
so an epoch is reproducible from the seed alone, which is what makes resume exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._constants import DATASET_STATS

__all__ = ["load_split", "DeviceData", "DataError", "DATASET_STATS", "train_val_indices", "normalize"]


class DataError(ValueError):
    """A data source that cannot be used; the message names the problem and the fix."""


def _check_arrays(images: np.ndarray, labels: np.ndarray, dataset: str, origin: str) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{origin}: images must be uint8 of shape (N, 32, 32, 3) (NHWC), got {images.dtype} "
                        f"{images.shape}; convert with np.asarray(imgs, dtype=np.uint8).reshape(-1, 32, 32, 3)")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"{origin}: {len(images)} images but {len(labels)} labels")
    n = DATASET_STATS[dataset]["num_classes"]
    if len(labels) and (labels.min() < 0 or labels.max() >= n):
        raise DataError(f"{origin}: labels span [{labels.min()}, {labels.max()}] but {dataset} has {n} classes; "
                        f"is this the right dataset (--dataset cifar10 / cifar100)?")
    return images, labels


def _load_npz(folder: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = folder / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{folder} has no {split}.npz; a npz data folder needs train.npz and test.npz "
                        f"with arrays 'images' (N,32,32,3) uint8 and 'labels' (N,)")
    with np.load(path, allow_pickle=False) as f:
        missing = {"images", "labels"} - set(f.files)
        if missing:
            raise DataError(f"{path} lacks array(s) {sorted(missing)}; it has {f.files}")
        return _check_arrays(f["images"], f["labels"], dataset, str(path))


def load_split(source: str | Path, dataset: str = "cifar10", split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load one split (``'train'`` or ``'test'``) of ``dataset`` from a data folder."""
    if dataset not in DATASET_STATS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_STATS)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    folder = Path(source).expanduser()
    if not folder.exists():
        raise DataError(f"data path {folder} does not exist; pass --data with a folder holding train.npz/test.npz")
    return _load_npz(folder, dataset, split)


def train_val_indices(n: int, val_size: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random train/validation split (45k/5k for CIFAR), the same for every run with ``seed``."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def normalize(x_uint8_nchw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x_uint8_nchw.float().div_(255) - mean) / std


@dataclass
class DeviceData:
    """A split held on ``device`` as uint8 NCHW, batched and augmented there.

    ``batches(epoch, batch_size)`` yields normalized float batches; with ``train=True`` the order
    is shuffled and the images augmented, all from a generator seeded by ``(seed, epoch)``. With
    ``shard=(rank, world)`` every process draws the same global batch and keeps its slice, so
    several processes see exactly what one process with the global batch would see.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    seed: int = 0
    cutout: int = 0
    channels_last: bool = False

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray, dataset: str, device: torch.device | str = "cpu",
                    **kwargs) -> "DeviceData":
        stats = DATASET_STATS[dataset]
        dev = torch.device(device)
        return cls(images=torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2).contiguous(),
                   labels=torch.from_numpy(labels).to(dev),
                   mean=torch.tensor(stats["mean"], device=dev).view(1, 3, 1, 1),
                   std=torch.tensor(stats["std"], device=dev).view(1, 3, 1, 1), **kwargs)

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, dev = x.shape[0], x.device
        off = torch.randint(0, 9, (b, 2), generator=gen).to(dev)
        flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        ar = torch.arange(32, device=dev)
        rows = (off[:, 0:1] + ar)[:, None, :, None]
        cols = (off[:, 1:2] + ar)[:, None, None, :]
        cols = torch.where(flip[:, None, None, None], off[:, 1:2, None, None] + 31 - ar[None, None, None, :], cols)
        chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        return padded[torch.arange(b, device=dev)[:, None, None, None], chan, rows, cols]

    def _cutout(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Zero a ``cutout``-px square centred at a uniform pixel (clipped), after normalization."""
        b, dev = x.shape[0], x.device
        centre = torch.randint(0, 32, (b, 2), generator=gen).to(dev)
        ar = torch.arange(32, device=dev)
        half = self.cutout // 2
        rin = ((ar[None] >= centre[:, :1] - half) & (ar[None] < centre[:, :1] - half + self.cutout))
        cin = ((ar[None] >= centre[:, 1:] - half) & (ar[None] < centre[:, 1:] - half + self.cutout))
        keep = ~(rin[:, :, None] & cin[:, None, :])
        return x * keep[:, None].to(x.dtype)

    def batches(self, epoch: int, batch_size: int, train: bool, shard: tuple[int, int] = (0, 1),
                drop_last: bool | None = None):
        """Yield ``(x, y)``; ``x`` normalized float (channels_last if set), ``y`` int64."""
        drop_last = train if drop_last is None else drop_last
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self)
        order = torch.randperm(n, generator=gen).to(self.labels.device) if train else None
        rank, world = shard
        for i in range(self.num_batches(batch_size, drop_last)):
            sl = slice(i * batch_size, min((i + 1) * batch_size, n))
            idx = order[sl] if order is not None else torch.arange(sl.start, sl.stop, device=self.labels.device)
            x = self.images[idx]
            if train:
                x = self._augment(x, gen)
            x = normalize(x, self.mean, self.std)
            if train and self.cutout:
                x = self._cutout(x, gen)
            y = self.labels[idx]
            if world > 1:
                x, y = x[rank::world], y[rank::world]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
