"""Training curves as one PNG: loss, accuracy and learning rate per epoch."""
from __future__ import annotations

from pathlib import Path

from .._io import atomic_write

__all__ = ["plot_curves"]


def plot_curves(history: list[dict], path: str | Path, title: str) -> None:
    """Loss, accuracy and learning rate of ``history`` (one row per epoch) in ``path``, under ``title``:
    a run's figure and a Hub folder's are read apart from their folders, so each says what it shows."""
    if not title:
        raise ValueError("a training-curves figure needs a title that names its run")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(ep, [r["train_loss"] for r in history], label="train")
    acc_keys = [k for k in ("val_acc", "test_acc") if any(k in r for r in history)]
    for k in acc_keys:
        split = k.split("_")[0]
        loss_k = f"{split}_loss"
        pts = [(r["epoch"], r[loss_k]) for r in history if loss_k in r]
        ax[0].plot(*zip(*pts), label=split)
    ax[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax[1].plot(ep, [r["train_acc"] for r in history], label="train (augmented)")
    for k in acc_keys:
        pts = [(r["epoch"], r[k]) for r in history if k in r]
        ax[1].plot(*zip(*pts), label=k.split("_")[0])
        last = pts[-1]
        ax[1].annotate(f"{last[1]:.2f}%", last, textcoords="offset points", xytext=(-30, -14))
    ax[1].set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    ax[2].plot(ep, [r["lr"] for r in history])
    ax[2].set(xlabel="epoch", ylabel="lr (end of epoch)", title="learning rate")
    for a in ax[:2]:
        a.legend()
        a.grid(alpha=0.3)
    ax[2].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png", metadata={"Title": title}))
    plt.close(fig)
