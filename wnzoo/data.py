"""CIFAR-10/100 from the sources users have, and a device-resident training/eval pipeline.

``load_split(source, dataset, split)`` returns ``(images uint8 NHWC, labels int64)`` numpy arrays
from whatever ``source`` is, detected by :func:`detect_source`:

* an HF dataset id (default ``uoft-cs/cifar10`` / ``uoft-cs/cifar100``), through ``datasets``;
* a local copy of such a dataset repo (parquet files as on the Hub, read with pyarrow);
* torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` folder, or the folder above it;
* a folder with ``train.npz`` / ``test.npz`` (arrays ``images`` uint8 NHWC and ``labels``);
* a folder holding one of those in a ``cifar10`` / ``cifar100`` subfolder (``data/``).

Without a source, the folder in ``$WNZOO_DATA`` is read if it is set, else the HF dataset id. A
Hub that cannot be reached fails in seconds (:class:`HubUnreachable`), not after the download
retries of ``datasets``; ``HF_HUB_OFFLINE=1`` reads the ``datasets`` cache only.

``DeviceData`` keeps those uint8 arrays on the training device and batches, augments (crop with
4-px zero padding, horizontal flip, optional cutout) and normalizes there, so no DataLoader worker
or host-to-device copy sits on the hot path. Its randomness derives from ``(seed, epoch)`` only,
so an epoch is reproducible from the seed alone, which is what makes resume exact.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import constants

from ._datasets import DATASETS
from .hub import hub_unreachable

DATA_ENV = "WNZOO_DATA"  # a data folder used when no source is given

__all__ = ["DATA_ENV", "load_split", "detect_source", "DeviceData", "DataError", "HubUnreachable", "DATASETS",
           "train_val_indices", "normalize", "fingerprint"]

# torchvision's extracted folder per dataset: its name, batch files per split, metadata file, label key
_TORCHVISION = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key="labels"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta", label_key="fine_labels"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _local_hint(dataset: str) -> str:
    stats, tv = DATASETS[dataset], _TORCHVISION[dataset]["folder"]
    return (f"pass a local folder (--data DIR; to train, --set data=DIR; or set {DATA_ENV}=DIR): a copy of the dataset repo (on a machine with network: "
            f"`hf download {stats.hf_id} --repo-type dataset --local-dir DIR`), torchvision's {tv} "
            f"folder, or a folder with train.npz/test.npz (arrays 'images' (N,32,32,3) uint8 and 'labels')")


class DataError(ValueError):
    """A data source that cannot be used; the message names the problem and the fix."""


class HubUnreachable(DataError):
    """The HF Hub source of every dataset is out of reach (no network, or offline mode and nothing
    cached): a fault of the source, not of one dataset, so callers stop at once."""


def _check_arrays(images: np.ndarray, labels: np.ndarray, dataset: str, origin: str) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{origin}: images must be uint8 of shape (N, 32, 32, 3) (NHWC), got {images.dtype} "
                        f"{images.shape}; convert with np.asarray(imgs, dtype=np.uint8).reshape(-1, 32, 32, 3)")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):  # a cast would truncate 2.7 to 2 without a word
        raise DataError(f"{origin}: labels must be integers (class indices), got {labels.dtype}; "
                        f"convert them with labels.astype(np.int64) if they are whole numbers")
    labels = labels.astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"{origin}: {len(images)} images but {len(labels)} labels")
    if not len(images):  # nothing to train on or to measure: an accuracy of 0 images is no number
        raise DataError(f"{origin} holds no images; write the split again, or pass a data folder with the whole "
                        f"dataset")
    n = DATASETS[dataset].num_classes
    if labels.min() < 0 or labels.max() >= n:
        raise DataError(f"{origin}: labels span [{labels.min()}, {labels.max()}] but {dataset} has {n} classes; "
                        f"is this the right dataset (--dataset cifar10 / cifar100)?")
    # A full-size split holds every class; fewer means another dataset (CIFAR-10 data read as CIFAR-100).
    seen = len(np.unique(labels))
    if len(labels) >= 10 * n and seen != n:
        raise DataError(f"{origin}: only {seen} of {dataset}'s {n} classes occur in {len(labels)} labels; "
                        f"is this the right dataset (--dataset cifar10 / cifar100)?")
    return images, labels


def _load_npz(folder: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = folder / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{folder} has no {split}.npz; a npz data folder needs train.npz and test.npz "
                        f"with arrays 'images' (N,32,32,3) uint8 and 'labels' (N,)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files if k in ("images", "labels")}
            names = f.files
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable npz file ({type(e).__name__}: {e}); it is truncated or "
                        f"corrupted: write or copy it again") from e
    missing = {"images", "labels"} - set(arrays)
    if missing:
        raise DataError(f"{path} lacks array(s) {sorted(missing)}; it has {names}")
    return _check_arrays(arrays["images"], arrays["labels"], dataset, str(path))


class _BatchUnpickler(pickle.Unpickler):
    """Rebuilds only what CIFAR batch files hold (dicts, lists, bytes, numpy arrays); any other
    global, e.g. a callable smuggled into a foreign pickle, is refused."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not part of a CIFAR batch file")
        return super().find_class(module, name)


