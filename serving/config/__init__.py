"""The production TF Serving configuration files, shipped as package data, and the container command line.

``models.config`` (ModelServerConfig), ``monitoring.config`` (MonitoringConfig), ``batching.config``
(BatchingParameters) are text protos read by ``tensorflow_model_server`` and by ``serving.model_server``
alike; ``command.txt`` is the container's argv, one argument per line.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR", "CONTAINER_CONFIG_DIR", "command_line"]

#: This directory (the installed package data).
CONFIG_DIR = Path(__file__).resolve().parent
#: Where the container mounts these files.
CONTAINER_CONFIG_DIR = "/etc/tfserving"


def command_line(path: str | Path = CONFIG_DIR / "command.txt") -> list[str]:
    """The container's argv from ``command.txt``: program first; comments and blank lines dropped."""
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]
