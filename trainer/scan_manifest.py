"""The chief's scan of the image folder, shared with the workers through a manifest on the shared volume.

`trainer.scan.scan` reads and hashes every file (and Pillow-checks it): on a large folder on a network
volume that is minutes of I/O, and every worker of a group used to do it at every start. Now one
process scans (the chief, the oracle of parallel groups, or a single process) and writes what it found
(`write_manifest`: the classes, every split's files and labels relative to the root, the skipped files,
the fingerprint) atomically to ``<store>/scans/<key>.json``, the key a digest of the folder's path and
the split settings (seed, fractions, strict). Every other worker waits for it (`shared_scan`, bounded by
a deadline) and reads it instead of scanning.

Which manifest is current: each manifest records a digest of the folder's listing (every visible file's
relative path, size, mtime and inode: one ``stat`` per file, no reads), and a reader accepts a manifest
only when its own listing gives the same digest. The scan is a deterministic function of the files and
the settings, so a manifest that matches the listing is the one a fresh scan would write: the chief
reuses it at a restart (no hashing), and a worker never takes a stale one (one from before a file
changed) for the chief's; it waits for the chief's new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer import scan
from trainer.atomic import write_atomic
from trainer.errors import DivergenceError, PeerLostError

__all__ = ["FORMAT", "listing_digest", "manifest_path", "read_manifest", "shared_scan", "write_manifest"]

log = logging.getLogger(__name__)

FORMAT = 1
_POLL_SECONDS = 0.5


def _settings(root: Path, *, val_fraction: float, test_fraction: float, seed: int, strict: bool) -> dict[str, Any]:
    return {"format": FORMAT, "root": str(root.absolute()), "val_fraction": val_fraction,
            "test_fraction": test_fraction, "seed": seed, "strict": strict}


def manifest_path(store: Path | str, settings: dict[str, Any]) -> Path:
    """Where the manifest of this folder and these split settings lives in `store`."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    return Path(store) / "scans" / f"{digest}.json"


def listing_digest(root: Path | str) -> str:
    """SHA-256 of (relative path, size, mtime, inode) of every visible file under `root` (stat only, no reads).

    Visible as `trainer.scan.scan` sees it: names starting with ``.`` are skipped, symbolic links are
    followed, a folder reached twice (a link loop) is listed once.
    """
    root = Path(root)
    entries: list[tuple[str, int, int, int]] = []
    visited: set[str] = set()
    for current, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(current) / name
            try:
                stat = path.stat()
            except OSError:  # a dangling link: the scan reports it as unreadable; its name is what we list
                entries.append((path.relative_to(root).as_posix(), -1, -1, -1))
                continue
            entries.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def write_manifest(path: Path, splits: scan.DataSplits, settings: dict[str, Any], listing: str) -> None:
    """Write `splits` as the manifest at `path`, atomically."""
    root = splits.root

    def files(split: str) -> list[list[Any]]:
        return [[f.path.relative_to(root).as_posix(), f.label] for f in getattr(splits, split)]

    record = {
        "settings": settings, "listing": listing, "fingerprint": splits.fingerprint, "explicit": splits.explicit,
        "class_names": list(splits.class_names), "train": files("train"), "val": files("val"),
        "test": files("test"), "skipped": [[str(path), reason] for path, reason in splits.skipped],
    }
    write_atomic(path, json.dumps(record, separators=(",", ":")) + "\n")


def read_manifest(path: Path, root: Path, settings: dict[str, Any], listing: str) -> scan.DataSplits | None:
    """The splits of the manifest at `path` if it is for these settings and this listing, else None."""
    try:
        record = json.loads(path.read_text())
        if record["settings"] != settings or record["listing"] != listing:
            return None

        def files(split: str) -> tuple[scan.ImageFile, ...]:
            return tuple(scan.ImageFile(root / relative, int(label)) for relative, label in record[split])

        return scan.DataSplits(
            class_names=tuple(record["class_names"]), train=files("train"), val=files("val"), test=files("test"),
            skipped=tuple((Path(p), str(reason)) for p, reason in record["skipped"]),
            fingerprint=str(record["fingerprint"]), root=root, explicit=bool(record["explicit"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # torn or foreign: treat as absent, say so
        log.warning("ignoring an unreadable scan manifest %s: %s", path, exc)
        return None


def shared_scan(
    root: Path | str,
    store: Path | str,
    *,
    scans: bool,
    timeout: float,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 42,
    strict: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> scan.DataSplits:
    """`trainer.scan.scan`'s result for `root`, scanned once per folder state and shared through `store`.

    ``scans=True`` (the chief, the oracle, a single process): reuse the manifest when it matches the
    folder's listing, else scan and write it. ``scans=False`` (every other worker): wait up to `timeout`
    seconds for a matching manifest, never reading an image.

    Raises:
        DataError: what `trainer.scan.scan` raises (on the scanning process).
        PeerLostError: no manifest within `timeout` (the chief is gone or stuck: restart the group).
        DivergenceError: the manifest there lists other files than this worker sees (another volume?).
    """
    root = Path(root)
    settings = _settings(root, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strict=strict)
    path = manifest_path(store, settings)
    started = time.perf_counter()
    if not root.is_dir():  # no folder: the scan's own error, on every process, at once
        return scan.scan(root, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strict=strict)
    listing = listing_digest(root)
    if scans:
        splits = read_manifest(path, root, settings, listing)
        if splits is not None:
            log.info("scan of %s: reused %s (the folder's %s files are unchanged; listed in %.1f s)", root, path,
                     len(splits.train) + len(splits.val) + len(splits.test) + len(splits.skipped),
                     time.perf_counter() - started)
            return splits
        splits = scan.scan(root, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strict=strict)
        write_manifest(path, splits, settings, listing)
        log.info("scan of %s: wrote %s for the other workers", root, path)
        return splits
    deadline = clock() + timeout
    log.info("waiting up to %.0fs for the chief's scan of %s (%s)", timeout, root, path)
    while True:
        splits = read_manifest(path, root, settings, listing)
        if splits is not None:
            log.info("scan of %s: read the chief's manifest %s (no file opened)", root, path)
            return splits
        if clock() >= deadline:
            break
        sleep(_POLL_SECONDS)
    if path.is_file():
        raise DivergenceError(
            f"Expected the chief's scan manifest {path} to list the files this worker sees under {root}. "
            f"Received: a manifest for another listing after {timeout:.0f}s (--prepare-timeout): the folder "
            "differs between workers (another volume or copy?) or it changed during the start"
        )
    raise PeerLostError(
        f"Expected the chief to write its scan of {root} to {path} within {timeout:.0f}s (--prepare-timeout). "
        "Received: nothing. Is the chief running, and is the store on a volume every worker shares?"
    )
