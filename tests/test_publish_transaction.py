"""Publishing as one transaction, and the publish command's early checks and advice.

A publish is interrupted at each write, rename and delete of its last phase in turn (the k-th one raises
KeyboardInterrupt, as Ctrl-C or a scheduler's SIGTERM would); after each interruption the variant loads
with exactly the weights its record pins, the old or the new, both where the loader may finish the
publish and where it may not (another publish holds the lock, a read-only checkout), and the next load
or publish leaves no staged copy, journal or set-aside copy behind. The run is built and verified once
(``dry_run``); the publishes here reuse that folder, so each one takes a fraction of a second.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file
from test_hub import NAME, fake_data, make_run, mp_module  # noqa: F401 (fixtures)

import wnzoo
import wnzoo.publish as publish_mod
from wnzoo import hub, published
from wnzoo._cli import run as run_cli
from wnzoo._io import save_safetensors, sha256_file
from wnzoo.model_card import zoo_card, zoo_status
from wnzoo.publish import STATUS_END, STATUS_START, PublishError, publish, push_folder
from wnzoo.published import ReleaseDir
from wnzoo.registry import twin_name

DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens there
README = f"# zoo\n{STATUS_START}\n{{status}}\n{STATUS_END}\nrest\n"
TWIN = twin_name(NAME)
_REVISIONS: dict[tuple, str] = {}


def pinned_revision(folder: Path, message: str) -> str:
    """``local_revision``, a function of the files: computed once per folder's content."""
    key = (message, *((p.name, sha256_file(p)) for p in sorted(folder.iterdir())))
    if key not in _REVISIONS:
        _REVISIONS[key] = LOCAL_REVISION(folder, message)
    return _REVISIONS[key]


LOCAL_REVISION = publish_mod.local_revision


# fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory, fake_data):  # noqa: F811
    """Two finished runs (other weights) and their verified Hub folders, built once: run → (record, folder)."""
    root = tmp_path_factory.mktemp("built")
    out = {}
    for seed in (0, 5):
        run = make_run(root / f"runs{seed}", fake_data, weights_seed=seed)
        out[run] = publish(run, f"wnzoo/{NAME}", data=fake_data, dry_run=True, out=root / f"folder{seed}",
                           published_json=root / "none.json")  # no twin published
    return out


@pytest.fixture(scope="module")
def built_twin(tmp_path_factory, fake_data):  # noqa: F811
    """A finished run of the twin and its verified Hub folder: (run, record, folder)."""
    root = tmp_path_factory.mktemp("built-twin")
    run = make_run(root / "runs", fake_data, arch="bn_resnet20")
    return run, *publish(run, f"wnzoo/{TWIN}", data=fake_data, dry_run=True, out=root / "folder",
                         published_json=root / "none.json")


@pytest.fixture
def quick(built, built_twin, monkeypatch) -> dict[Path, published.PublishedVariant]:
    """Publishing reuses the built folders instead of building and evaluating again, and a twin's files
    regenerated once; returns run → record."""
    def build(run, repo_id, stage, *args):
        assert stage.parent.name.startswith(f"wnzoo-publish-{os.getpid()}-")  # a killed publish's is found later
        rec, folder = built[run.dir] if run.dir in built else built_twin[1:]
        shutil.copytree(folder, stage)
        return rec

    derived = {}
    write_derived = publish_mod.write_derived

    def regenerate(folder: Path, rec, twin) -> None:  # a function of the folder and the records: computed once
        key = (repr(rec), repr(twin), *((p.name, sha256_file(p)) for p in sorted(folder.iterdir())))
        if key not in derived:
            write_derived(folder, rec, twin)
            derived[key] = {p.name: p.read_bytes() for p in folder.iterdir()}
        for name, data in derived[key].items():
            (folder / name).write_bytes(data)

    monkeypatch.setattr(publish_mod, "_build_and_verify", build)
    monkeypatch.setattr(publish_mod, "local_revision", pinned_revision)
    monkeypatch.setattr(publish_mod, "write_derived", regenerate)
    return {run: rec for run, (rec, _) in built.items()}


