"""Fixtures of the trainer's multi-process tests."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Protocol

import pytest


class _Running(Protocol):
    process: subprocess.Popen[str]


@pytest.fixture
def jobs() -> Iterator[list[_Running]]:
    """Started launcher jobs; whatever a failing test leaves running is killed with its process group."""
    started: list[_Running] = []
    yield started
    for job in started:
        if job.process.poll() is None:
            os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait()
