"""Where each worker writes: the chief the shared run directory, every other worker a private scratch dir."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.cluster import Cluster

__all__ = ["WorkerDirs", "worker_dirs"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerDirs:
    """Where this process writes. The chief's paths are shared; other workers' are private."""

    tuner_dir: Path
    backup_dir: Path
    """The shared backup root on every worker (read by all, written by the chief; see `backup_and_restore`)."""
    logs_dir: Path
    scratch: Path | None
    """The private temp dir of a non-chief worker (removed on exit), None on the chief."""


@contextlib.contextmanager
def worker_dirs(shared_root: Path, cluster: Cluster) -> Iterator[WorkerDirs]:
    """Yield this process's directories; a non-chief's scratch dir is removed when the block ends."""
    shared_root = Path(shared_root)
    backup_dir = shared_root / "backup"
    if cluster.is_chief:
        dirs = WorkerDirs(shared_root / "tuner", backup_dir, shared_root / "logs", None)
        for path in (dirs.tuner_dir, dirs.logs_dir):
            path.mkdir(parents=True, exist_ok=True)
        yield dirs
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"tfstack-worker{cluster.rank}-"))
    try:
        dirs = WorkerDirs(scratch / "tuner", backup_dir, scratch / "logs", scratch)
        for path in (dirs.tuner_dir, dirs.logs_dir):
            path.mkdir(parents=True, exist_ok=True)
        log.info("worker %d writes to private scratch %s", cluster.rank, scratch)
        yield dirs
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