def _load_torchvision(folder: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's folders hold pickles (the dataset authors' format), read here only from the
    user's own disk and with an unpickler that rebuilds nothing but arrays and containers."""
    spec = _TORCHVISION[dataset]
    images, labels = [], []
    for name in spec[split]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder} has no {name} ({split} split of {spec['folder']}); re-extract the "
                            f"archive (torchvision.datasets.{'CIFAR10' if dataset == 'cifar10' else 'CIFAR100'}"
                            f"(root, download=True) writes it)")
        try:
            with open(path, "rb") as f:
                batch = _BatchUnpickler(f, encoding="bytes").load()
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
            data, y = np.asarray(batch["data"]), batch[spec["label_key"]]
        except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError, ValueError) as e:
            raise DataError(f"{path} is not a {spec['folder']} batch file ({type(e).__name__}: {e}); "
                            f"re-extract the archive from the CIFAR website or torchvision") from e
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: 'data' must be uint8 (N, 3072) (CHW-flattened 32×32 RGB), got {data.dtype} "
                            f"{data.shape}; the file is not from {spec['folder']}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(y))
    return _check_arrays(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), dataset, str(folder))


def _decode_table(table, dataset: str, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (PNG bytes in an HF ``Image`` struct column) and labels from an arrow table."""
    from PIL import Image

    stats = DATASETS[dataset]
    img_key, label_key = stats.image_key, stats.label_key
    names = table.column_names
    if img_key not in names or label_key not in names:
        other = next((d for d, s in DATASETS.items() if d != dataset and s.label_key in names
                      and s.label_key != label_key), None)
        hint = (f"it looks like {other}: pass --dataset {other} (or a {dataset} model)" if other else
                f"use a copy of {stats.hf_id}")
        raise DataError(f"{origin}: columns {names} lack {img_key!r} and {label_key!r} that {dataset} needs; {hint}")
    col = table.column(img_key).combine_chunks()
    if not hasattr(col, "field"):
        raise DataError(f"{origin}: column {img_key!r} is {col.type}, expected an HF Image struct {{bytes, path}}")
    blobs = col.field("bytes").to_pylist()
    images = np.empty((len(blobs), 32, 32, 3), np.uint8)
    for i, blob in enumerate(blobs):
        if blob is None:
            raise DataError(f"{origin}: image {i} has no embedded bytes (only a path); re-download the dataset "
                            f"repo, whose parquet files embed the PNGs")
        try:
            with Image.open(io.BytesIO(blob)) as im:
                kind, arr = im.format, np.asarray(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{origin}: image {i} is not a readable PNG ({type(e).__name__}: {e}); the file is "
                            f"corrupted: download the dataset again") from e
        if kind != "PNG":  # CIFAR is stored losslessly; a JPEG copy would shift every accuracy
            raise DataError(f"{origin}: image {i} is {kind}, not PNG; use a lossless copy of {stats.hf_id}")
        if arr.shape != (32, 32, 3):
            raise DataError(f"{origin}: image {i} is {arr.shape[1]}×{arr.shape[0]}, expected 32×32; "
                            f"is this a CIFAR dataset?")
        images[i] = arr
    return _check_arrays(images, table.column(label_key).to_numpy(), dataset, origin)


def _load_parquet(folder: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Hub layout (``plain_text/test-00000-of-00001.parquet``) or the converter's (``test/0000.parquet``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(p for p in folder.rglob("*.parquet")
                   if p.name.startswith((f"{split}-", f"{split}.")) or p.parent.name == split)
    if not files:
        found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))[:6]
        raise DataError(f"{folder} has no parquet file of the {split!r} split (looked for {split}-*.parquet and "
                        f"{split}/*.parquet; found {found}); download the whole dataset repo")
    if len({p.parent for p in files}) > 1:
        raise DataError(f"{folder} holds {split} files of several configs ({sorted({str(p.parent) for p in files})});"
                        f" pass the folder of one of them")
    try:
        table = pa.concat_tables([pq.read_table(p) for p in files])
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read the parquet files {[str(p) for p in files]} ({e}); the download is "
                        f"incomplete or corrupted: download the dataset repo again") from e
    return _decode_table(table, dataset, str(files[0].parent / f"{split}-*.parquet"))


def _load_hub(repo_id: str, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Through ``datasets`` (imported here: training machines may not have it), from its cache or the Hub."""
    offline = constants.HF_HUB_OFFLINE  # then the datasets cache is read, with no request
    unreachable = None if offline else hub_unreachable(repo_id, "README.md", repo_type="dataset")
    if unreachable:  # datasets would retry each of its requests five times
        raise HubUnreachable(f"the HF dataset {repo_id!r} cannot be loaded: the Hub at {unreachable}; "
                             f"{_local_hint(dataset)}. With a copy in the datasets cache, set HF_HUB_OFFLINE=1")
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"loading the HF dataset {repo_id!r} needs the `datasets` package (pip install datasets); "
                        f"or {_local_hint(dataset)}") from e
    try:
        ds = datasets.load_dataset(repo_id, split=split)
    except Exception as e:  # offline and not cached, unknown repo or split: all end in the same advice
        reason = f"{type(e).__name__}: {next(iter(str(e).splitlines()), '')}"
        if offline:
            raise HubUnreachable(f"HF_HUB_OFFLINE is set and the datasets cache has no {split!r} split of the HF "
                                 f"dataset {repo_id!r} ({reason}); {_local_hint(dataset)}") from e
        raise DataError(f"could not load the {split!r} split of the HF dataset {repo_id!r} ({reason}; there is no "
                        f"local folder of that name either); {_local_hint(dataset)}") from e
    return _decode_table(ds.with_format("arrow")[:], dataset, f"{repo_id} ({split})")


