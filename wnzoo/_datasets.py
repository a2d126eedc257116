"""The datasets the zoo knows: name, pretrained tag, display name, statistics and Hub source.

The one table for these facts; the data pipeline, the models' pretrained cfgs, publishing and the
cards all read it.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetInfo", "DATASETS", "TAG_DATASET"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str                          # wnzoo's name, e.g. the config key ``dataset``
    tag: str                           # the pretrained tag of its variants (``arch.tag``)
    display: str                       # as the cards and tables write it
    mean: tuple[float, float, float]   # per-channel statistics of the training images in [0, 1]
    std: tuple[float, float, float]
    num_classes: int
    hf_id: str                         # the Hub dataset, and the columns that hold images and labels
    image_key: str
    label_key: str


# CIFAR-10 statistics are recomputed from the canonical arrays; the authors' code used std
# (0.2023, 0.1994, 0.2010), a widely copied mistake, and CIFAR-10 statistics for CIFAR-100 too.
# We use the true per-dataset values.
DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("cifar10", "c10", "CIFAR-10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10,
                "uoft-cs/cifar10", "img", "label"),
    DatasetInfo("cifar100", "c100", "CIFAR-100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100,
                "uoft-cs/cifar100", "img", "fine_label"),
)}

TAG_DATASET: dict[str, str] = {d.tag: d.name for d in DATASETS.values()}
