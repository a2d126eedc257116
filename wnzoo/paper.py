"""The paper the zoo implements: its identity, its citation and its Table 1, kept as data.

Arpit, Campos & Bengio, *How to Initialize your Network? Robust Initialization for WeightNorm &
ResNets* (NeurIPS 2019). The cards, the models' pretrained cfgs and ``eval/cifar.py --paper`` read
these facts from here, and ``eval/hessian.py``, ``eval/depth_sweep.py`` and ``eval/lr_robustness.py``
its Table 2 and Figure 3.
"""
from __future__ import annotations

from dataclasses import dataclass

from ._datasets import DATASETS

__all__ = ["TITLE", "AUTHORS", "VENUE", "SHORT", "ARXIV_ID", "URL", "CITATION", "PaperRow", "PAPER_TABLE1",
           "paper_row", "coverage", "ROBUSTNESS_SCHEMES", "PAPER_HESSIAN", "PAPER_DEPTH", "PAPER_DIVERGENCE"]

AUTHORS = "Arpit, Campos & Bengio"
VENUE = "NeurIPS 2019"
SHORT = "Arpit et al. (2019)"
TITLE = "How to Initialize your Network? Robust Initialization for WeightNorm & ResNets"
ARXIV_ID = "1906.02341"
URL = f"https://arxiv.org/abs/{ARXIV_ID}"
CITATION = """@inproceedings{arpit2019initialize,
  title     = {How to Initialize your Network? Robust Initialization for WeightNorm \\& ResNets},
  author    = {Arpit, Devansh and Campos, V{\\'\\i}ctor and Bengio, Yoshua},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {32},
  pages     = {10902--10911},
  year      = {2019},
  eprint    = {1906.02341},
}"""


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 1 (test error %, mean ± std over seeds where given) and the zoo
    variant whose recipe it corresponds to (``None``: no zoo checkpoint follows that method)."""

    dataset: str
    architecture: str
    method: str
    error: float
    std: float | None
    variant: str | None

    @property
    def top1(self) -> float:
        return round(100.0 - self.error, 2)

    @property
    def top1_text(self) -> str:
        """Top-1 % as the paper would print it: ``92.80 ± 0.12``, or ``93.03`` without a std."""
        return _with_std(self.top1, self.std)

    @property
    def error_text(self) -> str:
        return _with_std(self.error, self.std)


def _with_std(value: float, std: float | None) -> str:
    return f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "")


# Table 1, verbatim. Zoo WN checkpoints follow "proposed init + warmup" (+ cutout where the paper
# used it), BN twins the BN rows. The paper's ResNet-56/110 BN numbers are quoted from He et al.
# (post-activation, option-A shortcuts), a slightly different network from our twin.
PAPER_TABLE1: tuple[PaperRow, ...] = (
    PaperRow("cifar10", "ResNet-56", "WN w/ datadep init", 9.19, 0.24, None),
    PaperRow("cifar10", "ResNet-56", "WN w/ proposed init", 7.87, 0.14, None),
    PaperRow("cifar10", "ResNet-56", "WN w/ proposed init + warmup", 7.20, 0.12, "wn_resnet56.c10"),
    PaperRow("cifar10", "ResNet-56", "BN (He et al.)", 6.97, None, "bn_resnet56.c10"),
    PaperRow("cifar10", "ResNet-110", "WN w/ datadep init", 9.33, 0.10, None),
    PaperRow("cifar10", "ResNet-110", "WN w/ proposed init", 7.71, 0.14, None),
    PaperRow("cifar10", "ResNet-110", "WN w/ proposed init + warmup", 6.69, 0.11, "wn_resnet110.c10"),
    PaperRow("cifar10", "ResNet-110", "WN (Shang et al.)", 7.46, None, None),
    PaperRow("cifar10", "ResNet-110", "BN (He et al.)", 6.61, 0.16, "bn_resnet110.c10"),
    PaperRow("cifar10", "WRN-40-10", "WN w/ datadep init + cutout", 6.10, 0.23, None),
    PaperRow("cifar10", "WRN-40-10", "WN w/ proposed init + cutout", 4.74, 0.14, None),
    PaperRow("cifar10", "WRN-40-10", "WN w/ proposed init + cutout + warmup", 4.75, 0.08, "wn_wrn40_10.c10"),
    PaperRow("cifar10", "WRN-40-10", "BN w/ orthogonal init + cutout", 3.53, 0.38, "bn_wrn40_10.c10"),
    PaperRow("cifar100", "ResNet-164", "WN w/ datadep init + cutout", 30.26, 0.51, None),
    PaperRow("cifar100", "ResNet-164", "WN w/ proposed init + cutout", 27.30, 0.49, None),
    PaperRow("cifar100", "ResNet-164", "WN w/ proposed init + cutout + warmup", 25.31, 0.26, "wn_resnet164.c100"),
    PaperRow("cifar100", "ResNet-164", "BN w/ orthogonal init + cutout", 25.52, 0.17, "bn_resnet164.c100"),
)


def paper_row(variant: str) -> PaperRow | None:
    """The Table 1 row a zoo variant (``arch.tag``) reproduces, if the paper has one."""
    return next((r for r in PAPER_TABLE1 if r.variant == variant), None)


def coverage() -> str:
    """What Table 1 reports, in words: ``ResNet-56, ResNet-110 and WRN-40-10 on CIFAR-10 and …``."""
    archs: dict[str, dict[str, None]] = {}
    for r in PAPER_TABLE1:
        archs.setdefault(r.dataset, {})[r.architecture] = None
    return " and ".join(f"{_listing(list(a))} on {DATASETS[ds].display}" for ds, a in archs.items())


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# The init schemes of Table 2 and Figure 3, in the paper's column order, with the paper's names. Figure 3
# uses orthogonal v for all four (docs/paper.md §1.3); Table 2 does not say, so it is compared the same way.
ROBUSTNESS_SCHEMES = {"default_orthogonal": "PyTorch default (orth.)", "datadep": "data-dependent",
                      "hanin": "stage-wise Hanin", "proposed": "proposed"}

# Table 2: log spectral norm of the loss Hessian at init, (mean, std) per scheme; None: not reported.
PAPER_HESSIAN = {
    "wn_wrn40_10": dict(dataset="cifar10", label="WRN-40-10, CIFAR-10", default_orthogonal=(4.68, 0.60),
                        datadep=(3.01, 0.02), hanin=(7.14, 0.72), proposed=(1.31, 0.12)),
    "wn_resnet164": dict(dataset="cifar100", label="ResNet-164, CIFAR-100", default_orthogonal=(9.56, 0.54),
                         datadep=(2.68, 0.09), hanin=None, proposed=(1.56, 0.18)),
}

# Figure 3, left: test accuracy of WN WRNs after one epoch, by number of layers (read off the poster, ±0.02).
PAPER_DEPTH = {10: dict(datadep=0.43, default_orthogonal=0.38, proposed=0.38, hanin=0.37),
               100: dict(datadep=0.44, default_orthogonal=0.04, proposed=0.38, hanin=0.36),
               1000: dict(datadep=0.33, default_orthogonal=0.00, proposed=0.38, hanin=0.35),
               10000: dict(datadep=0.16, default_orthogonal=0.00, proposed=0.34, hanin=0.31)}

# Figure 3, right: % of WN WRN-40-10 runs (20 seeds) that reach epoch 3, by (lr, warmup) (read off the poster, ±5 %).
PAPER_DIVERGENCE = {
    (0.001, False): dict(datadep=100, proposed=100, hanin=100, default_orthogonal=0),
    (0.005, False): dict(datadep=0, proposed=100, hanin=95, default_orthogonal=0),
    (0.01, False): dict(datadep=0, proposed=100, hanin=0, default_orthogonal=0),
    (0.05, False): dict(datadep=0, proposed=80, hanin=0, default_orthogonal=0),
    (0.1, False): dict(datadep=0, proposed=0, hanin=0, default_orthogonal=0),
    (0.001, True): dict(datadep=100, proposed=100, hanin=100, default_orthogonal=100),
    (0.005, True): dict(datadep=100, proposed=100, hanin=100, default_orthogonal=100),
    (0.01, True): dict(datadep=95, proposed=100, hanin=95, default_orthogonal=100),
    (0.05, True): dict(datadep=15, proposed=100, hanin=85, default_orthogonal=80),
    (0.1, True): dict(datadep=5, proposed=90, hanin=60, default_orthogonal=20),
}
