"""The one write-then-rename of the project: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path | str, data: str | bytes) -> None:
    """Write `data` to `path` through a hidden temporary file in the same folder and ``os.replace``.

    The temporary name is unique (``mkstemp``), so two writers racing on a shared volume never write
    into each other's file; the last rename wins whole. The file gets the mode a plain ``open`` would
    give it (0666 less the umask), not mkstemp's 0600: reports, the search record and scan manifests
    on a shared volume are read by other users and pods. The folder is created when missing. A failed
    write removes its temporary file and leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())  # the data reaches the disk before the name does (a node may crash between)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, racing other threads' files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022  # no /proc (not Linux) or a kernel before 4.7: the usual default
