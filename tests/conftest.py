"""Shared fixtures. Tests that need the real CIFAR-10 read ../shared/data/cifar10 (or $WNZOO_CIFAR10):
they skip when it is missing on a developer machine, but fail in CI (CI=true), where it must exist."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CIFAR10 = Path(os.environ.get("WNZOO_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))
# A user's default data folder must not change what the tests read (they pass their data explicitly).
os.environ.pop("WNZOO_DATA", None)


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    if not (CIFAR10 / "test.npz").is_file():
        msg = f"real CIFAR-10 not found at {CIFAR10} (set WNZOO_CIFAR10 or place ../shared beside the repo)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return CIFAR10


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A CIFAR-shaped npz folder: 640 train / 200 test images with a learnable class signal."""
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 640), ("test", 200)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        images[:, :4, :4, :] = (labels * 25)[:, None, None, None].astype(np.uint8)  # the class is in a corner
        np.savez(d / f"{split}.npz", images=images, labels=labels)
    return d


@pytest.fixture
def record_ops():
    """A context manager whose ``seen`` lists the aten ops run inside it (``randint``, ``clone``, …)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func.overloadpacket).split(".")[-1])
            return func(*args, **(kwargs or {}))

    return Ops


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def olah_server(tmp_path_factory):
    """A real Hub-compatible server (olah 0.5.4, offline, serving git repos from a folder) on 127.0.0.1;
    tests/hub_olah.py. Skips when olah is not installed on a developer machine, fails in CI."""
    try:
        import olah  # noqa: F401
    except ImportError:
        msg = "olah is not installed: pip install -e '.[test]' (or pip install olah==0.5.4)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from hub_olah import OlahServer

    server = OlahServer(tmp_path_factory.mktemp("olah")).start()
    yield server
    server.stop()
