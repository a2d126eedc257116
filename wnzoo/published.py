"""What has been published: one typed record per ``arch.tag``, read from ``wnzoo/published.json``.

``hub/publish.py`` writes the file (:mod:`wnzoo.publish`); weight loading (:mod:`wnzoo.hub`), the
reproduction table (:mod:`wnzoo.evaluation`) and the cards (:mod:`wnzoo.model_card`) read it, all
through :func:`variants`, as timm reads its ``PretrainedCfg`` and torchvision its ``Weights``.

The release copies beside it (``hub/<arch>.<tag>/``) change with it as one transaction
(:class:`ReleaseDir`): saving the records is the commit, and whoever touches ``hub/`` next (a
publish, a load of pretrained weights) finishes or undoes a publish that was interrupted. A publish
changes the copies of the variant and of its twin (whose card names the variant's accuracy).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ._io import WEIGHTS_FILE, atomic_write, write_json

__all__ = ["PublishedVariant", "HubFolder", "ReleaseDir", "PUBLISHED_JSON", "STATUS_START", "STATUS_END",
           "variants", "get", "load", "save", "with_status", "write_cards"]

_log = logging.getLogger(__name__)

PUBLISHED_JSON = Path(__file__).with_name("published.json")
STATUS_START, STATUS_END = "<!-- status: generated from wnzoo/published.json -->", "<!-- /status -->"


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
        """The record ``d`` describes; a ``ValueError`` says what is missing or of the wrong type."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        why = _invalid(d, fields)
        if why:
            raise ValueError(f"a published record {why}")
        return cls(**{k: v for k, v in d.items() if k in fields},
                   extra={k: v for k, v in d.items() if k not in fields})


_FIELD_TYPES = typing.get_type_hints(PublishedVariant)


def _invalid(d: Any, fields: dict[str, dataclasses.Field]) -> str | None:
    """What makes ``d`` no record (a field missing, or of a type other than its annotation's), if anything."""
    if not isinstance(d, dict):
        return f"is {d!r}, not an object"
    missing = [k for k, f in fields.items() if k not in d and f.default is dataclasses.MISSING]
    if missing:
        return f"lacks {missing}"
    wrong = [f"{k}={d[k]!r}" for k in fields if k in d and not _has_type(d[k], _FIELD_TYPES[k])]
    if not wrong and not isinstance(d["metrics"].get("top1"), (int, float)):
        wrong = [f"metrics={d['metrics']!r} (no top1)"]
    return f"has values of the wrong type: {', '.join(wrong)}" if wrong else None


def _has_type(value: Any, hint: Any) -> bool:
    """``isinstance`` for a field's annotation (``str | None``, ``dict[str, float]``); a bool is no int here."""
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = tuple(typing.get_origin(k) or k for k in kinds)
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def load(path: str | Path = PUBLISHED_JSON) -> dict[str, PublishedVariant]:
    """``arch.tag`` → record of every variant listed in ``path`` (none if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return {name: PublishedVariant.from_dict(d) for name, d in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError) as e:  # JSON errors are ValueErrors; a list has no items()
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


def with_status(readme: Path, status: str) -> str:
    """The text of ``readme`` with ``status`` between its status markers."""
    text = readme.read_text()
    head, start, rest = text.partition(STATUS_START)
    _, end, tail = rest.partition(STATUS_END)
    if not start or not end:
        raise ValueError(f"{readme} lacks the lines {STATUS_START} and {STATUS_END} that hold the zoo's status; "
                         f"put them back")
    return f"{head}{STATUS_START}\n{status}\n{STATUS_END}{tail}"


def write_cards(card: Path, text: str, status: str) -> None:
    """Write the zoo's card ``text`` to ``card`` and ``status`` into the ``README.md`` beside it, if there is one."""
    atomic_write(card, lambda p: Path(p).write_text(text))
    readme = card.with_name("README.md")
    if readme.is_file():
        new = with_status(readme, status)
        atomic_write(readme, lambda p: Path(p).write_text(new))