def _torchvision_dir(folder: Path, dataset: str) -> Path | None:
    spec = _TORCHVISION[dataset]
    for d in (folder, folder / spec["folder"]):  # the folder itself, renamed or not, or its parent
        if d.is_dir() and (d.name == spec["folder"] or ((d / spec["meta"]).is_file() and
                                                        (d / spec["test"][0]).is_file())):
            return d
    return None


def _detect_local(folder: Path, dataset: str) -> tuple[str, Path]:
    for d in (folder / dataset, folder):  # a subfolder named after the dataset wins (``data/cifar10``)
        if not d.is_dir():
            continue
        if (d / "train.npz").is_file() or (d / "test.npz").is_file():
            return "npz", d
        tv = _torchvision_dir(d, dataset)
        if tv is not None:
            return "torchvision", tv
        other = next((o for o in _TORCHVISION if o != dataset and _torchvision_dir(d, o)), None)
        if other:
            raise DataError(f"{d} holds torchvision's {_TORCHVISION[other]['folder']} ({other}), not {dataset}'s "
                            f"{_TORCHVISION[dataset]['folder']}; pass the {dataset} data or --dataset {other}")
        if next(d.rglob("*.parquet"), None) is not None:
            return "parquet", d
    raise DataError(f"{folder} holds no {dataset} data that wnzoo recognises; {_local_hint(dataset)}")


