"""wnzoo.data: every source format gives the same arrays, detection is automatic, errors say the fix.

Each format is synthesized in tmp_path exactly as its producer lays it out (the Hub's parquet repo,
torchvision's pickled batches, npz), from the same random content.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import wnzoo.data
from wnzoo.data import DataError, HubUnreachable, detect_source, load_split
from wnzoo.hub import hub_unreachable

N_TRAIN, N_TEST = 25, 10


def synth(dataset: str, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n_classes = 10 if dataset == "cifar10" else 100
    return {split: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, n_classes, n))
            for split, n in (("train", N_TRAIN), ("test", N_TEST))}


def write_npz(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in data.items():
        np.savez(folder / f"{split}.npz", images=x, labels=y.astype(np.uint8))
    return folder


def write_torchvision(root, dataset, data):
    """torchvision's extracted archive: dicts with bytes keys, 'data' (N, 3072) uint8 CHW-flattened."""
    folder = root / ("cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    label_key = b"labels" if dataset == "cifar10" else b"fine_labels"

    def dump(name, x, y):
        batch = {b"batch_label": b"synthetic", b"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072),
                 label_key: [int(v) for v in y], b"filenames": [b"%d.png" % i for i in range(len(x))]}
        if dataset == "cifar100":
            batch[b"coarse_labels"] = [int(v) // 5 for v in y]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    (x, y), (xt, yt) = data["train"], data["test"]
    if dataset == "cifar10":
        for i, idx in enumerate(np.array_split(np.arange(len(x)), 5)):
            dump(f"data_batch_{i + 1}", x[idx], y[idx])
        dump("test_batch", xt, yt)
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    else:
        dump("train", x, y)
        dump("test", xt, yt)
        (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c%d" % i for i in range(100)]}))
    return folder


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def hub_table(dataset, x, y) -> pa.Table:
    """The Hub's schema: 'img' struct {bytes: PNG, path}, then the label column(s)."""
    img = pa.array([{"bytes": png(a), "path": None} for a in x],
                   type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    if dataset == "cifar10":
        return pa.table({"img": img, "label": pa.array(y, pa.int64())})
    return pa.table({"img": img, "fine_label": pa.array(y, pa.int64()), "coarse_label": pa.array(y // 5, pa.int64())})


def write_hub_repo(root, dataset, data, shards: int = 2):
    """A local copy of uoft-cs/cifar10 (``plain_text/``) or uoft-cs/cifar100 (``cifar100/``)."""
    sub = root / ("plain_text" if dataset == "cifar10" else "cifar100")
    sub.mkdir(parents=True)
    (root / "README.md").write_text("---\ndataset_info: synthetic\n---\n")
    for split, (x, y) in data.items():
        parts = np.array_split(np.arange(len(x)), shards)
        for k, idx in enumerate(parts):
            pq.write_table(hub_table(dataset, x[idx], y[idx]), sub / f"{split}-{k:05d}-of-{len(parts):05d}.parquet")
    return root


FORMATS = ["npz", "torchvision", "torchvision_parent", "parquet", "parquet_converted", "dataset_subfolder"]


def make_source(kind, tmp_path, dataset, data):
    if kind == "npz":
        return write_npz(tmp_path / "npz", data)
    if kind == "torchvision":
        return write_torchvision(tmp_path, dataset, data)
    if kind == "torchvision_parent":
        write_torchvision(tmp_path / "tv", dataset, data)
        return tmp_path / "tv"
    if kind == "parquet":
        return write_hub_repo(tmp_path / "repo", dataset, data)
    if kind == "parquet_converted":  # the Hub's refs/convert/parquet layout: <config>/<split>/0000.parquet
        for split, (x, y) in data.items():
            (tmp_path / "conv" / "default" / split).mkdir(parents=True)
            pq.write_table(hub_table(dataset, x, y), tmp_path / "conv" / "default" / split / "0000.parquet")
        return tmp_path / "conv"
    if kind == "dataset_subfolder":  # e.g. --data ../shared/data holding cifar10/train.npz
        write_npz(tmp_path / "data" / dataset, data)
        return tmp_path / "data"
    raise AssertionError(kind)


EXPECTED_KIND = {"npz": "npz", "torchvision": "torchvision", "torchvision_parent": "torchvision",
                 "parquet": "parquet", "parquet_converted": "parquet", "dataset_subfolder": "npz"}


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_gives_identical_arrays(kind, dataset, tmp_path):
    data = synth(dataset, seed=1 if dataset == "cifar10" else 2)
    source = make_source(kind, tmp_path, dataset, data)
    assert detect_source(source, dataset)[0] == EXPECTED_KIND[kind]
    for split, (x, y) in data.items():
        images, labels = load_split(str(source), dataset, split)
        assert images.dtype == np.uint8 and images.shape == (len(x), 32, 32, 3) and images.flags.c_contiguous
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, x)
        np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_hub_id_goes_through_datasets(dataset, monkeypatch):
    """An HF id is loaded with ``datasets.load_dataset``; its ``Image`` column decodes to the same arrays."""
    datasets = pytest.importorskip("datasets")
    data = synth(dataset, seed=3)
    label_key = "label" if dataset == "cifar10" else "fine_label"
    calls = []

    def fake_load_dataset(repo_id, split):
        calls.append((repo_id, split))
        x, y = data[split]
        features = datasets.Features({"img": datasets.Image(), label_key: datasets.ClassLabel(num_classes=10 if dataset == "cifar10" else 100)})
        return datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in x], label_key: y.tolist()},
                                          features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(wnzoo.data, "hub_unreachable", lambda *args, **kwargs: None)  # the Hub answers
    monkeypatch.delenv("WNZOO_DATA", raising=False)
    assert detect_source(None, dataset) == ("hub", f"uoft-cs/{dataset}")
    images, labels = load_split(None, dataset, "test")
    assert calls == [(f"uoft-cs/{dataset}", "test")]
    np.testing.assert_array_equal(images, data["test"][0])
    np.testing.assert_array_equal(labels, data["test"][1])


def test_hub_id_without_network_says_use_data(tmp_path):
    """Offline (HF_HUB_OFFLINE, empty cache): a DataError that tells the user about --data, no traceback."""
    pytest.importorskip("datasets")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = ("from wnzoo.data import HubUnreachable, load_split\n"
            "try:\n    load_split('uoft-cs/cifar10', 'cifar10', 'test')\n"
            "except HubUnreachable as e:\n    print('HubUnreachable:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("HubUnreachable: HF_HUB_OFFLINE is set and the datasets cache has no 'test' split of the HF "
                          "dataset 'uoft-cs/cifar10'")
    assert "pass a local folder (--data DIR; to train, --set data=DIR; or set WNZOO_DATA=DIR)" in out
    assert "hf download uoft-cs/cifar10 --repo-type dataset --local-dir DIR" in out


class _NotFound(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # a Hub that answers, with no such repo
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint(monkeypatch):
    """Point huggingface_hub at ``url`` (as HF_ENDPOINT does when it is imported), online."""
    import huggingface_hub.constants as c

    def set_endpoint(url: str) -> None:
        monkeypatch.setattr(c, "ENDPOINT", url)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)

    monkeypatch.delenv("WNZOO_DATA", raising=False)
    return set_endpoint


def test_a_hub_that_does_not_answer_fails_at_once(endpoint, tmp_path, monkeypatch, capsys):
    """No retries (23 s of waiting per request): one request, then one line that says to pass --data; the data
    default of training is the same code path."""
    import huggingface_hub.constants as c

    from wnzoo.training.cli import main as train

    endpoint("http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(HubUnreachable, match=r"^the HF dataset 'uoft-cs/cifar10' cannot be loaded: the Hub at "
                                             r"http://127.0.0.1:9 cannot be reached \(ConnectError: .*\); pass a local "
                                             r"folder \(--data DIR; to train, --set data=DIR; or set WNZOO_DATA=DIR\)"):
        load_split(None, "cifar10", "test")
    assert time.monotonic() - start < 15
    recipe = Path(__file__).resolve().parent.parent / "configs" / "wn_resnet20_c10_short.yaml"
    assert train(["-c", str(recipe), "--set", "data=null", "--out", str(tmp_path / "run"),
                  "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the HF dataset 'uoft-cs/cifar10' cannot be loaded") and len(err.splitlines()) == 1
    assert time.monotonic() - start < 30, "two commands, each asking the Hub once"

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert hub_unreachable("uoft-cs/cifar10", "README.md", repo_type="dataset") == "HF_HUB_OFFLINE is set"


def test_a_hub_that_answers_is_left_to_say_what_is_wrong(endpoint):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint(f"http://127.0.0.1:{server.server_address[1]}")
        assert hub_unreachable("uoft-cs/cifar10", "README.md", repo_type="dataset") is None
    finally:
        server.shutdown()
        server.server_close()


def test_hub_id_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as on the GPU machine: import fails
    monkeypatch.setattr(wnzoo.data, "hub_unreachable", lambda *args, **kwargs: None)  # the Hub answers
    with pytest.raises(DataError, match=r"needs the `datasets` package \(pip install datasets\); or pass a local folder \(--data DIR"):
        load_split("uoft-cs/cifar10", "cifar10", "test")


# ---- error paths: each names the problem and the fix ----------------------------------------------

def test_unknown_path(tmp_path):
    with pytest.raises(DataError, match=r"data path .*/no/such/folder does not exist; pass a local folder \(--data DIR"):
        load_split(tmp_path / "no" / "such" / "folder", "cifar10", "test")


def test_path_is_a_file(tmp_path):
    write_npz(tmp_path, synth("cifar10"))
    with pytest.raises(DataError, match=r"test\.npz is a file; pass the folder that holds it"):
        load_split(tmp_path / "test.npz", "cifar10", "test")


def test_unrecognised_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"holds no cifar10 data that wnzoo recognises; pass a local folder \(--data DIR"):
        load_split(tmp_path, "cifar10", "test")


def test_unknown_dataset_and_split(tmp_path):
    write_npz(tmp_path, synth("cifar10"))
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'; choose one of \['cifar10', 'cifar100'\]"):
        load_split(tmp_path, "mnist", "test")
    with pytest.raises(DataError, match=r"unknown split 'val'; choose 'train' or 'test'"):
        load_split(tmp_path, "cifar10", "val")


def test_wrong_dtype_and_shape(tmp_path):
    x, y = synth("cifar10")["test"]
    np.savez(tmp_path / "test.npz", images=x.astype(np.float32), labels=y)
    with pytest.raises(DataError, match=r"images must be uint8 of shape \(N, 32, 32, 3\) \(NHWC\), got float32"):
        load_split(tmp_path, "cifar10", "test")
    np.savez(tmp_path / "test.npz", images=x.transpose(0, 3, 1, 2), labels=y)
    with pytest.raises(DataError, match=r"got uint8 \(10, 3, 32, 32\); convert with"):
        load_split(tmp_path, "cifar10", "test")


def test_torchvision_wrong_shape(tmp_path):
    folder = write_torchvision(tmp_path, "cifar10", synth("cifar10"))
    batch = {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"'data' must be uint8 \(N, 3072\) \(CHW-flattened 32×32 RGB\), got uint8 \(4, 1024\)"):
        load_split(tmp_path, "cifar10", "test")


def test_parquet_wrong_image_size(tmp_path):
    sub = tmp_path / "plain_text"
    sub.mkdir()
    img = pa.array([{"bytes": png(np.zeros((28, 28, 3), np.uint8)), "path": None}],
                   type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": img, "label": pa.array([0], pa.int64())}), sub / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"image 0 is 28×28, expected 32×32; is this a CIFAR dataset\?"):
        load_split(tmp_path, "cifar10", "test")


def test_wrong_number_of_classes(tmp_path):
    x, y = synth("cifar10")["test"]
    np.savez(tmp_path / "test.npz", images=x, labels=y + 10)  # labels 10..19 are not CIFAR-10
    with pytest.raises(DataError, match=r"labels span \[1\d, 1\d\] but cifar10 has 10 classes; is this the right dataset"):
        load_split(tmp_path, "cifar10", "test")
    # A full-size CIFAR-10 split read as CIFAR-100: labels fit, but 90 classes never occur.
    n = 1000
    np.savez(tmp_path / "test.npz", images=np.zeros((n, 32, 32, 3), np.uint8), labels=np.arange(n) % 10)
    with pytest.raises(DataError, match=r"only 10 of cifar100's 100 classes occur in 1000 labels"):
        load_split(tmp_path, "cifar100", "test")


def test_dataset_mismatch_is_named(tmp_path):
    write_hub_repo(tmp_path / "c100", "cifar100", synth("cifar100"))
    with pytest.raises(DataError, match=r"lack 'img' and 'label' that cifar10 needs; it looks like cifar100: pass --dataset cifar100"):
        load_split(tmp_path / "c100", "cifar10", "test")
    write_torchvision(tmp_path / "tv", "cifar100", synth("cifar100"))
    with pytest.raises(DataError, match=r"holds torchvision's cifar-100-python \(cifar100\), not cifar10's cifar-10-batches-py"):
        load_split(tmp_path / "tv", "cifar10", "test")


def test_missing_split(tmp_path):
    data = synth("cifar10")
    np.savez(tmp_path / "train.npz", images=data["train"][0], labels=data["train"][1])
    with pytest.raises(DataError, match=r"has no test\.npz; a npz data folder needs train\.npz and test\.npz"):
        load_split(tmp_path, "cifar10", "test")

    repo = write_hub_repo(tmp_path / "repo", "cifar10", {"train": data["train"]})
    with pytest.raises(DataError, match=r"has no parquet file of the 'test' split \(looked for test-\*\.parquet"):
        load_split(repo, "cifar10", "test")

    tv = write_torchvision(tmp_path / "tv", "cifar10", data)
    (tv / "test_batch").unlink()
    with pytest.raises(DataError, match=r"has no test_batch \(test split of cifar-10-batches-py\); re-extract"):
        load_split(tmp_path / "tv", "cifar10", "test")


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


def test_foreign_pickle_is_refused_not_run(tmp_path):
    """A batch file carrying a callable is rejected before anything runs."""
    folder = write_torchvision(tmp_path, "cifar10", synth("cifar10"))
    target = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(str(target)), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch is not a cifar-10-batches-py batch file \(UnpicklingError: global posix\.mkdir"):
        load_split(tmp_path, "cifar10", "test")
    assert not target.exists()


# ---- the real CIFAR-10 -----------------------------------------------------------------------------

def test_real_cifar10_test_split(cifar10_dir):
    images, labels = load_split(cifar10_dir, "cifar10", "test")
    assert images.shape == (10_000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    assert labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # the data README's spot check, in the original CHW order: test[0]'s red channel starts 158,159,165
    assert images[0, 0, :3, 0].tolist() == [158, 159, 165]


def test_without_a_source_the_folder_in_wnzoo_data_is_read(tmp_path, monkeypatch):
    data = synth("cifar10")
    write_npz(tmp_path / "cifar10", data)
    monkeypatch.setenv("WNZOO_DATA", str(tmp_path))  # a folder holding cifar10/, as a user keeps it
    assert detect_source(None, "cifar10") == ("npz", tmp_path / "cifar10")
    assert np.array_equal(load_split(None, "cifar10", "test")[1], data["test"][1])
    monkeypatch.delenv("WNZOO_DATA")
    assert detect_source(None, "cifar10") == ("hub", "uoft-cs/cifar10")


@pytest.mark.parametrize("make,message", [
    (lambda d: np.savez(d / "test.npz", images=np.zeros((10, 32, 32, 3), np.uint8), labels=np.arange(10) + 0.5),
     "labels must be integers"),
    (lambda d: (d / "test.npz").write_bytes(b"PK\x03\x04 a truncated zip"), "is not a readable npz file"),
])
def test_damaged_or_float_npz_is_refused_not_truncated(tmp_path, make, message):
    make(tmp_path)
    (tmp_path / "train.npz").write_bytes(b"")
    with pytest.raises(DataError, match=message):
        load_split(tmp_path, "cifar10", "test")