@pytest.fixture
def loader(monkeypatch, tmp_path):
    """Point the loader at a zoo's records and release dir (no Hub: offline, empty cache); returns a function
    that loads the variant and returns the sha256 of the weights it loaded (None: not published)."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    def load(paths: dict[str, Path], build: bool = False) -> str | None:
        """``build``: the model too (its orthogonal init takes a while), else only the file it would load."""
        monkeypatch.setattr(published, "PUBLISHED_JSON", paths["published_json"])
        monkeypatch.setattr(hub, "RELEASE_DIR", paths["release_dir"])
        published.variants.cache_clear()
        if published.get(NAME) is None:
            with pytest.raises(hub.WeightsError, match="no published weights yet"):
                hub.resolve_pretrained(NAME)
            return None
        file = hub.resolve_pretrained(NAME)[1]  # what create_model(NAME, pretrained=True) loads
        if build:
            model = wnzoo.create_model(NAME, pretrained=True)
            assert all(torch.equal(model.state_dict()[k], v) for k, v in load_file(str(file)).items())
        return sha256_file(file)

    yield load
    published.variants.cache_clear()


def zoo_paths(root: Path) -> dict[str, Path]:
    """A repository's publishing paths under ``root``, with a README that holds the status markers."""
    (root / "wnzoo").mkdir(parents=True)
    (root / "README.md").write_text(README.format(status="nothing yet"))
    return {"release_dir": root / "hub", "published_json": root / "wnzoo" / "published.json",
            "zoo_card_path": root / "MODEL_CARD.md"}


def leftovers(paths: dict[str, Path]) -> list[str]:
    release_dir = paths["release_dir"]
    return sorted(p.name for p in release_dir.iterdir() if p.name not in (NAME, TWIN, ReleaseDir.LOCK)) if (
        release_dir.is_dir()) else []


def assert_consistent(paths: dict[str, Path]) -> None:
    """Nothing left behind, and the release copies, the cards and the records agree."""
    records = published.load(paths["published_json"])
    assert leftovers(paths) == []
    card = paths["zoo_card_path"]
    if not card.exists():  # never published here
        assert records == {} and README.format(status="nothing yet") == card.with_name("README.md").read_text()
        return
    assert card.read_text() == zoo_card(records)
    assert card.with_name("README.md").read_text() == README.format(status=zoo_status(records))
    if NAME in records:
        publish_mod.verify_folder(paths["release_dir"] / NAME, records[NAME])
    if TWIN in records:  # its card names the variant as the records have it, and its record pins that card
        publish_mod.verify_folder(paths["release_dir"] / TWIN, records[TWIN])
        line = f"{records[NAME].top1:.2f} | wnzoo" if NAME in records else "not published yet"
        assert f"| WN twin `{NAME}` | {line}" in (paths["release_dir"] / TWIN / "README.md").read_text()
        assert pinned_revision(paths["release_dir"] / TWIN, publish_mod.commit_message(records[TWIN])) == (
            records[TWIN].revision)


class Faults:
    """Once armed (a publish's last phase: after its folder is pinned), the k-th write, rename or delete
    raises KeyboardInterrupt."""

    OPS = ((os, "replace"), (os, "rename"), (os, "unlink"), (os, "rmdir"), (os, "mkdir"), (shutil, "copyfile"))

    def __init__(self, monkeypatch) -> None:
        self.k, self.calls, self.armed = 0, 0, False
        for mod, name in self.OPS:
            monkeypatch.setattr(mod, name, self._wrap(getattr(mod, name)))
        pin, last_phase = publish_mod.local_revision, publish_mod._pin_and_record

        def pinned(*args, **kwargs):  # the first pin of a publish (a twin's comes later, in its last phase)
            revision = pin(*args, **kwargs)
            if not self.armed:
                self.calls, self.armed = 0, True
            return revision

        def disarmed(*args, **kwargs):
            try:
                return last_phase(*args, **kwargs)
            finally:
                self.armed = False

        monkeypatch.setattr(publish_mod, "local_revision", pinned)
        monkeypatch.setattr(publish_mod, "_pin_and_record", disarmed)

    def _wrap(self, op):
        def faulty(*args, **kwargs):
            if self.armed:
                self.calls += 1
                if self.calls == self.k:
                    self.armed = False
                    raise KeyboardInterrupt
            return op(*args, **kwargs)
        return faulty


def _read_only(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(args[0]))

    for mod, name in Faults.OPS:
        monkeypatch.setattr(mod, name, refuse)