# The journal's fields (see ReleaseDir): paths are relative to the release dir, so a moved checkout still recovers.
# ``new`` is the published record, ``also`` those of other copies that change with it (a twin's regenerated card).
_JOURNAL_KEYS = {"name": str, "new": dict, "published_json": str, "card": str, "card_text": str, "status": str}
_JOURNAL_OPTIONAL = {"also": list}  # absent from the journals of earlier versions, which changed one copy


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk, so that no crash keeps a later step but loses it."""
    if path.is_dir() and os.name != "posix":  # Windows cannot open a folder
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReleaseDir:
    """The release copies ``<arch>.<tag>/`` (``hub/``), and what a publish in progress keeps beside them.

    A publish (under :attr:`LOCK`, for its whole last phase) stages each new copy as ``.<name>.new``
    (its variant's, and its twin's with a regenerated card), writes :attr:`JOURNAL` (their records,
    the records file it commits to and the cards that follow), commits by saving the records file,
    then rolls forward: each old copy goes aside to ``.<name>.old``, the new one takes its place, the
    old ones and the journal are deleted, the cards rewritten. So the records file decides: if it
    holds the journal's records the publish happened, and :meth:`recover` finishes it, else it did
    not, and :meth:`recover` deletes the staged copies. Until then a loader that cannot recover finds
    the valid copy with :meth:`folder`.
    """

    JOURNAL, LOCK = ".publish-journal.json", ".publish.lock"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def new(self, name: str) -> Path:
        return self.path / f".{name}.new"

    def old(self, name: str) -> Path:
        return self.path / f".{name}.old"

    def lock(self, timeout: float) -> FileLock:
        return FileLock(str(self.path / self.LOCK), timeout=timeout)

    def leftovers(self) -> list[Path]:
        """What an interrupted publish may have left: its journal (and the journal's temporary file), copies."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name == self.JOURNAL or p.name.startswith(f".{self.JOURNAL}.")
                      or (p.name.startswith(".") and p.name.endswith((".new", ".old"))))

    def journal(self) -> dict[str, Any] | None:
        """The journal of an interrupted (or running) publish, if there is one, checked."""
        path = self.path / self.JOURNAL
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # none, or another process finished it just now
            return None
        try:
            journal = json.loads(raw)
            wrong = [k for k, t in _JOURNAL_KEYS.items() if not isinstance(journal, dict) or
                     not isinstance(journal.get(k), t)]
            wrong += [k for k, t in _JOURNAL_OPTIONAL.items() if isinstance(journal, dict) and k in journal
                      and not isinstance(journal[k], t)]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} missing or of the wrong type")
            name = PublishedVariant.from_dict(journal["new"]).name
            if journal["name"] != name:
                raise ValueError(f"the name {journal['name']!r} is not its record's {name!r}")
            names = [rec.name for rec in self.records(journal)]
            bad = [n for n in names if Path(n).name != n or n.startswith(".")]
            if bad or len(set(names)) < len(names):
                raise ValueError(f"its names {names} are not those of distinct release copies")
        except ValueError as e:
            raise ValueError(f"{path} is damaged ({e}), so the publish it was recording cannot be finished: delete "
                             f"it and the .*.new/.*.old folders beside it, restore the release copies (git checkout "
                             f"-- {self.path.name}/) and publish again") from None
        return journal

    @staticmethod
    def records(journal: dict[str, Any]) -> list[PublishedVariant]:
        """The records of the copies a journal's publish changes: the published one first."""
        return [PublishedVariant.from_dict(d) for d in (journal["new"], *journal.get("also", []))]

    def begin(self, journal: dict[str, Any], stages: dict[str, Path], skip: tuple[str, ...] = ()) -> None:
        """Copy the files of each ``stages[name]`` to ``.<name>.new`` (those of the published variant but
        ``skip``: weights too large to keep) and write ``journal`` (fsynced, all)."""
        for name, stage in stages.items():
            new = self.new(name)
            new.mkdir()
            for p in sorted(stage.iterdir()):
                if name != journal["name"] or p.name not in skip:
                    shutil.copyfile(p, new / p.name)
                    _fsync(new / p.name)
            _fsync(new)
        write_json(self.path / self.JOURNAL, journal)
        _fsync(self.path)

    def committed(self, journal: dict[str, Any]) -> bool:
        """Whether the journal's records are the published ones: the fate of its publish."""
        records = load(self.path / journal["published_json"])
        return all(records.get(rec.name) == rec for rec in self.records(journal))

    def roll_forward(self, journal: dict[str, Any]) -> None:
        """The steps after the commit; each one is skipped if done, so this finishes from any point."""
        _fsync((self.path / journal["published_json"]).parent)  # the commit on disk before an old copy moves
        for name in (rec.name for rec in self.records(journal)):
            dst, new, old = self.path / name, self.new(name), self.old(name)
            if new.is_dir():
                if dst.exists():
                    if old.exists():  # an earlier wnzoo's, kept by recover(): the new record is in place now
                        shutil.rmtree(old)
                    dst.rename(old)
                new.rename(dst)
                _fsync(self.path)
            if old.exists():
                shutil.rmtree(old)
        write_cards(self.path / journal["card"], journal["card_text"], journal["status"])
        (self.path / self.JOURNAL).unlink()
        _fsync(self.path)

    def recover(self) -> None:
        """Finish or undo an interrupted publish, and delete what it left; the caller holds the lock."""
        journal = self.journal()
        if journal is not None:
            if self.committed(journal):
                self.roll_forward(journal)
            else:
                for rec in self.records(journal):
                    shutil.rmtree(self.new(rec.name), ignore_errors=True)
                (self.path / self.JOURNAL).unlink()
        for p in self.leftovers():  # copies staged before a journal was written, a journal's temporary file
            if not p.name.endswith(".old"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            elif not (self.path / p.name[1:-len(".old")]).exists():  # an earlier wnzoo's, its only copy: put back
                p.rename(self.path / p.name[1:-len(".old")])
        variants.cache_clear()

    def try_recover(self) -> None:
        """:meth:`recover`, as a loader does it: not while a publish holds the lock, nor where nothing can be
        written; then :meth:`folder` finds the copy the records pin."""
        if not self.leftovers():
            return
        self.journal()  # a damaged one is an error here too
        try:
            with self.lock(timeout=0):
                self.recover()
        except (Timeout, OSError, ValueError) as e:
            _log.info("%s: a publish is running or was interrupted, and cannot be finished here (%s)", self.path, e)
        variants.cache_clear()

    def folder(self, name: str, rec: PublishedVariant | None) -> Path:
        """The release copy of ``name`` that ``rec`` (the current record) pins: its staged copy while a
        committed publish is not rolled forward, else ``<name>/``."""
        journal = self.journal()
        new = self.new(name)
        if journal is not None and new.is_dir() and rec in self.records(journal):
            return new
        return self.path / name
