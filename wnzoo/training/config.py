"""Validated training configs: a YAML recipe plus ``--set key=value`` overrides."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from .._datasets import DATASETS
from ..init import SCHEMES
from ..registry import did_you_mean, is_zoo_model, list_models, norm_of

__all__ = ["TrainConfig", "ConfigError", "load_config", "parse_overrides", "COMPILE_MODES", "NON_RECIPE_KEYS"]

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
}

# Keys that do not change what a run trains (where the data lives, which device, how the step runs,
# how often it logs and evaluates): a resumed run may change them, and a published card's
# "reproduce" command leaves them out.
NON_RECIPE_KEYS = ("data", "device", "compile", "log_every", "eval_every", "eval_subset", "notes")


class ConfigError(ValueError):
    """An invalid config; the message names the key and the valid choices."""


@dataclass
class TrainConfig:
    """One training recipe. Every field can be set in YAML or with ``--set key=value``."""

    model: str = "wn_resnet20"
    init: str | None = None            # None: the family default (proposed / orthogonal)
    dataset: str = "cifar10"
    data: str = "../shared/data/cifar10"
    val_split: bool = False            # train on 45k, evaluate on the held-out 5k
    subset: int = 0                    # train on the first N images only (smoke tests); 0 = all
    eval_subset: int = 0               # evaluate on the first N images only; 0 = all
    epochs: int = 182
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    wd_on_gains_biases_bn: bool = True  # the authors decay every parameter
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    warmup_shape: str = "quadratic"
    schedule: str = "step"
    milestones: list = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float = 0.0             # max global grad norm; 0 disables
    ema_decay: float = 0.0             # 0 disables
    cutout: int = 0                    # side of the cutout square in px; 0 disables
    seed: int = 0
    device: str = "auto"
    amp: str = "bf16"                  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True
    compile: str = "none"              # one of COMPILE_MODES; in YAML, true/false mean "default"/"none"
    eval_every: int = 1                # epochs between evaluations (and the last); 0: never (no test split needed)
    log_every: int = 50                # steps between host syncs (progress bar, NaN check)
    notes: str = ""

    def __post_init__(self) -> None:
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not valid; choose one of {list(choices)}")
        for key, (ok, allowed) in _RANGES.items():
            value = getattr(self, key)
            if not (math.isfinite(value) and ok(value)):  # written so that NaN fails every check
                raise ConfigError(f"{key} must be {allowed}, got {value!r}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} exceeds epochs={self.epochs}")
        if not all(0 < m < 1 for m in self.milestones) or sorted(self.milestones) != list(self.milestones):
            raise ConfigError(f"milestones must be increasing fractions of the run in (0, 1), got {self.milestones}")
        if not is_zoo_model(self.model):
            raise ConfigError(f"model={self.model!r} is not a zoo model.{did_you_mean(self.model, list_models(), n=3)}")
        valid = SCHEMES[norm_of(self.model)]
        if self.init is not None and self.init not in valid:
            raise ConfigError(f"init={self.init!r} does not apply to {self.model}; choose one of {sorted(valid)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        valid = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(valid)}")
        if isinstance(d.get("compile"), bool):  # wnzoo 0.1's compile key was a bool
            d = dict(d, compile="default" if d["compile"] else "none")
        out = {}
        for k, v in d.items():
            out[k] = _coerce(k, v, valid[k].default if valid[k].default is not dataclasses.MISSING else [])
        return cls(**out)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a value against the type of the field's default (ints may stand for floats)."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what and where."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``['lr=0.05', 'nesterov=true']`` → ``{'lr': 0.05, 'nesterov': True}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(e)}); quote "
                              f"strings and close brackets, e.g. milestones=[0.5,0.75]") from None
    return out


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> TrainConfig:
    d: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} {what}; pass a recipe YAML such as configs/wn_resnet20_c10.yaml")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML ({_yaml_problem(e)}); fix that line") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {path} ({e}); pass a recipe YAML such as configs/X.yaml") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got {type(d).__name__}")
    d.update(parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {}))
    return TrainConfig.from_dict(d)
