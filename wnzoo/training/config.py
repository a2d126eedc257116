"""Validated training configs: a YAML recipe plus ``--set key=value`` overrides."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import torch
import yaml

from .._datasets import DATASETS
from ..data import DATA_ENV
from ..init import SCHEMES
from ..registry import did_you_mean, is_zoo_model, list_models, norm_of

__all__ = ["TrainConfig", "ConfigError", "load_config", "parse_overrides", "keys_help", "COMPILE_MODES",
           "NON_RECIPE_KEYS", "PER_RUN_KEYS", "stack_group", "check_stack", "read_yaml", "yaml_problem", "shown",
           "Distributed", "world_from_env"]

# How the training step runs: eagerly, compiled by torch.compile, or compiled and replayed as CUDA
# graphs (``reduce-overhead``: on a GPU, one launch per forward and per backward instead of thousands).
COMPILE_MODES = ("none", "default", "reduce-overhead")

_CHOICES = {
    "dataset": tuple(DATASETS),
    "warmup_shape": ("quadratic", "linear"),
    "schedule": ("step", "cosine", "constant"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("none", "bf16"),
    "compile": COMPILE_MODES,
}


def _at_least(low: float) -> tuple[Callable[[float], bool], str]:
    return (lambda v: v >= low), f">= {low}"


# The largest seed: a run draws each epoch's randomness from a generator seeded by seed * 1_000_003 + epoch,
# which must fit torch's 64 bits; 2**32 - 1 is also the largest seed numpy's legacy generators take.
_SEED_MAX = 2**32 - 1


# The valid range of every numeric key: values outside them diverge, crash mid-run or mean nothing.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "epochs": _at_least(1), "batch_size": _at_least(1), "log_every": _at_least(1),
    "lr": ((lambda v: v > 0), "> 0"),
    "momentum": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "weight_decay": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "warmup_epochs": _at_least(0), "warmup_lr": _at_least(0),
    "gamma": ((lambda v: 0 < v <= 1), "in (0, 1] (the step schedule's lr factor)"),
    "label_smoothing": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "grad_clip": _at_least(0),
    "ema_decay": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "cutout": ((lambda v: 0 <= v <= 32), "in [0, 32] (pixels; CIFAR images are 32 px wide)"),
    "subset": _at_least(0), "eval_subset": _at_least(0), "eval_every": _at_least(0),
    "seed": ((lambda v: 0 <= v <= _SEED_MAX), f"in [0, {_SEED_MAX}]"),
}

# Keys that do not change what a run trains (where the data lives, which device, how the step runs,
# how often it logs and evaluates): a resumed run may change them, and a published card's
# "reproduce" command leaves them out.
NON_RECIPE_KEYS = ("data", "device", "compile", "log_every", "eval_every", "eval_subset", "recipe", "notes")

# Keys that may differ between the runs of one stack (several runs trained as one model,
# wnzoo.training.stack): what makes each a run of its own. Every other key must be the same.
PER_RUN_KEYS = ("seed", "init", "lr", "momentum", "nesterov", "weight_decay", "wd_on_gains_biases_bn",
                "warmup_epochs", "warmup_lr", "warmup_shape", "schedule", "milestones", "gamma", "epochs",
                "label_smoothing", "grad_clip", "cutout", "recipe", "notes")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What ``model_args`` may set (the model class's arguments, less those the model name or the recipe
# sets), and what each takes: a wrong type or range would crash the model's constructor, or the run.
_MODEL_ARG_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "blocks": ((lambda v: _is_int(v) and v >= 1), "an integer >= 1 (blocks per stage)"),
    "widths": ((lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(w) and w >= 1 for w in v)),
               "three channel counts >= 1, e.g. [16, 32, 64]"),
    "stem_width": ((lambda v: _is_int(v) and v >= 1), "an integer >= 1 (channels)"),
    "stem_norm": ((lambda v: isinstance(v, bool)), "true or false"),
    "final_norm": ((lambda v: isinstance(v, bool)), "true or false"),
    "global_pool": ((lambda v: v in ("avg", "max", "avgmax", "catavgmax")), "one of avg, max, avgmax, catavgmax"),
    "drop_rate": ((lambda v: _is_number(v) and 0 <= v < 1), "a number in [0, 1)"),
    "drop_path_rate": ((lambda v: _is_number(v) and 0 <= v < 1), "a number in [0, 1)"),
}
_MODEL_ARGS = frozenset(_MODEL_ARG_CHECKS)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 6, 4


def shown(value: Any, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters, for an error message: a value from YAML may be a
    structure of any size, and its whole repr is never computed."""
    text = _REPR.repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _key(default: Any, help: str) -> Any:
    """A config key: its default, and the one line ``train.py --help`` shows for it."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def keys_help() -> str:
    """Every config key with its default and meaning, for ``train.py --help``."""
    rows = [(f.name, json.dumps(f.default if f.default is not dataclasses.MISSING else f.default_factory()),
             f.metadata["help"]) for f in fields(TrainConfig)]
    width = max(len(n) + len(d) for n, d, _ in rows) + 3
    return "\n".join(f"  {f'{n} ({d})':<{width}} {h}" for n, d, h in rows)


class ConfigError(ValueError):
    """An invalid config; the message names the key and the valid choices."""


@dataclass
class TrainConfig:
    """One training recipe. Every field can be set in YAML or with ``--set key=value``."""

    model: str = _key("wn_resnet20", "zoo architecture (wnzoo.list_models())")
    model_args: dict = _key({}, "arguments of the model class, e.g. {blocks: 166, widths: [16, 32, 64]} (experiments; "
                                "such runs are not published)")
    init: str | None = _key(None, "init scheme (wnzoo.init); null: the family's default (proposed / orthogonal)")
    dataset: str = _key("cifar10", "cifar10 or cifar100")
    data: str | None = _key(None, f"data folder or HF dataset id; null: ${DATA_ENV}, else the dataset's HF id")
    val_split: bool = _key(False, "train on 45k images, evaluate on the 5k held out")
    subset: int = _key(0, "train on the first N images only (quick runs); 0: all")
    eval_subset: int = _key(0, "evaluate on the first N images only; 0: all")
    epochs: int = _key(182, "training epochs")
    batch_size: int = _key(128, "global batch size (split across torchrun processes)")
    lr: float = _key(0.1, "peak learning rate (after warmup)")
    momentum: float = _key(0.9, "SGD momentum")
    nesterov: bool = _key(False, "Nesterov momentum")
    weight_decay: float = _key(1e-4, "L2 weight decay")
    wd_on_gains_biases_bn: bool = _key(True, "decay WN gains, biases and BN affine too (the authors do)")
    warmup_epochs: float = _key(0.0, "epochs of warmup from warmup_lr to lr (may be fractional)")
    warmup_lr: float = _key(0.0, "learning rate at the start of warmup")
    warmup_shape: str = _key("quadratic", "warmup curve: quadratic (the authors') or linear")
    schedule: str = _key("step", "decay after warmup: step, cosine or constant")
    milestones: list = _key([0.5, 0.75], "step schedule: fractions of the epochs where lr is multiplied by gamma")
    gamma: float = _key(0.1, "step schedule: lr factor at each milestone")
    label_smoothing: float = _key(0.0, "label smoothing of the cross-entropy")
    grad_clip: float = _key(0.0, "max global gradient norm; 0: no clipping")
    ema_decay: float = _key(0.0, "decay of an EMA of the weights (evaluated too); 0: none")
    cutout: int = _key(0, "side of the cutout square in pixels; 0: none")
    seed: int = _key(0, "seed of the init and of every epoch's data order and augmentation")
    device: str = _key("auto", "auto, cpu or cuda")
    amp: str = _key("bf16", "bf16 autocast on CUDA (ignored on CPU), or none")
    channels_last: bool = _key(True, "channels_last memory format")
    compile: str = _key("none", "training step: none (eager), default (torch.compile) or reduce-overhead (CUDA graphs)")
    eval_every: int = _key(1, "epochs between evaluations (and after the last); 0: never, no test split needed")
    log_every: int = _key(50, "steps between host syncs (progress bar, NaN check)")
    recipe: str | None = _key(None, "the recipe file the config came from (set by -c; the card cites it)")
    notes: str = _key("", "free text kept with the run")

    def __post_init__(self) -> None:
        """Every key checked, however the config was made (a recipe, ``--set``, ``dataclasses.replace``):
        a value of the wrong type or range would otherwise crash the run, or train something else."""
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _default(f)))
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ConfigError(f"{key}={shown(getattr(self, key))} is not valid; choose one of {list(choices)}"
                                  + (f" (here: {', '.join(_usable_devices())})" if key == "device" else ""))
        for key, (ok, allowed) in _RANGES.items():
            value = getattr(self, key)
            huge = isinstance(value, int) and abs(value) >= 2**63  # fits no tensor, and overflows a float
            if huge or not (math.isfinite(value) and ok(value)):  # written so that NaN fails every check
                extra = " and below 2**63" if huge and ok(value) else ""
                raise ConfigError(f"{key} must be {allowed}{extra}, got {shown(value)}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} exceeds epochs={self.epochs}; set warmup_epochs too "
                              f"(e.g. --set epochs={self.epochs} warmup_epochs={min(self.warmup_epochs, self.epochs)})")
        if not all(_is_number(m) and 0 < m < 1 for m in self.milestones) or sorted(self.milestones) != self.milestones:
            raise ConfigError(f"milestones must be increasing fractions of the run in (0, 1), e.g. [0.5, 0.75], got "
                              f"{shown(self.milestones)}")
        if not is_zoo_model(self.model):
            raise ConfigError(f"model={shown(self.model)} is not a zoo model."
                              f"{did_you_mean(self.model, list_models(), n=3)}")
        bad = sorted(map(shown, set(self.model_args) - _MODEL_ARGS))
        if bad:
            raise ConfigError(f"model_args [{', '.join(bad)}] are not arguments of the zoo's models; use some of "
                              f"{sorted(_MODEL_ARGS)}")
        for name, value in self.model_args.items():
            ok, allowed = _MODEL_ARG_CHECKS[name]
            if not ok(value):
                raise ConfigError(f"model_args {name} must be {allowed}, got {shown(value)}")
        valid = SCHEMES[norm_of(self.model)]
        if self.init is not None and self.init not in valid:
            raise ConfigError(f"init={shown(self.init)} does not apply to {self.model}; choose one of {sorted(valid)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        valid = {f.name for f in fields(cls)}
        unknown = sorted(map(shown, set(d) - valid))
        if unknown:
            listed = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise ConfigError(f"unknown config key(s) [{listed}]; valid keys: {sorted(valid)}")
        if isinstance(d.get("compile"), bool):  # wnzoo 0.1's compile key was a bool
            d = dict(d, compile="default" if d["compile"] else "none")
        return cls(**d)


def stack_group(cfg: TrainConfig) -> str | None:
    """What the runs of one stack share: configs of equal groups can train as one model. ``None``
    for a run that cannot share one (stochastic depth, or a pooling that concatenates features)."""
    args = cfg.model_args
    if args.get("drop_path_rate") or args.get("global_pool", "avg") not in ("avg", "max", "avgmax"):
        return None
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in PER_RUN_KEYS}, sort_keys=True)


def check_stack(cfgs: list[TrainConfig]) -> None:
    """Refuse runs that cannot train as one stacked model, naming the key that differs."""
    if stack_group(cfgs[0]) is None:
        raise ConfigError("runs with drop_path_rate > 0, or a global_pool that concatenates features, cannot share a "
                          "stack; train them one at a time")
    first = cfgs[0].to_dict()
    for cfg in cfgs[1:]:
        diff = [k for k, v in cfg.to_dict().items() if k not in PER_RUN_KEYS and v != first[k]]
        if diff:
            raise ConfigError(f"runs of one stack must share {', '.join(diff)} ({diff[0]}: {shown(first[diff[0]])} vs "
                              f"{shown(getattr(cfg, diff[0]))}); only {', '.join(PER_RUN_KEYS)} may differ. Train them "
                              f"separately")


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a value against the type of the field's default (ints may stand for floats). An empty
    value (``--set lr=``, YAML's null) is null for a key whose default is null (init, data, recipe:
    "the default"), the empty text for notes, and refused for every other key."""
    if value is None:
        if default is None or default == "":
            return default
        example = default if isinstance(default, str) else json.dumps(default)
        raise ConfigError(f"{key} needs a value, e.g. {key}={example}")
    if default is None:  # init, data, recipe: a name or a path
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a text (quote it), got {shown(value)}")
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {shown(value)}")
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {shown(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ConfigError(f"{key} must be a number of a float's range, got {shown(value)}") from None
    elif isinstance(default, int):
        if not _is_int(value):
            raise ConfigError(f"{key} must be an integer, got {shown(value)}")
    elif isinstance(default, (list, dict)):
        if not isinstance(value, type(default)):
            raise ConfigError(f"{key} must be a {type(default).__name__}, got {shown(value)}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {shown(value)}")
    return value


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses, but that wnzoo refuses to read: a key given twice, or an alias."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice (PyYAML silently keeps the last: a recipe would
    train with a value its reader does not see) and aliases (``*a``: nested ones make a few hundred
    bytes expand to gigabytes; a recipe spells its values out)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(problem=f"an alias (*{event.anchor[:40]}) stands for a value given elsewhere",
                           problem_mark=event.start_mark, note="write the value itself in its place")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool, type(None))):
                if key in seen:
                    raise _Refused(problem=f"key {shown(key, 40)} appears twice", problem_mark=key_node.start_mark,
                                   note="keep one of them")
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    """``text`` as YAML, read safely; refuses a key given twice and aliases (:class:`_Refused`)."""
    return yaml.load(text, Loader=_StrictLoader)


def yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what and where."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or shown(str(e))}{where}"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``['lr=0.05', 'nesterov=true']`` → ``{'lr': 0.05, 'nesterov': True}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {shown(item)}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = read_yaml(v)
        except _Refused as e:
            raise ConfigError(f"--set {shown(item)}: {e.problem}; {e.note}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {shown(item)}: the value is not valid YAML ({yaml_problem(e)}); quote "
                              f"strings and close brackets, e.g. milestones=[0.5,0.75]") from None
    return out


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> TrainConfig:
    d: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            what = ("is a folder" if path.is_dir() else "is not a regular file" if path.exists() else
                    "does not exist")
            raise ConfigError(f"config file {path} {what}; pass a recipe YAML such as configs/wn_resnet20_c10.yaml")
        try:
            d = read_yaml(path.read_text())
        except _Refused as e:
            raise ConfigError(f"{path}, line {e.problem_mark.line + 1}: {e.problem}; {e.note}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML ({yaml_problem(e)}); fix that line") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {path} ({e}); pass a recipe YAML such as configs/X.yaml") from None
        if not d:  # all defaults, silently: not what a recipe file is for
            raise ConfigError(f"{path} holds no config keys; a recipe sets at least its model, like "
                              f"configs/wn_resnet20_c10.yaml")
        if not isinstance(d, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got {type(d).__name__}")
        d.setdefault("recipe", str(path))
    d.update(parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {}))
    return TrainConfig.from_dict(d)


