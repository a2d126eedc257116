"""A real Hub-compatible server for tests: olah 0.5.4 in offline mode serving git repos from a folder.

Setup: ``olah==0.5.4`` (the ``test`` extra) and the ``git`` binary, which olah reads the repos with; a
repo serves what is committed, not its working tree. ``mirrors-path`` can be set only in the TOML
file, and ``offline = true`` is required, else every request first asks huggingface.co. olah is a
read-only mirror: a commit made in the mirror folder (``add_commit``) is served on the next request,
and uploads go through ``hub_write_server.py``. Its quirks: a missing repo, file or revision all
come back as ``RepositoryNotFoundError``, ``/`` answers 500 (so readiness is probed on an API path),
and committed files of 121–149 bytes that are not UTF-8 make it fail (it parses them as LFS pointers).
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from wnzoo.publish import commit_folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OlahServer:
    """``olah`` on a free port of 127.0.0.1; model repos are git repos under ``mirrors/models/<org>/<name>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mirrors = root / "mirrors"
        (self.mirrors / "models").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "OlahServer":
        cfg = self.root / "olah.toml"
        netloc = f"127.0.0.1:{self.port}"
        cfg.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nrepos-path = "{self.root / "cache"}"\n'
                       f'mirrors-path = ["{self.mirrors}"]\nmirror-netloc = "{netloc}"\n'
                       f'mirror-lfs-netloc = "{netloc}"\n[accessibility]\noffline = true\n')
        log = open(self.root / "olah.out", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", str(cfg), "--log-path",
                                      str(self.root / "logs")], stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited with {self.proc.returncode}: {(self.root / 'olah.out').read_text()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/models/probe/probe/revision/main", timeout=2)
                return self
            except urllib.error.HTTPError:
                return self  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer within {timeout} s: {(self.root / 'olah.out').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def repo_dir(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def add_commit(self, repo_id: str, folder: Path, message: str, tag: str | None = None) -> str:
        """Commit ``folder``'s files as the next commit of ``repo_id`` (the first one is a root commit)."""
        return commit_folder(folder, self.repo_dir(repo_id), message, tag=tag)