def detect_source(source: str | Path | None, dataset: str = "cifar10") -> tuple[str, str | Path]:
    """``(kind, location)`` of a data source: ``'npz'``, ``'torchvision'`` or ``'parquet'`` with the
    folder to read, or ``'hub'`` with the dataset id (``None`` means ``$WNZOO_DATA``, else
    ``dataset``'s default id)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    if source is None:
        source = os.environ.get(DATA_ENV) or DATASETS[dataset].hf_id
    path = Path(source).expanduser()
    if path.is_file():
        raise DataError(f"data path {path} is a file; pass the folder that holds it")
    if path.is_dir():
        return _detect_local(path, dataset)
    if _HUB_ID.match(str(source)):
        return "hub", str(source)
    raise DataError(f"data path {path} does not exist; {_local_hint(dataset)}, or an HF dataset id such as "
                    f"{DATASETS[dataset].hf_id}")


_LOADERS = {"npz": _load_npz, "torchvision": _load_torchvision, "parquet": _load_parquet, "hub": _load_hub}


def load_split(source: str | Path | None = None, dataset: str = "cifar10",
               split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load one split (``'train'`` or ``'test'``) of ``dataset`` from any source (see module docs);
    ``None`` means the default HF dataset id."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    kind, where = detect_source(source, dataset)
    return _LOADERS[kind](where, dataset, split)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a split's arrays: a resumed run checks it trains on the data it started with."""
    h = hashlib.sha256()
    for a in (images, labels.astype(np.int64)):
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def train_val_indices(n: int, val_size: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random train/validation split (45k/5k for CIFAR), the same for every run with ``seed``."""
    if n <= val_size:
        raise DataError(f"a validation split holds out {val_size} images, but the training split has only {n}; "
                        f"drop val_split (and evaluate on the test split)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def normalize(x_uint8_nchw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x_uint8_nchw.float().div_(255) - mean) / std


@dataclass
class DeviceData:
    """A split held on ``device`` as uint8 NCHW, batched and augmented there.

    ``batches(epoch, batch_size)`` yields normalized float batches; with ``train=True`` the order
    is shuffled and the images augmented, all from a generator seeded by ``(seed, epoch)``. With
    ``shard=(rank, world)`` every process draws the same global batch and keeps its slice, so
    several processes see exactly what one process with the global batch would see.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    seed: int = 0
    cutout: int = 0
    channels_last: bool = False

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray, dataset: str, device: torch.device | str = "cpu",
                    **kwargs) -> "DeviceData":
        stats = DATASETS[dataset]
        dev = torch.device(device)
        return cls(images=torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2).contiguous(),
                   labels=torch.from_numpy(labels).to(dev),
                   mean=torch.tensor(stats.mean, device=dev).view(1, 3, 1, 1),
                   std=torch.tensor(stats.std, device=dev).view(1, 3, 1, 1), **kwargs)

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def epoch_randomness(self, epoch: int) -> dict[str, torch.Tensor]:
        """Every random draw of a training epoch, made at its start and moved to the device then.

        Drawing per step would cost a host-to-device copy, and with it a stream sync, every step.
        The draws come from a CPU generator seeded by ``(seed, epoch)`` (1_000_003 is a prime above
        any epoch count, so no two pairs share a seed), so an epoch is the same on every device and
        after any resume. Keys: ``order`` (a permutation), ``offset`` (crop corner in the padded
        image, 0..8 per axis), ``flip`` and, with cutout, ``centre`` (pixel of the square's centre).
        """
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self)
        draws = dict(order=torch.randperm(n, generator=gen), offset=torch.randint(0, 9, (n, 2), generator=gen),
                     flip=torch.rand(n, generator=gen) < 0.5)
        if self.cutout:
            draws["centre"] = torch.randint(0, 32, (n, 2), generator=gen)
        dev = self.labels.device
        return {k: v.to(dev, non_blocking=True) for k, v in draws.items()}

    @staticmethod
    def _augment(x: torch.Tensor, offset: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Random 32-px crop of the 4-px zero-padded image, then horizontal flip, as one gather:
        output pixel (r, c) reads padded pixel (off_r + r, off_c + c), or (off_r + r, off_c + 31 - c)
        when flipped."""
        b, dev = x.shape[0], x.device
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        ar = torch.arange(32, device=dev)
        rows = (offset[:, 0:1] + ar)[:, None, :, None]
        cols = torch.where(flip[:, None], offset[:, 1:2] + 31 - ar, offset[:, 1:2] + ar)[:, None, None, :]
        chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        return padded[torch.arange(b, device=dev)[:, None, None, None], chan, rows, cols]

    def _cutout(self, x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Zero a ``cutout``-px square centred at a uniform pixel (clipped), after normalization."""
        ar = torch.arange(32, device=x.device)
        lo = centre - self.cutout // 2
        inside = (ar[None, None] >= lo[:, :, None]) & (ar[None, None] < lo[:, :, None] + self.cutout)
        keep = ~(inside[:, 0, :, None] & inside[:, 1, None, :])
        return x * keep[:, None].to(x.dtype)

    def batches(self, epoch: int, batch_size: int, train: bool, shard: tuple[int, int] = (0, 1),
                drop_last: bool | None = None):
        """Yield ``(x, y)``; ``x`` normalized float (channels_last if set), ``y`` int64.

        With ``train=True`` no step draws randomness or copies from the host: see
        :meth:`epoch_randomness`.
        """
        drop_last = train if drop_last is None else drop_last
        n, dev = len(self), self.labels.device
        draws = self.epoch_randomness(epoch) if train else None
        rank, world = shard
        for i in range(self.num_batches(batch_size, drop_last)):
            sl = slice(i * batch_size, min((i + 1) * batch_size, n))
            idx = draws["order"][sl] if draws is not None else torch.arange(sl.start, sl.stop, device=dev)
            x = self.images[idx]
            if draws is not None:
                x = self._augment(x, draws["offset"][sl], draws["flip"][sl])
            x = normalize(x, self.mean, self.std)
            if draws is not None and self.cutout:
                x = self._cutout(x, draws["centre"][sl])
            y = self.labels[idx]
            if world > 1:
                x, y = x[rank::world], y[rank::world]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