# the transaction --------------------------------------------------------------------------------------
@pytest.mark.parametrize("replace", [False, True], ids=["first", "replace"])
def test_a_publish_interrupted_at_any_step_loads_the_old_or_the_new_variant(replace, quick, loader, monkeypatch,
                                                                             tmp_path):
    (run_a, _), (run_b, built_b) = quick.items()
    faults = Faults(monkeypatch)
    outcomes = []
    for k in range(1, 100):
        root = tmp_path / f"k{k}"
        paths = zoo_paths(root)
        old = publish(run_a, f"wnzoo/{NAME}", **paths)[0] if replace else None
        faults.k = k
        try:
            new, _ = publish(run_b, f"wnzoo/{NAME}", replace=replace, **paths)
        except KeyboardInterrupt:
            faults.k = 0  # no more faults
        else:
            break
        rec = published.load(paths["published_json"]).get(NAME)  # the old record, or the new one
        assert rec == old or rec.sha256 == built_b.sha256, k
        outcomes.append("old" if rec == old else "new")
        want, left = rec.sha256 if rec else None, leftovers(paths)

        with FileLock(str(paths["release_dir"] / ReleaseDir.LOCK), timeout=0):  # as if the publish still ran
            assert loader(paths) == want, k
        assert leftovers(paths) == left, k  # neither finished nor undone under its feet
        with pytest.MonkeyPatch.context() as mp:  # a read-only checkout
            _read_only(mp)
            assert loader(paths) == want, k
        assert leftovers(paths) == left, k

        again = shutil.copytree(root, tmp_path / f"k{k}-again")
        assert loader(paths, build=k % 4 == 0) == want, k  # this load finishes or undoes the publish
        assert_consistent(paths)
        assert published.load(paths["published_json"]).get(NAME) == rec

        paths = {key: again / p.relative_to(root) for key, p in paths.items()}  # or the next publish does
        assert publish(run_b, f"wnzoo/{NAME}", replace=True, **paths)[0].sha256 == built_b.sha256
        assert loader(paths) == built_b.sha256
        assert_consistent(paths)
    else:
        pytest.fail("the publish never completed")
    assert loader(paths, build=True) == new.sha256 == built_b.sha256
    assert_consistent(paths)
    assert k > 10 and "old" in outcomes and "new" in outcomes, outcomes  # interrupted before and after the commit


def test_a_publish_interrupted_at_any_step_changes_both_twins_or_neither(quick, built_twin, loader, monkeypatch,
                                                                        tmp_path):
    """The twin's card names the variant: its regenerated copy and re-pinned record are part of the
    transaction, so after an interruption and the next load both copies are the old or both the new."""
    (run_a, built_a), _ = quick.items()
    run_twin, twin_rec, twin_folder = built_twin
    warm = zoo_paths(tmp_path / "warm")  # the stand-ins' caches filled: the k-th step is the same in every attempt
    publish(run_twin, f"wnzoo/{TWIN}", **warm)
    publish(run_a, f"wnzoo/{NAME}", **warm)
    faults = Faults(monkeypatch)
    outcomes = []
    for k in range(1, 200):
        paths = zoo_paths(tmp_path / f"k{k}")
        twin = publish(run_twin, f"wnzoo/{TWIN}", **paths)[0]  # alone: its card says the variant is not published
        faults.k = k
        try:
            publish(run_a, f"wnzoo/{NAME}", **paths)
        except KeyboardInterrupt:
            faults.k = 0
        else:
            break
        records = published.load(paths["published_json"])
        outcomes.append("new" if NAME in records else "old")
        assert (records[TWIN] == twin) == (NAME not in records), k  # the twin's new pin comes with the variant
        assert loader(paths) == (built_a.sha256 if NAME in records else None), k  # finishes or undoes the publish
        assert_consistent(paths)
    else:
        pytest.fail("the publish never completed")
    records = published.load(paths["published_json"])
    assert records[TWIN] != twin and records[TWIN].sha256 == twin_rec.sha256
    assert_consistent(paths)
    assert k > 10 and "old" in outcomes and "new" in outcomes, outcomes


def test_a_second_publish_waits_for_the_first_then_says_so(quick, loader, monkeypatch, tmp_path):
    (run_a, built_a), (run_b, _) = quick.items()
    paths = zoo_paths(tmp_path)
    publish(run_a, f"wnzoo/{NAME}", **paths)
    monkeypatch.setattr(publish_mod, "LOCK_WAIT_S", 0.2)
    lock = paths["release_dir"] / ReleaseDir.LOCK
    with FileLock(str(lock), timeout=0), pytest.raises(PublishError, match=f"another publish is writing "
                                                                          f".*hub \\(it holds {lock}\\); wait"):
        publish(run_b, f"wnzoo/{NAME}", replace=True, **paths)
    assert loader(paths) == built_a.sha256
    assert_consistent(paths)


