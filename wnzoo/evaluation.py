"""Accuracy of a model on a test set (the reproduction table builds on this)."""
from __future__ import annotations

import torch
from torch import nn

from .data import DeviceData

__all__ = ["predict", "evaluate"]


@torch.inference_mode()
def predict(model: nn.Module, data: DeviceData, batch_size: int = 500, progress: bool = False,
            autocast: bool = False) -> torch.Tensor:
    """Logits (float32, on the data's device) for every image of ``data``, in order."""
    model.eval()
    out = []
    batches = data.batches(0, batch_size, train=False)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, total=data.num_batches(batch_size, False), desc="eval", unit="batch")
    dev_type = data.labels.device.type
    for x, _ in batches:
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=autocast and dev_type == "cuda"):
            out.append(model(x).float())
    return torch.cat(out)


def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 500, **kwargs) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over ``data``."""
    logits = predict(model, data, batch_size, **kwargs)
    y = data.labels
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return dict(top1=100.0 * (top5[:, 0] == y).float().mean().item(),
                top5=100.0 * (top5 == y[:, None]).any(1).float().mean().item(),
                loss=nn.functional.cross_entropy(logits, y).item(), n=len(y))
