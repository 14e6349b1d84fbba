"""The trainer's exit-code contract, end to end with real processes (docs/distributed.md).

0 done; 1 crash (retry); 2 bad input or configuration (do not retry); 3 finished but not published;
4 a peer was lost or the group could not form (restart the whole group).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.images import write_folder
from trainer import errors
from trainer.cluster import local_tf_configs
from trainer.launch import free_ports

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.ConfigError("x"), 2), (errors.ClusterError("x"), 2), (errors.DataError("x"), 2),
        (errors.DivergenceError("x"), 2), (errors.SearchError("x"), 1), (errors.ExportError("x"), 1),
        (errors.NotPublishedError("x"), 3), (errors.PeerLostError("x"), 4), (errors.ClusterFormationError("x"), 4),
        (RuntimeError("x"), 1), (OSError("x"), 1), (SystemExit(2), 2),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_exit_code_of_each_error(error: BaseException, code: int) -> None:
    assert errors.exit_code(error) == code


def test_tensorflow_peer_errors_mean_restart_the_group() -> None:
    import tensorflow as tf

    for error in (tf.errors.UnavailableError(None, None, "peer down"), tf.errors.DeadlineExceededError(None, None, "t"),
                  tf.errors.AbortedError(None, None, "incarnation"), tf.errors.CancelledError(None, None, "c")):
        assert errors.exit_code(error) == errors.EXIT_PEER_LOST
    assert errors.exit_code(tf.errors.InvalidArgumentError(None, None, "bad")) == errors.EXIT_CRASH


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("codes") / "images", classes=2, per_class=6)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


@pytest.mark.slow
def test_a_peer_that_never_starts_exits_4_naming_it(tmp_path: Path, folder: Path) -> None:
    tf_config = local_tf_configs(free_ports(2))[0]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "search", "--data", str(folder), "--run-dir", "runs", "--export-base",
         "models", "--backbone", "small_cnn", "--image-size", "16", "--cluster-formation-timeout", "3"],
        cwd=tmp_path, env=_env(TF_CONFIG=json.dumps(tf_config)), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == errors.EXIT_PEER_LOST, result.stderr[-3000:]
    missing = tf_config["cluster"]["worker"][1]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and f"worker 1 ({missing})" in error_lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 240  # bounded: import + scan + 3 s, never the default 15 minutes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--batch-size", "0"], "batch_size"), (["--data", "no/such/folder"], "no/such/folder")],
    ids=["config-error", "data-error"],
)
def test_bad_input_exits_2_and_the_launcher_does_not_retry(
    tmp_path: Path, folder: Path, args: list[str], fragment: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "launch", "--workers", "2", "--max-restarts", "3", "--", "search",
         "--data", str(folder), "--run-dir", "runs", "--export-base", "models", *args],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == errors.EXIT_BAD_INPUT, result.stderr[-3000:]
    assert fragment in result.stderr and "restarting" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("started worker 0") == 1


@pytest.mark.slow
def test_a_stuck_peer_is_detected_and_both_workers_exit_4(tmp_path: Path) -> None:
    # Worker 1 stays alive but never finishes its second batch; MWMS's health check sees a healthy
    # peer, so only the stall watchdog (--collective-timeout) can end the chief's wait.
    procs = []
    for rank, tf_config in enumerate(local_tf_configs(free_ports(2))):
        log = (tmp_path / f"worker{rank}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.trainer.mwms_child", "stuck", str(tmp_path)], cwd=ROOT,
            env=_env(TF_CONFIG=json.dumps(tf_config)), stdout=log, stderr=subprocess.STDOUT,
        ))
        log.close()
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"worker{rank}.log").read_text() for rank in range(2)]
    assert codes == [errors.EXIT_PEER_LOST] * 2, "\n".join(log[-3000:] for log in logs)
    assert "No training progress" in logs[0] and "(--collective-timeout 5s)" in logs[0]


# --- every documented error, as a user meets it, with and without --verbose ------------------------------------

def _write_mismatched_identity(cwd: Path) -> None:
    """A run directory holding another search's record: resuming it must be refused (exit 2, not 1)."""
    record = cwd / "runs" / "images" / "search.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"epochs": 1234, "tuner": "random"}))


