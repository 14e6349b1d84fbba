"""The chief's scan shared through a manifest (trainer.scan_manifest): workers never rescan, never take a stale one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.trainer.images import write_folder
from trainer import scan, scan_manifest
from trainer.errors import DataError, DivergenceError, PeerLostError

ROOT = Path(__file__).resolve().parents[2]


class _Clock:
    """A clock that advances by one second per sleep: waits end without real waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += 1.0


def _no_scan(*args: object, **kwargs: object) -> scan.DataSplits:
    raise AssertionError("a worker scanned the folder")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "data", classes=3, per_class=8, size=12)


def test_a_worker_reads_the_chiefs_manifest_and_opens_no_image(folder: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    chief = scan_manifest.shared_scan(folder, store, scans=True, timeout=1, val_fraction=0.25, seed=5)
    assert chief == scan.scan(folder, val_fraction=0.25, seed=5)  # the same result as a plain scan
    monkeypatch.setattr(scan, "scan", _no_scan)
    monkeypatch.setattr(scan, "_check_file", _no_scan)
    worker = scan_manifest.shared_scan(folder, store, scans=False, timeout=1, val_fraction=0.25, seed=5)
    assert worker == chief
    clock = _Clock()
    with pytest.raises(PeerLostError, match="within 3s"):  # other split settings: another manifest, never written
        scan_manifest.shared_scan(folder, store, scans=False, timeout=3, val_fraction=0.25, seed=6, clock=clock,
                                  sleep=clock.sleep)
    assert clock.sleeps == 3


def test_the_chief_reuses_its_manifest_until_a_file_changes(folder: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    first = scan_manifest.shared_scan(folder, store, scans=True, timeout=1)
    scans: list[Path] = []
    real_scan = scan.scan

    def counting(root: Path, **kwargs: object) -> scan.DataSplits:
        scans.append(root)
        return real_scan(root, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scan, "scan", counting)
    assert scan_manifest.shared_scan(folder, store, scans=True, timeout=1) == first and scans == []
    Image.fromarray(np.full((12, 12, 3), 9, np.uint8)).save(folder / "class_1" / "0.png")
    second = scan_manifest.shared_scan(folder, store, scans=True, timeout=1)
    assert len(scans) == 1 and second.fingerprint != first.fingerprint
    (folder / "class_2" / "new.png").write_bytes((folder / "class_2" / "1.png").read_bytes())
    assert scan_manifest.shared_scan(folder, store, scans=True, timeout=1).fingerprint != second.fingerprint


def test_a_worker_never_takes_a_stale_manifest(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    scan_manifest.shared_scan(folder, store, scans=True, timeout=1)
    (folder / "class_0" / "3.png").unlink()  # the folder changed since the chief's last scan
    clock = _Clock()
    with pytest.raises(DivergenceError, match="another listing"):
        scan_manifest.shared_scan(folder, store, scans=False, timeout=2, clock=clock, sleep=clock.sleep)
    fresh = scan_manifest.shared_scan(folder, store, scans=True, timeout=1)  # the chief's restart
    assert scan_manifest.shared_scan(folder, store, scans=False, timeout=1) == fresh
    assert all(f.path.name != "3.png" or f.path.parent.name != "class_0" for f in fresh.train + fresh.val)


def test_a_torn_manifest_is_ignored_and_a_missing_folder_fails_at_once(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    splits = scan_manifest.shared_scan(folder, store, scans=True, timeout=1)
    (path,) = (store / "scans").glob("*.json")
    path.write_text(path.read_text()[:40])
    clock = _Clock()
    with pytest.raises(DivergenceError):
        scan_manifest.shared_scan(folder, store, scans=False, timeout=1, clock=clock, sleep=clock.sleep)
    assert scan_manifest.shared_scan(folder, store, scans=True, timeout=1) == splits  # rescanned, rewritten
    with pytest.raises(DataError, match="no such file"):
        scan_manifest.shared_scan(tmp_path / "absent", store, scans=False, timeout=600)


_WORKER = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from trainer import scan, scan_manifest
role, root, store = sys.argv[1:4]
if role == "worker":
    def no_scan(*a, **k):
        raise AssertionError("the worker scanned")
    scan.scan = scan._check_file = no_scan
splits = scan_manifest.shared_scan(root, store, scans=role == "chief", timeout=50, seed=7)
print(json.dumps({"fingerprint": splits.fingerprint, "train": [str(f.path) for f in splits.train]}))
"""


@pytest.mark.slow
def test_a_worker_process_started_first_waits_for_the_chief_process(folder: Path, tmp_path: Path) -> None:
    """Two real processes: the worker starts first and polls; the chief scans and writes; both agree."""
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _WORKER]
    worker = subprocess.Popen([*command, "worker", str(folder), str(store)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        assert worker.stderr is not None
        lines = []
        while not any("waiting up to" in line for line in lines):  # the worker is polling: start the chief
            line = worker.stderr.readline()
            assert line, "".join(lines)[-2000:]
            lines.append(line)
        chief = subprocess.run([*command, "chief", str(folder), str(store)], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert chief.returncode == 0, chief.stderr[-2000:]
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err[-2000:]
        assert time.monotonic() - started < 60
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "read the chief's manifest" in err
    assert out.strip() == chief.stdout.strip() and '"train": ["' in out
