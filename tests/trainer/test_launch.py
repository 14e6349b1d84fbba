"""Tests for trainer.launch: real worker processes (tests/trainer/launch_child.py, no TensorFlow)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import launch as launch_module
from trainer.cluster import resolve
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CHILD = "tests.trainer.launch_child"


def _launch(mode: str, tmp_path: Path, **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options: dict = {"workers": 2, "env": dict(os.environ), "module": CHILD, "cwd": str(ROOT), "grace_period": 5.0,
                     **kwargs}
    code = launch_module.launch([mode, str(tmp_path)], stdout=out, stderr=err, **options)
    return code, out.getvalue(), err.getvalue()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(pid, 0); it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_worker_command_builds_cmd_and_env() -> None:
    tf_config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    cmd, env = launch_module.worker_command(["search", "--x"], tf_config=tf_config, python="py",
                                            env={"A": "1", "TF_CONFIG": "old"}, module="trainer")
    assert cmd == ["py", "-m", "trainer", "search", "--x"]
    assert env == {"A": "1", "TF_CONFIG": json.dumps(tf_config), "PYTHONUNBUFFERED": "1"}
    cluster = resolve(env)
    assert (cluster.rank, cluster.num_workers, cluster.is_chief) == (1, 2, False)


def test_free_ports_are_distinct() -> None:
    ports = launch_module.free_ports(4)
    assert len(set(ports)) == 4 and all(0 < p < 65536 for p in ports)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"workers": 0}, "workers=0"), ({"max_restarts": -1}, "max_restarts=-1"), ({"groups": 0}, "groups=0"),
     ({"threads_per_worker": -1}, "threads_per_worker=-1")],
    ids=["no-workers", "negative-restarts", "no-groups", "negative-threads"],
)
def test_launch_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _launch("hello", tmp_path, **kwargs)


@pytest.mark.slow
def test_workers_get_their_own_tf_config_and_prefixed_output(tmp_path: Path) -> None:
    code, out, err = _launch("hello", tmp_path, workers=3)
    assert code == 0
    lines = sorted(line for line in out.splitlines() if "hello" in line)
    assert [line.split(" from ")[0] for line in lines] == [f"[worker {r}] hello" for r in range(3)]
    addresses = [line.split(" at ")[1] for line in lines]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert sorted(line for line in err.splitlines() if "note" in line) == [
        f"[worker {r}] note on stderr from rank {r}" for r in range(3)
    ]


@pytest.mark.slow
def test_a_failing_worker_stops_the_others(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="trainer.launch"):
        code, _, err = _launch("fail-rank1", tmp_path)
    assert code == 3
    assert "[worker 1] ValueError: boom on worker 1" in err
    assert "worker 1 failed with exit status 3: ValueError: boom on worker 1" in caplog.text
    assert "stopping worker 0" in caplog.text
    assert not _alive(int((tmp_path / "pid0").read_text()))


@pytest.mark.slow
def test_a_worker_that_ignores_sigterm_is_killed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="trainer.launch"):
        code, _, _ = _launch("stubborn", tmp_path, grace_period=0.5)
    assert code == 3
    assert "worker 0 did not stop within" in caplog.text
    assert not _alive(int((tmp_path / "pid0").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("code", [4, 1, 137], ids=["peer-lost", "crash", "killed"])
def test_a_lost_peer_or_crash_restarts_the_whole_group_on_fresh_ports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    with caplog.at_level(logging.INFO, logger="trainer.launch"):
        status, out, _ = _launch(f"exit{code}", tmp_path, max_restarts=1)
    assert status == 0
    assert f"worker 1 exited with status {code}" in caplog.text and "restarting the whole group (1 of 1)" in caplog.text
    assert "stopping worker 0 (restarting the group)" in caplog.text
    first = {line.split("] address ")[1] for line in out.splitlines() if "] address " in line}
    again = {line.split(" recovered at ")[1] for line in out.splitlines() if " recovered at " in line}
    assert len(first) == len(again) == 2 and not first & again, "the restarted group did not get fresh ports"
    assert not _alive(int((tmp_path / "pid0").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("code", [2, 3], ids=["bad-input", "not-published"])
def test_do_not_retry_codes_stop_everyone_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    with caplog.at_level(logging.INFO, logger="trainer.launch"):
        status, out, _ = _launch(f"exit{code}", tmp_path, max_restarts=3)
    assert status == code
    assert "restarting" not in caplog.text and "recovered" not in out
    assert f"worker 1 failed with exit status {code}" in caplog.text
    assert not _alive(int((tmp_path / "pid0").read_text()))


@pytest.mark.slow
def test_restarts_are_bounded(tmp_path: Path) -> None:
    status, _, err = _launch("flaky", tmp_path, max_restarts=0)
    assert status == 5
    assert "fails" in err


@pytest.mark.slow
def test_ctrl_c_stops_every_worker(tmp_path: Path) -> None:
    # Ctrl-C at a terminal reaches a launcher with Python's default SIGINT handler. A suite started as a
    # shell's background job inherits SIGINT *ignored* (POSIX: asynchronous lists without job control),
    # and Python then keeps it ignored: restore the default so the test means the same everywhere.
    script = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import os, sys, logging; logging.basicConfig(level=logging.INFO)\n"
        "from trainer.launch import launch\n"
        f"sys.exit(launch(['block', {str(tmp_path)!r}], workers=2, env=dict(os.environ), module={CHILD!r}))\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        ready = set()
        for line in launcher.stdout:  # readiness: both workers said "ready"
            if line.endswith("] ready\n"):
                ready.add(line.split("]")[0])
            if len(ready) == 2:
                break
        assert ready == {"[worker 0", "[worker 1"}
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=120) == 130
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert not any(_alive(int((tmp_path / f"pid{r}").read_text())) for r in range(2))


def _roles(out: str) -> list[tuple[str, str]]:
    """(process prefix, its role line) for every ``role ...`` line the children printed."""
    return [(line[1:].split("] ", 1)[0], line.split("] role ", 1)[1]) for line in out.splitlines() if "] role " in line]


def test_groups_start_an_oracle_and_g_groups_of_w_workers_that_resolve_their_roles(tmp_path: Path) -> None:
    code, out, _ = _launch("groups", tmp_path, groups=3, workers=2)
    assert code == 0
    roles = dict(_roles(out))
    assert sorted(roles) == ["group 0 worker 0", "group 0 worker 1", "group 1 worker 0", "group 1 worker 1",
                             "group 2 worker 0", "group 2 worker 1", "oracle"]
    oracle = roles["oracle"].split(", oracle ")[1].split(",")[0]
    assert roles["oracle"].startswith("oracle of 3 groups") and oracle.startswith("127.0.0.1:")
    peers = {}
    for label, role in roles.items():
        if label != "oracle":
            group, rank = int(label.split()[1]), int(label.split()[3])
            assert role.startswith(f"group {group} rank {rank} of 3 groups, oracle {oracle},")
            peers.setdefault(group, set()).add(role.split("peers ")[1])
    # Each group is its own MWMS cluster: its two workers list the same peers, no two groups share one.
    assert all(len(p) == 1 for p in peers.values())
    addresses = [set(next(iter(p)).split(",")) for p in peers.values()]
    assert all(len(a) == 2 for a in addresses) and not (addresses[0] & addresses[1] or addresses[1] & addresses[2])


@pytest.mark.slow
def test_a_failed_group_restarts_alone_while_the_others_and_the_oracle_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="trainer.launch"):
        code, out, _ = _launch("groups-exit4", tmp_path, groups=2, workers=2, max_restarts=1)
    assert code == 0, caplog.text
    assert "group 1 worker 1 exited with status 4" in caplog.text and "restarting group 1 (1 of 1)" in caplog.text
    started = [label for label, _ in _roles(out)]
    assert sorted(started) == ["group 0 worker 0", "group 0 worker 1", "group 1 worker 0", "group 1 worker 0",
                               "group 1 worker 1", "group 1 worker 1", "oracle"]
    group1 = [role.split("peers ")[1] for label, role in _roles(out) if label == "group 1 worker 0"]
    assert len(set(group1)) == 2, "the restarted group did not get fresh ports"


_NO_THREAD_VARIABLES = {k: v for k, v in os.environ.items() if k not in launch_module.TF_THREAD_VARIABLES}


@pytest.mark.parametrize(
    ("processes", "cores", "threads_per_worker", "env", "expected"),
    [
        (2, 2, None, {}, {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}),
        (4, 2, None, {}, {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}),
        (3, 16, None, {}, {"TF_NUM_INTRAOP_THREADS": "5", "TF_NUM_INTEROP_THREADS": "5"}),
        (1, 8, None, {}, {}),
        (2, 8, 0, {}, {}),
        (1, 8, 3, {}, {"TF_NUM_INTRAOP_THREADS": "3", "TF_NUM_INTEROP_THREADS": "3"}),
        (2, 8, None, {"TF_NUM_INTRAOP_THREADS": "6", "TF_NUM_INTEROP_THREADS": " "}, {"TF_NUM_INTEROP_THREADS": "4"}),
    ],
    ids=["2-on-2", "4-on-2", "3-on-16", "one-process", "zero-keeps-defaults", "explicit", "environment-wins"],
)
def test_thread_env_shares_the_cores_between_training_processes(
    processes: int, cores: int, threads_per_worker: int | None, env: dict, expected: dict
) -> None:
    assert launch_module.thread_env(env, processes=processes, cores=cores,
                                    threads_per_worker=threads_per_worker) == expected


def _threads(out: str) -> dict[str, str]:
    return {line[1:].split("] ", 1)[0]: line.split("] threads ", 1)[1] for line in out.splitlines()
            if "] threads " in line}


@pytest.mark.parametrize(
    ("kwargs", "env", "group_threads"),
    [
        ({}, {}, "intra=2 inter=2"),
        ({"threads_per_worker": 0}, {}, "intra=- inter=-"),
        ({"threads_per_worker": 3}, {"TF_NUM_INTEROP_THREADS": "7"}, "intra=3 inter=7"),
    ],
    ids=["cores-over-processes", "zero-keeps-defaults", "environment-wins"],
)
def test_every_group_worker_gets_its_share_of_threads_and_the_oracle_keeps_the_defaults(
    tmp_path: Path, kwargs: dict, env: dict, group_threads: str
) -> None:
    code, out, _ = _launch("threads", tmp_path, groups=2, workers=2, cores=8, env={**_NO_THREAD_VARIABLES, **env},
                           **kwargs)
    assert code == 0
    oracle = "intra=- inter=7" if "TF_NUM_INTEROP_THREADS" in env else "intra=- inter=-"  # its env passes as is
    assert _threads(out) == {"oracle": oracle, **{f"group {g} worker {r}": group_threads
                                                  for g in (0, 1) for r in (0, 1)}}


def test_one_launched_worker_keeps_tensorflows_defaults_and_two_share_the_cores(tmp_path: Path) -> None:
    _, one, _ = _launch("threads", tmp_path, workers=1, cores=2, env=_NO_THREAD_VARIABLES)
    _, two, _ = _launch("threads", tmp_path, workers=2, cores=2, env=_NO_THREAD_VARIABLES)
    assert _threads(one) == {"worker 0": "intra=- inter=-"}
    assert _threads(two) == {"worker 0": "intra=1 inter=1", "worker 1": "intra=1 inter=1"}


@pytest.mark.slow
def test_tensorflow_in_each_launched_worker_sizes_its_pool_from_the_launchers_share(tmp_path: Path) -> None:
    # More threads than this machine has cores: TensorFlow's default (one per core) cannot give it by chance.
    share = (os.cpu_count() or 1) + 1
    out = io.StringIO()
    code = launch_module.launch([], workers=2, cores=2 * share, env=_NO_THREAD_VARIABLES,
                                module="tests.trainer.threads_child", cwd=str(ROOT), stdout=out, stderr=io.StringIO())
    assert code == 0
    counts = sorted(line for line in out.getvalue().splitlines() if "inter-op threads" in line)
    assert counts == [f"[worker {rank}] inter-op threads {share}" for rank in (0, 1)], out.getvalue()


def test_the_launch_command_refuses_negative_threads_per_worker(capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import main

    assert main(["launch", "--threads-per-worker", "-1", "--", "search"]) == 2
    assert "Expected --threads-per-worker >= 0. Received: --threads-per-worker=-1" in capsys.readouterr().err
