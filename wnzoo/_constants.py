"""Dataset constants shared by the data pipeline and the models' pretrained cfgs (one place only)."""
from __future__ import annotations

# Per-channel mean / std of the training images, pixels scaled to [0, 1].
# CIFAR-10 values are recomputed from the canonical arrays (../shared/data/cifar10/README.md); the
# authors' code used std (0.2023, 0.1994, 0.2010), a widely copied mistake, and CIFAR-10 stats for
# CIFAR-100 too. We use the true per-dataset statistics.
DATASET_STATS: dict[str, dict] = {
    "cifar10": dict(
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), num_classes=10,
        hf_id="uoft-cs/cifar10", image_key="img", label_key="label",
    ),
    "cifar100": dict(
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), num_classes=100,
        hf_id="uoft-cs/cifar100", image_key="img", label_key="fine_label",
    ),
}

# pretrained tag -> dataset
TAG_DATASET = {"c10": "cifar10", "c100": "cifar100"}

PAPER_CITATION = """@inproceedings{arpit2019initialize,
  title     = {How to Initialize your Network? Robust Initialization for WeightNorm \\& ResNets},
  author    = {Arpit, Devansh and Campos, V{\\'\\i}ctor and Bengio, Yoshua},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {32},
  pages     = {10902--10911},
  year      = {2019},
  eprint    = {1906.02341},
}"""
