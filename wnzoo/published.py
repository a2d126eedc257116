"""What has been published: one typed record per ``arch.tag``, read from ``wnzoo/published.json``.

``hub/publish.py`` writes the file (:mod:`wnzoo.publish`); weight loading (:mod:`wnzoo.hub`), the
reproduction table (:mod:`wnzoo.evaluation`) and the cards (:mod:`wnzoo.model_card`) read it, all
through :func:`variants`, as timm reads its ``PretrainedCfg`` and torchvision its ``Weights``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ._io import WEIGHTS_FILE, write_json

__all__ = ["PublishedVariant", "HubFolder", "PUBLISHED_JSON", "variants", "get", "load", "save"]

PUBLISHED_JSON = Path(__file__).with_name("published.json")


class HubFolder:
    """The files of a published variant's Hub repo (and of its release copy), by name."""

    WEIGHTS = WEIGHTS_FILE
    CONFIG = "config.json"      # timm's schema plus wnzoo's fields
    CARD = "README.md"          # the model card
    RECIPE = "recipe.yaml"      # the resolved training config
    METRICS = "metrics.jsonl"   # one line per epoch
    CURVES = "curves.png"       # optional
    FILES = (WEIGHTS, CONFIG, CARD, RECIPE, METRICS, CURVES)


@dataclass(frozen=True)
class PublishedVariant:
    """One published checkpoint: where it lives, what it hashes to and what it measured."""

    repo_id: str            # Hub repo, ``org/arch.tag``
    revision: str | None    # pinned commit: the Hub's after a push, else the release copy's local commit
    sha256: str             # of ``model.safetensors``; checked on every load, whatever the source
    dataset: str
    metrics: dict[str, float]  # ``top1``, ``top5`` (%) on the full test split, measured at publish time
    recipe: str             # repo-relative config file that trains it
    params: int
    arch: str
    tag: str
    epochs: int
    size: int               # bytes of ``model.safetensors``
    eval: dict[str, Any]    # how ``metrics`` were measured (images, split, device, dtype, torch)
    pushed: bool = False    # on the Hub (else only the release copy ``hub/<arch>.<tag>/`` serves it)
    hub_tag: str | None = None  # the Hub tag (``v1``, ``v2``, …) of the pinned commit
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer wnzoo wrote, kept as they are

    __hash__ = None  # frozen fields, but dict-valued: records are compared, never hashed

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def top1(self) -> float:
        return self.metrics["top1"]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PublishedVariant":
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        missing = [k for k, f in fields.items() if k not in d and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"a published record lacks {missing}")
        known = set(fields)
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known})


def load(path: str | Path = PUBLISHED_JSON) -> dict[str, PublishedVariant]:
    """``arch.tag`` → record of every variant listed in ``path`` (none if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return {name: PublishedVariant.from_dict(d) for name, d in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError) as e:  # JSON errors are ValueErrors
        raise ValueError(f"{path} is not a valid list of published variants ({e}); restore it from the wnzoo "
                         f"repository (git checkout -- {path.name})") from e


@lru_cache(maxsize=None)
def variants() -> dict[str, PublishedVariant]:
    """The records of :data:`PUBLISHED_JSON`, read once; ``variants.cache_clear()`` after it changes.

    Looked up again when weights are loaded, so a record written after the models were registered
    (a new release, a test) is honoured at once.
    """
    return load(PUBLISHED_JSON)


def get(name: str) -> PublishedVariant | None:
    """The record of ``arch.tag``, if it was published."""
    return variants().get(name)


def by_repo(repo_id: str) -> PublishedVariant | None:
    """The record published as Hub repo ``repo_id`` (``org/name``), if any."""
    return next((rec for rec in variants().values() if rec.repo_id == repo_id), None)


def save(records: dict[str, PublishedVariant], path: str | Path = PUBLISHED_JSON) -> None:
    """Write ``records`` (sorted by name) to ``path``; refreshes :func:`variants` if that is the package's file."""
    write_json(path, {name: records[name].to_dict() for name in sorted(records)})
    if Path(path).resolve() == PUBLISHED_JSON.resolve():
        variants.cache_clear()
