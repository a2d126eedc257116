"""wnzoo: weight-normalized ResNets for CIFAR, initialized as Arpit, Campos & Bengio (NeurIPS 2019).

``import wnzoo`` registers every model with timm, so ``timm.create_model('wn_resnet110')`` works too.
"""
from . import init
from .layers import WNConv2d, WNLinear, fuse
from .registry import create_model, is_zoo_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "is_zoo_model", "fuse", "init", "WNConv2d", "WNLinear", "__version__"]
