"""torch.hub entry points, one per wnzoo architecture, for a clone of this repository:
``torch.hub.load('path/to/wnzoo', NAME, source='local', pretrained=True)``.

``pretrained=True`` works for the names with published weights (``wnzoo.list_models(pretrained=True)``;
each entry's docstring says whether it has them); every name builds with the paper's init.
"""
dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

from timm.models import get_pretrained_cfg as _get_pretrained_cfg  # noqa: E402

from wnzoo import create_model as _create_model, list_models as _list_models, published as _published  # noqa: E402


def _entrypoint(name: str):
    def entry(pretrained: bool = False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    try:
        rec = _published.get(f"{name}.{_get_pretrained_cfg(name).tag}")  # the variant pretrained=True loads
    except ValueError:  # a damaged published.json: pretrained=True says so, listing the entries must not fail
        rec = None
    weights = (f"pretrained weights: {rec.name}, {rec.top1:.2f} % top-1 on {rec.dataset} after {rec.epochs} epochs"
               if rec else "no pretrained weights yet (pretrained=True raises an error)")
    entry.__name__ = name
    entry.__doc__ = f"wnzoo {name}; {weights}. Keyword arguments: see wnzoo.create_model."
    return entry


for _name in _list_models():
    globals()[_name] = _entrypoint(_name)