def _interrupted_after_commit(quick, root: Path) -> dict[str, Path]:
    """A zoo whose replacing publish stopped right after its commit: the new copy still staged."""
    (run_a, _), (run_b, _) = quick.items()
    paths = zoo_paths(root)
    publish(run_a, f"wnzoo/{NAME}", **paths)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ReleaseDir, "roll_forward", _interrupted)
        with pytest.raises(KeyboardInterrupt):
            publish(run_b, f"wnzoo/{NAME}", replace=True, **paths)
    assert leftovers(paths) == sorted([f".{NAME}.new", ReleaseDir.JOURNAL])
    return paths


def _interrupted(*args):
    raise KeyboardInterrupt


@pytest.mark.parametrize("journal", ["{not json", "[]", '{"name": 5}', "escaping", "twin escaping", "twin twice"])
def test_a_damaged_journal_is_one_line_that_names_it_and_the_fix(journal, quick, loader, tmp_path, capsys):
    paths = _interrupted_after_commit(quick, tmp_path)
    file = paths["release_dir"] / ReleaseDir.JOURNAL
    written = json.loads(file.read_text())
    if journal == "escaping":  # a journal whose paths would leave the release dir
        journal = json.dumps(dict(written, name="../../elsewhere"))
    elif journal == "twin escaping":  # so would the copy of a twin that changes with it
        journal = json.dumps(dict(written, also=[dict(written["new"], arch="../../elsewhere")]))
    elif journal == "twin twice":
        journal = json.dumps(dict(written, also=[written["new"]]))
    file.write_text(journal)
    def load() -> int:
        loader(paths)
        return 0

    def publish_again() -> int:
        publish(list(quick)[1], f"wnzoo/{NAME}", replace=True, **paths)
        return 0

    for attempt in (load, publish_again):
        assert run_cli(attempt) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {file} is damaged (") and len(err.splitlines()) == 1, err
        assert "delete it and the .*.new/.*.old folders beside it" in err and "publish again" in err
    assert leftovers(paths) == sorted([f".{NAME}.new", ReleaseDir.JOURNAL])  # nothing was guessed


def test_what_a_killed_publish_leaves_is_recovered(quick, loader, tmp_path):
    """A journal's temporary file (killed while writing it), and the copy an earlier wnzoo set aside
    (killed while replacing it) with the record still pinning it."""
    (run_a, built_a), _ = quick.items()
    paths = zoo_paths(tmp_path)
    publish(run_a, f"wnzoo/{NAME}", **paths)
    release = paths["release_dir"]
    (release / NAME).rename(release / f".{NAME}.old")
    (release / f".{ReleaseDir.JOURNAL}.0123abcd.tmp").write_text('{"name": ')  # as _io.atomic_write names it
    assert loader(paths) == built_a.sha256
    assert_consistent(paths)


def test_killed_publishes_temporary_folders_are_deleted(quick, monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f"wnzoo-publish-{dead.pid}-wn_resnet20.c10-abc", f"wnzoo-commit-{dead.pid}-def",
                 f"wnzoo-verify-{alive.pid}-ghi", f"wnzoo-publish-{os.getpid()}-jkl", "wnzoo-compile-123-mno"]
        for name in names:
            (tmp_path / name / "x").mkdir(parents=True)
        with pytest.raises(PublishError, match="is not a finished run folder"):
            publish(tmp_path / "no-run", f"wnzoo/{NAME}")
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("wnzoo-")) == sorted(names[2:])
    finally:
        alive.kill()
        alive.wait()