# (id, argv after `python -m trainer [--verbose]`, extra environment, setup, fragment of the error line, code).
# `{data}` is the image folder, `{empty}` an empty folder. Rows marked "tf" import TensorFlow (about 6 s each).
_TABLE: list[tuple[str, list[str], dict[str, str], Any, str, int, bool]] = [
    ("unknown-flag", ["search", "--no-such-flag"], {}, None, "--no-such-flag", 2, False),
    ("bad-value", ["search", "--batch-size", "0"], {}, None, "batch_size", 2, False),
    ("not-a-number", ["search", "--epochs", "two"], {}, None, "epochs", 2, False),
    ("bad-choice", ["search", "--tuner", "grid"], {}, None, "tuner", 2, False),
    ("conflicting-flags", ["search", "--backbone", "auto,small_cnn"], {}, None, "auto", 2, False),
    ("fractions-conflict", ["search", "--val-fraction", "0.5", "--test-fraction", "0.45"], {}, None,
     "val_fraction + test_fraction", 2, False),
    ("unknown-env", ["search"], {"TFSTACK_BATCHSIZE": "4"}, None, "TFSTACK_BATCHSIZE", 2, False),
    ("bad-env", ["search"], {"TFSTACK_EPOCHS": "many"}, None, "TFSTACK_EPOCHS", 2, False),
    ("missing-config-file", ["search", "--config", "nope.json"], {}, None, "nope.json", 2, False),
    ("bad-tf-config", ["search"], {"TF_CONFIG": "{not json"}, None, "TF_CONFIG", 2, False),
    ("launch-without-command", ["launch", "--workers", "2"], {}, None, "trainer command", 2, False),
    ("launch-no-workers", ["launch", "--workers", "0", "--", "search"], {}, None, "--workers", 2, False),
    ("missing-data", ["search", "--data", "no/such/folder"], {}, None, "no/such/folder", 2, True),
    ("empty-data", ["search", "--data", "{empty}"], {}, None, "sub-folder", 2, True),
    ("hyperband-with-groups", ["search", "--tuner", "hyperband"],
     {"TFSTACK_GROUPS": "2", "TFSTACK_GROUP": "0", "TFSTACK_ORACLE": "127.0.0.1:1"}, None, "hyperband", 2, True),
    ("resume-mismatch", ["search", "--data", "{data}", "--backbone", "small_cnn", "--image-size", "16"], {},
     _write_mismatched_identity, "Pass --overwrite to start afresh", 2, True),
]


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "verbose"])
@pytest.mark.parametrize(
    ("argv", "env", "setup", "fragment", "code"),
    [pytest.param(*row[1:6], id=row[0], marks=[pytest.mark.slow] if row[6] else []) for row in _TABLE],
)
def test_every_documented_error_keeps_its_exit_code(
    tmp_path: Path, folder: Path, verbose: bool, argv: list[str], env: dict[str, str], setup: Any, fragment: str,
    code: int,
) -> None:
    # The data folder's name ("images") is the model name the resume-mismatch row's record is written for.
    (tmp_path / "empty").mkdir()
    if setup is not None:
        setup(tmp_path)
    argv = [a.format(data=folder, empty=tmp_path / "empty") for a in argv]
    if argv[0] == "search":
        argv += ["--run-dir", "runs", "--export-base", "models"]
    result = subprocess.run(
        [sys.executable, "-m", "trainer", *(["--verbose"] if verbose else []), *argv],
        cwd=tmp_path, env=_env(**env), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == code, result.stderr[-3000:]
    assert fragment in result.stderr, result.stderr[-3000:]
    if not verbose:
        assert "Traceback" not in result.stderr
    elif "usage:" not in result.stderr:  # argparse's own usage errors have no traceback to show
        assert "Traceback" in result.stderr, "--verbose shows the traceback (and keeps the exit code)"
    assert not (tmp_path / "models").exists(), "no partial artefact"
