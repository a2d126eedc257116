"""ONNX export of the fused published models, run by onnxruntime (TorchScript, torch.fx and torch.export
of every model are checked in ``test_timm_interface.py``)."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import wnzoo
from wnzoo import published
from wnzoo.evaluation import evaluate, load_test_data

PUBLISHED = ["wn_resnet20.c10", "bn_resnet20.c10"]


def _fused(name: str) -> nn.Module:
    return wnzoo.fuse(wnzoo.create_model(name, pretrained=True))


class _OnnxModel(nn.Module):
    """An onnxruntime session behind ``nn.Module``, so the zoo's own evaluation runs it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.session.get_inputs()[0].name: np.ascontiguousarray(x.numpy())}
        return torch.from_numpy(self.session.run(None, feed)[0])


def _onnx(model: nn.Module, path: str) -> _OnnxModel:
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), path, dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    return _OnnxModel(path)


@pytest.mark.parametrize("name", PUBLISHED)
def test_onnx_of_the_fused_model_runs_in_onnxruntime(name, tmp_path):
    fused = _fused(name)
    onnx, x = _onnx(fused, str(tmp_path / "model.onnx")), torch.randn(9, 3, 32, 32)
    assert torch.allclose(onnx(x), fused(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_onnx_of_the_fused_model_keeps_top1_on_the_real_test_set(name, cifar10_dir, tmp_path):
    """The card's number to the image, as the fused model itself gives it (test_hub.py checks that)."""
    onnx = evaluate(_onnx(_fused(name), str(tmp_path / "model.onnx")), load_test_data(cifar10_dir, "cifar10"))
    assert onnx["n"] == 10_000 and round(onnx["top1"], 2) == published.get(name).top1
