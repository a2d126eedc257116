"""Model families; importing this package registers every model with timm's registry."""
from .resnet import CifarResNet, PreActBasicBlock, WNBasicBlock
from . import wide_resnet  # noqa: F401  (registration)

__all__ = ["CifarResNet", "PreActBasicBlock", "WNBasicBlock"]
