"""trainer.atomic.write_atomic: whole files only, and the mode a plain open would give."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.atomic import write_atomic


def test_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "summary.json"
    write_atomic(target, "first\n")
    write_atomic(target, b"second\n")
    assert target.read_bytes() == b"second\n"
    assert os.listdir(target.parent) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error is a fault a real part will not produce on demand: fsync is made to fail."""
    target = tmp_path / "search.json"
    write_atomic(target, "old")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["search.json"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_mode_follows_the_umask_as_open_does(tmp_path: Path, umask: int, mode: int) -> None:
    """In a child process (the umask is per process): write_atomic's file and a plain open()'s agree."""
    script = (
        "import os, sys; from trainer.atomic import write_atomic; "
        f"os.umask({umask}); write_atomic(sys.argv[1], 'x'); open(sys.argv[2], 'w').close()"
    )
    atomic, plain = tmp_path / "atomic", tmp_path / "plain"
    subprocess.run([sys.executable, "-c", script, str(atomic), str(plain)], check=True,
                   cwd=Path(__file__).resolve().parents[2])
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == mode