def _usable_devices() -> list[str]:
    """The ``device`` values that train on this machine."""
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Distributed(NamedTuple):
    """This process's place in a launch of several (torchrun): its rank, the number of processes, and
    its rank on this machine (its GPU). A plain run is ``(0, 1, 0)``."""

    rank: int
    world: int
    local_rank: int


def world_from_env(env: Mapping[str, str] = os.environ) -> Distributed:
    """The torchrun variables, checked: a stray ``WORLD_SIZE`` (set by hand, or left by another tool)
    would make a plain run wait for processes that never come, or fail on ``int('abc')``."""
    fix = "unset it, or launch with torchrun (which sets WORLD_SIZE, RANK, LOCAL_RANK and MASTER_ADDR/PORT)"

    def read(name: str, default: int, low: int, high: int | None = None) -> int:
        text = env.get(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value >= high):
            where = f"an integer in [{low}, {high})" if high is not None else f"an integer >= {low}"
            raise ConfigError(f"environment variable {name}={shown(text)} is not {where}; {fix}")
        return value

    if "WORLD_SIZE" not in env:
        return Distributed(0, 1, read("LOCAL_RANK", 0, 0))
    world = read("WORLD_SIZE", 1, 1)
    if world > 1:
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise ConfigError(f"environment variable WORLD_SIZE={world} is set, but not {', '.join(missing)}: it "
                              f"was not set by torchrun; {fix}")
    return Distributed(read("RANK", 0, 0, world), world, read("LOCAL_RANK", 0, 0, world))
