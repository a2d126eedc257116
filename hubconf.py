"""torch.hub entry points: ``torch.hub.load('<owner>/wnzoo', 'wn_resnet110', pretrained=True)``."""
dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

from wnzoo import create_model as _create_model, list_models as _list_models  # noqa: E402


def _entrypoint(name: str):
    def entry(pretrained: bool = False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"wnzoo {name} (see wnzoo.create_model for the keyword arguments)."
    return entry


for _name in _list_models():
    globals()[_name] = _entrypoint(_name)
