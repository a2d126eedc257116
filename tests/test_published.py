"""The published records (wnzoo.published) and the shared file I/O (wnzoo._io) they are written with."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from wnzoo import _io, published
from wnzoo.published import PublishedVariant


def _record(name: str = "wn_resnet56.c10", **changes) -> PublishedVariant:
    arch, tag = name.split(".")
    rec = PublishedVariant(repo_id=f"wnzoo/{name}", revision="0" * 40, sha256="1" * 64, dataset="cifar10",
                           metrics=dict(top1=92.5, top5=99.7), recipe="configs/x.yaml", params=855_770, arch=arch,
                           tag=tag, epochs=182, size=3_500_000, eval=dict(n=10_000))
    return dataclasses.replace(rec, **changes)


def test_records_round_trip_sorted_and_keep_unknown_keys(tmp_path):
    path = tmp_path / "published.json"
    b, a = _record("wn_resnet56.c10"), _record("bn_resnet56.c10", pushed=True, hub_tag="v1")
    published.save({b.name: b, a.name: a}, path)
    raw = json.loads(path.read_text())
    assert list(raw) == ["bn_resnet56.c10", "wn_resnet56.c10"]
    assert published.load(path) == {a.name: a, b.name: b}
    assert (a.name, a.top1) == ("bn_resnet56.c10", 92.5)
    # a key written by a newer wnzoo survives a load and save by this one
    raw["wn_resnet56.c10"]["calibration"] = {"ece": 0.02}
    path.write_text(json.dumps(raw))
    again = published.load(path)
    assert again["wn_resnet56.c10"].extra == {"calibration": {"ece": 0.02}}
    published.save(again, path)
    assert json.loads(path.read_text())["wn_resnet56.c10"]["calibration"] == {"ece": 0.02}
    assert published.load(tmp_path / "missing.json") == {}


def test_records_are_immutable_compared_whole_and_never_hashed():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _record().revision = "1" * 40
    with pytest.raises(TypeError, match="unhashable"):
        hash(_record())
    assert _record() != _record(extra={"calibration": 0.02})


def test_a_damaged_records_file_names_itself_and_the_fix(tmp_path):
    path = tmp_path / "published.json"
    record = _record().to_dict()
    del record["sha256"]
    path.write_text(json.dumps({"wn_resnet56.c10": record}))
    with pytest.raises(ValueError, match=r"published.json is not a valid .*lacks \['sha256'\].*git checkout"):
        published.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="published.json is not a valid"):
        published.load(path)


@pytest.mark.parametrize("damage", [5, None, [], {"params": "many"}, {"metrics": {"top5": 99.0}},
                                    {"pushed": "yes"}, {"revision": 7}])
def test_a_record_of_the_wrong_shape_is_the_same_one_line_error(damage, tmp_path, monkeypatch):
    """Not a TypeError from inside the loader: that would break ``import wnzoo`` itself."""
    from wnzoo import create_model, hub

    path = tmp_path / "published.json"
    entry = {**_record().to_dict(), **damage} if isinstance(damage, dict) else damage
    path.write_text(json.dumps({"wn_resnet20.c10": entry}))
    with pytest.raises(ValueError, match=r"published.json is not a valid list of published variants \(a published "
                                         r"record (is|has values of the wrong type).*git checkout -- published.json"):
        published.load(path)
    monkeypatch.setattr(published, "PUBLISHED_JSON", path)
    published.variants.cache_clear()
    try:
        with pytest.warns(UserWarning, match="published.json is not a valid .*no pretrained weights are available"):
            assert hub.published_cfg("wn_resnet20.c10") == {}  # what registration (import wnzoo) calls
        with pytest.raises(ValueError, match="published.json is not a valid .*git checkout"):
            create_model("wn_resnet20.c10", pretrained=True)
    finally:
        published.variants.cache_clear()
    path.write_text(json.dumps([entry]))  # not an object of records at all
    with pytest.raises(ValueError, match="published.json is not a valid list of published variants"):
        published.load(path)


def test_the_package_records_are_read_once_and_refreshed_on_save(tmp_path, monkeypatch):
    path = tmp_path / "published.json"
    monkeypatch.setattr(published, "PUBLISHED_JSON", path)
    published.variants.cache_clear()
    try:
        assert published.get("wn_resnet56.c10") is None
        published.save({"wn_resnet56.c10": _record()}, path)  # the package's own file: the cache is refreshed
        assert published.get("wn_resnet56.c10") == _record()
    finally:
        published.variants.cache_clear()


def test_io_weights_path_hash_and_atomic_safetensors(tmp_path):
    tensors = {"w": torch.arange(6.0).view(2, 3)[:, ::2]}  # non-contiguous, as a strided view
    _io.save_safetensors(tmp_path / _io.WEIGHTS_FILE, tensors, {"format": "pt"})
    assert _io.weights_path(tmp_path) == _io.weights_path(tmp_path / _io.WEIGHTS_FILE) == tmp_path / _io.WEIGHTS_FILE
    assert torch.equal(_io.load_weights_file(tmp_path)["w"], tensors["w"])
    assert _io.read_metadata(tmp_path / _io.WEIGHTS_FILE) == {"format": "pt"}
    data = (tmp_path / _io.WEIGHTS_FILE).read_bytes()
    assert _io.sha256_file(tmp_path / _io.WEIGHTS_FILE) == hashlib.sha256(data).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == [_io.WEIGHTS_FILE]  # no temporary file left behind
    with pytest.raises(_io.WeightsError, match="never unpickles"):
        (tmp_path / "model.pt").write_bytes(b"x")
        _io.load_weights_file(tmp_path / "model.pt")


def test_equal_tensors_and_metadata_give_equal_bytes_and_readable_files(tmp_path):
    # safetensors writes metadata in hash order, which differs from one call (and process) to the next
    tensors = {"b": torch.ones(3), "a": torch.arange(4.0)}
    meta = {k: str(i) for i, k in enumerate("fedcba")}
    blobs = set()
    for i in range(6):
        order = dict(reversed(meta.items())) if i % 2 else meta
        _io.save_safetensors(tmp_path / f"{i}.safetensors", tensors, order)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    assert _io.read_metadata(tmp_path / "0.safetensors") == meta
    assert torch.equal(_io.load_weights_file(tmp_path / "0.safetensors")["a"], tensors["a"])


def test_written_files_have_the_usual_permissions(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        _io.write_json(tmp_path / "x.json", {})
        _io.save_safetensors(tmp_path / "x.safetensors", {"w": torch.ones(1)})
    finally:
        os.umask(old)
    for name in ("x.json", "x.safetensors"):  # as open() would create them, not mkstemp's owner-only 0600
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640


def test_a_damaged_records_file_does_not_break_import_only_pretrained(tmp_path, monkeypatch):
    from wnzoo import create_model, hub

    path = tmp_path / "published.json"
    path.write_text("{not json")
    monkeypatch.setattr(published, "PUBLISHED_JSON", path)
    published.variants.cache_clear()
    try:
        with pytest.warns(UserWarning, match="published.json is not a valid .*no pretrained weights are available"):
            assert hub.published_cfg("wn_resnet20.c10") == {}  # what registration (import wnzoo) calls
        create_model("wn_resnet20")
        with pytest.raises(ValueError, match="published.json is not a valid .*git checkout"):
            create_model("wn_resnet20", pretrained=True)
        import importlib.util
        from pathlib import Path
        spec = importlib.util.spec_from_file_location("hubconf_", Path(__file__).parent.parent / "hubconf.py")
        hubconf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hubconf)  # torch.hub.list and .help still work
        assert "no pretrained weights yet" in hubconf.wn_resnet20.__doc__
    finally:
        published.variants.cache_clear()
