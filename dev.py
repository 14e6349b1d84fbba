#!/usr/bin/env python3
"""Set up the project's virtual environment on demand, then run one of its jobs.

    python3 dev.py demo     train (2 local workers), export, serve, predict: the main job end to end
    python3 dev.py test     lint + the whole test suite (fast tests, then slow multi-process and e2e)
    python3 dev.py setup    only create or refresh .venv

Uses the standard library only, so it runs on a fresh machine with nothing but Python >= 3.10 and pip.
The environment is rebuilt when pyproject.toml changes (its hash is stored in .venv).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".tfstack-installed"


def _requirements_hash() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def setup() -> None:
    """Create .venv and install tfstack with its dev extra, unless it is already current."""
    wanted = _requirements_hash()
    if STAMP.exists() and STAMP.read_text().strip() == wanted and PYTHON.exists():
        return
    print(f"[setup] creating {VENV.relative_to(ROOT)} (TensorFlow, Keras, KerasTuner: about 2.5 GB)", flush=True)
    if not PYTHON.exists():
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except subprocess.CalledProcessError:
            # Debian-style Pythons ship venv without ensurepip: seed the venv's pip with this Python's pip.
            venv.EnvBuilder(with_pip=False, clear=True).create(VENV)
            _run([sys.executable, "-m", "pip", "--python", str(PYTHON), "install", "-q", "pip"])
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run([*pip, "--upgrade", "pip"])
    _run([*pip, "-e", f"{ROOT}[dev]"])
    STAMP.write_text(wanted + "\n")
    print("[setup] done", flush=True)


def _run(cmd: list[str], **kwargs: object) -> None:
    result = subprocess.run(cmd, cwd=ROOT, **kwargs)
    if result.returncode != 0:
        sys.exit(result.returncode)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def demo(args: list[str]) -> None:
    _run([str(PYTHON), str(ROOT / "demo.py"), *args], env=_env())


def test(args: list[str]) -> None:
    py = str(PYTHON)
    env = _env()
    print("[test] ruff", flush=True)
    _run([py, "-m", "ruff", "check", "."], env=env)
    print("[test] mypy --strict serving/client serving/wire", flush=True)
    _run([py, "-m", "mypy", "serving/client", "serving/wire"], env=env)
    print("[test] fast tests", flush=True)
    _run([py, "-m", "pytest", "-m", "not slow and not e2e", *args], env=env)
    print("[test] slow multi-process and end-to-end tests", flush=True)
    _run([py, "-m", "pytest", "-m", "slow or e2e", *args], env=env)


def main(argv: list[str]) -> None:
    jobs = {"setup": lambda _args: None, "demo": demo, "test": test}
    if not argv or argv[0] not in jobs:
        sys.exit(f"usage: python3 dev.py {{{','.join(jobs)}}} [args...]")
    setup()
    jobs[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