# early checks and advice ------------------------------------------------------------------------------
def _cli(argv: list[str], capsys) -> str:
    """Run hub/publish.py; returns its stderr after checking it exits 2 with one line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_cli", publish_mod.REPO_ROOT / "hub" / "publish.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


class _Refuses(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # whoami with a token the endpoint does not accept
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_push_checks_the_endpoint_and_the_token_before_any_work(quick, monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants as c

    def never(*args):
        raise AssertionError("built before the endpoint was checked")

    monkeypatch.setattr(publish_mod, "_build_and_verify", never)
    run = next(iter(quick))
    paths = zoo_paths(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    start = time.monotonic()
    with pytest.raises(PublishError, match=f"the Hub endpoint {DEAD_ENDPOINT} cannot be reached "
                                           r"\(ConnectError: .*\); check HF_ENDPOINT and the network"):
        publish(run, f"wnzoo/{NAME}", push=True, endpoint=DEAD_ENDPOINT, **paths)
    assert time.monotonic() - start < 5
    monkeypatch.setattr(c, "ENDPOINT", DEAD_ENDPOINT)  # as HF_ENDPOINT sets it
    assert "cannot be reached" in _cli([run, "--push", "--replace"], capsys)  # the repository's own paths

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(PublishError, match=rf"{url} refuses the token \(HTTP 401, .*\); set a write token"):
            publish(run, f"wnzoo/{NAME}", push=True, endpoint=url, **paths)
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setattr(publish_mod, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match=r"--push needs a write token for .*: set HF_TOKEN or run `hf auth login`"):
        publish(run, f"wnzoo/{NAME}", push=True, endpoint=DEAD_ENDPOINT, **paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "wnzoo"]  # nothing written


def test_a_connection_lost_during_the_push_is_one_line(built, tmp_path):
    folder = next(iter(built.values()))[1]
    with pytest.raises(PublishError, match=f"push of wnzoo/{NAME} to {DEAD_ENDPOINT} failed \\(ConnectError: .*\\); "
                                           "check HF_ENDPOINT and the network, and publish again: nothing was "
                                           "recorded"):
        push_folder(folder, f"wnzoo/{NAME}", "message", endpoint=DEAD_ENDPOINT, token="hf_x")


def test_a_run_under_another_variants_id_is_told_to_pick_the_matching_id(quick, tmp_path):
    """Not to pass --replace, which would then fail on the mismatch."""
    run = next(iter(quick))
    paths = zoo_paths(tmp_path)
    twin = dataclasses.replace(next(iter(quick.values())), repo_id="wnzoo/bn_resnet20.c10", arch="bn_resnet20")
    published.save({twin.name: twin}, paths["published_json"])
    for repo_id in ("wnzoo/bn_resnet20.c10", "wnzoo/wn_resnet20.c100"):
        with pytest.raises(PublishError, match="pick the matching --repo-id") as e:
            publish(run, repo_id, **paths)
        assert "--replace" not in str(e.value)


def test_a_diverged_run_is_told_to_change_the_recipe_not_to_resume(built, tmp_path, capsys):
    run = shutil.copytree(next(iter(built)), tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "diverged",
                                                  "diverged_at": {"epoch": 3, "step": 7, "lr": 0.4}}))
    (run / "model.safetensors").unlink()  # a diverged run's folder holds its state and summary only
    err = _cli([run, "--dry-run", "--out", tmp_path / "out"], capsys)
    assert f"run {run} diverged at epoch 3, step 7 (lr 0.4)" in err and "resuming it diverges again" in err
    assert "a lower lr or a longer warmup (warmup_epochs)" in err and "--resume" not in err


def test_weights_of_another_dataset_are_refused(built, tmp_path, capsys):
    run = shutil.copytree(next(iter(built)), tmp_path / "run")
    save_safetensors(run / "model.safetensors", wnzoo.create_model("wn_resnet20", num_classes=100).state_dict())
    err = _cli([run, "--dry-run", "--out", tmp_path / "out"], capsys)  # its config says CIFAR-10
    assert (f"{run / 'model.safetensors'} holds a classifier for 100 classes, but {NAME} is for 10 classes: these "
            f"weights are of another dataset; pick the matching --repo-id (wnzoo/wn_resnet20.c100)") in err
    paths = zoo_paths(tmp_path / "zoo")
    published.save({NAME: next(iter(built.values()))[0]}, paths["published_json"])
    with pytest.raises(PublishError, match="holds a classifier for 100 classes") as e:  # before "already published"
        publish(run, f"wnzoo/{NAME}", **paths)
    assert "--replace" not in str(e.value)
    save_safetensors(run / "model.safetensors", wnzoo.create_model("wn_wrn16_4").state_dict())
    assert "does not fit wn_resnet20.c10" in _cli([run, "--dry-run", "--out", tmp_path / "out"], capsys)
