"""timm's generic model checks (its ``tests/test_models.py``), run on one model of each code path.

The zoo's names differ only in the family (WN or BN) and the graph: a ResNet (6n+2) has a stem and a
final BN in its BN twin and no projection in its first stage, a WideResNet (6n+4) neither norm and a
projection there. Every check runs on ResNet-20 of each family in the default suite and WRN-16-4 of
each family under ``slow``; the other names, deeper or wider copies of those graphs, are each built
and run on one image under ``slow`` (every name's parameter count is in test_models.py). Where timm's
check reads ``first_conv + '.weight'`` from the state dict, a WN stem has ``g`` and ``v`` instead;
the check here is on the module's weight, which both families have.
"""
import math
import re
from pathlib import Path

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import wnzoo
from tests.test_layers import _randomize_bn
from tests.test_models import ALL_NAMES

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script's deprecation notice

FAST = ["wn_resnet20", "bn_resnet20"]
WIDE = ["wn_wrn16_4", "bn_wrn16_4"]
NAMES = FAST + [pytest.param(n, marks=pytest.mark.slow) for n in WIDE]
OTHERS = [pytest.param(n, marks=pytest.mark.slow) for n in ALL_NAMES if n not in FAST + WIDE]


def _x(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32)


def _fx(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's ``_create_fx_model``: a torchvision feature extractor returning the model's outputs."""
    kw = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
              param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    train_return = [train_nodes[-1]]
    if train:
        graph_nodes = list(reversed(NodePathTracer(**kw).trace(model).nodes))
        names = [n.name for n in graph_nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in graph_nodes[0]._input_nodes]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=kw)


def _cat(out) -> torch.Tensor:
    return torch.cat(tuple(out.values())) if isinstance(out, dict) else out


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_grad_checkpointing(name):
    model = timm.create_model(name).eval()
    x = _x()
    out = model(x)
    assert out.shape == (1, 10) and not out.isnan().any()
    model.set_grad_checkpointing()
    assert torch.allclose(model(x), out, rtol=1e-4, atol=1e-5)

    model = timm.create_model(name, num_classes=42).train()
    out = model(_x(2))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_default_cfgs(name):
    model = timm.create_model(name).eval()
    cfg, sd = model.default_cfg, model.state_dict()
    assert model.num_classes > 0 and model.num_features > 0 and model.head_hidden_size > 0
    x = _x()
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape[1:] == (model.num_features, *cfg["pool_size"])
    assert pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape
    model.reset_classifier(0, "")
    assert model(x).shape == feats.shape
    model = timm.create_model(name, num_classes=0, global_pool="").eval()
    assert model(x).shape == feats.shape
    assert cfg["classifier"] + ".weight" in sd
    stem = model.get_submodule(cfg["first_conv"])
    assert stem.weight.shape[1] == cfg["input_size"][0]


@pytest.mark.parametrize("mode", ["list", "getter", "fx"])
@pytest.mark.parametrize("name", NAMES)
def test_features_only(name, mode):
    model = timm.create_model(name, features_only=True, feature_cls=mode).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == 4 and reductions == [1, 1, 2, 4]
    outs = model(_x())
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape == (1, c, math.ceil(32 / r), math.ceil(32 / r)) and not o.isnan().any()


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name, monkeypatch):
    model = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = _x()
    final, inter = model.forward_intermediates(x)
    assert [o.shape[1] for o in inter] == info.channels()
    assert [32 // o.shape[-1] for o in inter] == info.reduction()
    assert torch.allclose(final, model.forward_features(x))
    model.set_grad_checkpointing()
    calls = []
    with monkeypatch.context() as m:  # every block's forward runs under torch's checkpoint
        m.setattr(torch.utils.checkpoint, "checkpoint", lambda fn, *a, **kw: calls.append(fn) or fn(*a))
        assert torch.allclose(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)
    assert len(calls) == sum(1 for _ in model.residual_blocks())


@pytest.mark.parametrize("name", NAMES)
def test_script_trace_and_export_unfused_and_fused(name):
    """TorchScript, torch.fx and torch.export (dynamic batch) compute what the model does."""
    with timm.set_scriptable(True):
        model = timm.create_model(name).eval()
    x, y = _x(2), _x(3)
    batch = ({0: torch.export.Dim("batch")},)
    for m in (model, wnzoo.fuse(model)):
        with torch.no_grad():
            want = m(x)
            assert torch.equal(torch.jit.script(m)(x), want)
            assert torch.equal(torch.fx.symbolic_trace(m)(x), want)
            exported = torch.export.export(m, (x,), dynamic_shapes=batch).module()
            assert torch.allclose(exported(x), want, rtol=1e-5, atol=1e-5)
            assert torch.allclose(exported(y), m(y), rtol=1e-5, atol=1e-5)  # another batch size, same program


@pytest.mark.parametrize("name", NAMES)
def test_fx_forward_backward_and_torchscript(name):
    model = timm.create_model(name).eval()
    x = _x()
    with torch.inference_mode():
        out = model(x)
        fx_out = _cat(_fx(model)(x))
    assert torch.equal(fx_out, out)

    model = timm.create_model(name, num_classes=42).train()
    fx = _fx(model, train=True)
    outs = _cat(fx(_x(2)))
    outs.mean().backward()
    assert outs.shape[-1] == 42 and all(p.grad is not None for p in fx.parameters())

    with timm.set_scriptable(True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(_fx(model))
    with torch.inference_mode():
        assert torch.allclose(_cat(scripted(x)), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", OTHERS)
def test_every_other_model_builds_and_runs_one_image(name):
    model = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        final, inter = model.forward_intermediates(_x())
        out = model.forward_head(final)
    assert out.shape == (1, 10) and not out.isnan().any()
    assert [o.shape[1:] for o in inter] == [(c, 32 // r, 32 // r) for c, r in zip(info.channels(), info.reduction())]


# ---- pretrained loading through timm's builder ------------------------------------------------------
PUBLISHED = ["wn_resnet20.c10", "bn_resnet20.c10"]  # the release copies in hub/: no network needed


def _save(state: dict, path: Path) -> dict:
    from safetensors.torch import save_file

    save_file(state, path)
    return dict(pretrained_cfg_overlay=dict(file=str(path)))


def _check_in_chans_and_num_classes(name: str, whole_model: bool, **kw) -> None:
    """timm sums the stem over its input channels: a 1-channel image gives what its 3-channel copy
    gives. Checked on the stem's output, and on the whole model's where it is numerically stable
    (trained weights; a deep net at random init amplifies rounding to 1e23)."""
    ref = timm.create_model(name, pretrained=True, **kw).eval()
    gray = torch.rand(2, 1, 32, 32)
    feats = timm.create_model(name, pretrained=True, in_chans=1, num_classes=0, **kw).eval()
    assert torch.allclose(feats.stem(gray), ref.stem(gray.expand(-1, 3, -1, -1)), atol=1e-5)
    if whole_model:
        want = ref.forward_head(ref.forward_features(gray.expand(-1, 3, -1, -1)), pre_logits=True)
        assert torch.allclose(feats(gray), want, atol=1e-5)
    head = timm.create_model(name, pretrained=True, in_chans=1, num_classes=5, **kw).eval()
    assert head(gray).shape == (2, 5)
    body = {k: v for k, v in head.state_dict().items() if not k.startswith(("fc.", "stem."))}
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in body.items())


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_weights_with_in_chans_and_num_classes(name):
    _check_in_chans_and_num_classes(name, whole_model=True)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_file_with_in_chans_and_num_classes(name, tmp_path):
    kw = _save(timm.create_model(name).state_dict(), tmp_path / "model.safetensors")
    _check_in_chans_and_num_classes(name, whole_model=False, **kw)


@pytest.mark.parametrize("mode", ["list", "getter", "fx"])
@pytest.mark.parametrize("name", PUBLISHED)
def test_features_only_pretrained_match_the_model(name, mode):
    ref = timm.create_model(name, pretrained=True).eval()
    model = timm.create_model(name, pretrained=True, features_only=True, feature_cls=mode).eval()
    x = _x(2)
    _, inter = ref.forward_intermediates(x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model(x), inter))
    assert model.pretrained_cfg["tag"] == "c10" and "num_classes" not in model.pretrained_cfg
    # the verified file handed to timm's loader is not left in any cfg (the getter wraps the model whole)
    assert all("file" not in m.pretrained_cfg for m in model.modules() if hasattr(m, "pretrained_cfg"))


def test_pretrained_that_does_not_fit_is_a_clear_error(tmp_path):
    state = timm.create_model("wn_resnet20").state_dict()
    partial = _save({k: v for k, v in state.items() if not k.startswith("stages.2.2.")}, tmp_path / "a.safetensors")
    with pytest.raises(wnzoo.hub.WeightsError, match=r"does not fit wn_resnet20: missing \['stages\.2\.2\.conv1\.bias"):
        wnzoo.create_model("wn_resnet20", pretrained=True, num_classes=5, **partial)
    # timm loads non-strictly for a new head or features_only: a file without its stem is still refused
    bn = timm.create_model("bn_resnet20").state_dict()
    no_stem = _save({k: v for k, v in bn.items() if k != "stem.weight"}, tmp_path / "b.safetensors")
    for kw in (dict(num_classes=5), dict(features_only=True), {}):
        with pytest.raises(wnzoo.hub.WeightsError, match=r"missing \['stem\.weight'\]"):
            wnzoo.create_model("bn_resnet20", pretrained=True, **kw, **no_stem)
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(wnzoo.hub.WeightsError, match="never unpickles"):
        wnzoo.create_model("wn_resnet20", pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(tmp_path / "model.pth")))


def test_legacy_weight_norm_keys_load_through_the_builder(tmp_path):
    """The authors' ``weight_g``/``weight_v`` keys load as pretrained weights, also with a new head and in_chans."""
    model = timm.create_model("wn_resnet20").eval()
    legacy = {}
    for k, v in model.state_dict().items():  # torch.nn.utils.weight_norm's names and gain shape
        layer, _, key = k.rpartition(".")
        if key == "g":
            legacy[f"{layer}.weight_g"] = v.reshape(-1, 1, 1, 1)
        elif key == "v":
            legacy[f"{layer}.weight_v"] = v
        else:
            legacy[k] = v
    kw = _save(legacy, tmp_path / "legacy.safetensors")
    loaded = wnzoo.create_model("wn_resnet20", pretrained=True, **kw).eval()
    x = _x(2)
    assert torch.equal(loaded(x), model(x))
    gray = wnzoo.create_model("wn_resnet20", pretrained=True, in_chans=1, num_classes=3, **kw)
    assert torch.allclose(gray.stem(x[:, :1]), model.stem(x[:, :1].expand(-1, 3, -1, -1)), atol=1e-5)


def test_readme_backbone_example_prints_what_the_readme_says(capsys):
    """The README's "Use as a backbone" code runs and prints exactly the output shown under it."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## Use as a backbone", 1)[1]
    code, printed = re.findall(r"```(?:python|text)\n(.*?)```", section, re.S)[:2]
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize("name", ["wn_resnet20", "bn_resnet20"])
def test_pool_drop_and_pruning_options(name):
    x = _x(2)
    # max pooling: the final BN cannot fold through it, so fuse leaves it and stays exact
    model = timm.create_model(name, global_pool="max").eval()
    _randomize_bn(model)
    if isinstance(model.final_norm, torch.nn.BatchNorm2d):  # negative scales: max does not commute with them
        model.final_norm.weight.data.uniform_(-1.5, 1.5)
    assert torch.allclose(wnzoo.fuse(model)(x), model(x), atol=1e-5)
    # catavgmax concatenates two poolings: the head sees twice the features
    model = timm.create_model(name, global_pool="catavgmax", num_classes=0)
    assert model.head_hidden_size == 128 and model(x).shape == (2, 128)
    with pytest.raises(ValueError, match="global_pool='' .* needs num_classes=0"):
        timm.create_model(name, global_pool="")
    # stochastic depth rises linearly to drop_path_rate over the 9 blocks; dropout before the head
    model = timm.create_model(name, drop_path_rate=0.2, drop_rate=0.5)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for _, b in model.residual_blocks()]
    assert rates == pytest.approx([0.2 * i / 8 for i in range(9)]) and model.drop_rate == 0.5
    assert not torch.equal(model.train()(x), model(x)) and torch.equal(model.eval()(x), model(x))
    # intermediates: the final norm only with norm=True; pruning keeps what the kept indices need
    model = timm.create_model(name).eval()
    final, inter = model.forward_intermediates(x, norm=True)
    assert torch.allclose(inter[-1], final) and torch.allclose(final, model.forward_features(x))
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert len(early) == 1 and torch.equal(early[0], inter[1])
    assert model.prune_intermediate_layers([0, 2]) == [0, 2]
    assert len(model.stages) == 2 and model.num_classes == 0 and isinstance(model.final_norm, torch.nn.Identity)
    assert model.group_matcher(coarse=True)["blocks"] == r"^stages\.(\d+)"
