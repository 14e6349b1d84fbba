"""Tests for trainer.rendezvous (bounded cluster formation) and trainer.watchdog (stall detection)."""

from __future__ import annotations

import threading

import pytest

from trainer.cluster import Cluster
from trainer.errors import EXIT_PEER_LOST, ClusterFormationError, exit_code
from trainer.launch import free_ports
from trainer.rendezvous import form_group
from trainer.watchdog import StallWatchdog


def _clusters(workers: int) -> list[Cluster]:
    peers = tuple(f"127.0.0.1:{port}" for port in free_ports(workers))
    return [Cluster(peers=peers, rank=rank, source="tf_config") for rank in range(workers)]


def test_single_process_needs_no_rendezvous() -> None:
    form_group(Cluster(peers=(), rank=0, source="single"), timeout=0.0)


def test_three_workers_form_a_group() -> None:
    clusters = _clusters(3)
    errors: list[BaseException] = []

    def run(cluster: Cluster) -> None:
        try:
            form_group(cluster, timeout=120)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in clusters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert errors == [] and not any(t.is_alive() for t in threads)


def test_a_peer_that_never_starts_is_named_within_the_timeout() -> None:
    chief, _absent = _clusters(2)
    with pytest.raises(ClusterFormationError) as info:
        form_group(chief, timeout=1.0)
    assert f"worker 1 ({chief.peers[1]})" in str(info.value)
    assert info.value.missing == (f"worker 1 ({chief.peers[1]})",)
    assert exit_code(info.value) == EXIT_PEER_LOST


def test_the_port_is_free_again_after_formation() -> None:
    clusters = _clusters(2)
    threads = [threading.Thread(target=form_group, args=(c, 120)) for c in clusters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    import socket

    for address in clusters[0].peers:  # TensorFlow's gRPC server binds these ports next
        with socket.create_server(("", int(address.rsplit(":", 1)[1]))):
            pass


def test_watchdog_fires_only_when_armed_and_stalled() -> None:
    now = [0.0]
    fired: list[str] = []
    watchdog = StallWatchdog(10.0, on_stall=fired.append, clock=lambda: now[0])
    now[0] = 100.0
    assert watchdog.check() is False  # not armed
    with watchdog.armed("trial 3"):
        now[0] = 105.0
        assert watchdog.check() is False
        watchdog.beat()
        now[0] = 114.0
        assert watchdog.check() is False
        now[0] = 115.0
        assert watchdog.check() is True
    assert len(fired) == 1 and "during trial 3" in fired[0] and "--collective-timeout" in fired[0]
    now[0] = 1000.0
    assert watchdog.check() is False  # disarmed after the block


def test_watchdog_thread_reports_a_real_stall() -> None:
    fired = threading.Event()
    messages: list[str] = []

    def on_stall(message: str) -> None:
        messages.append(message)
        fired.set()

    watchdog = StallWatchdog(0.2, on_stall=on_stall)
    with watchdog.armed("a stuck collective"):
        assert fired.wait(timeout=60)
    watchdog.close()
    assert "a stuck collective" in messages[0]


def test_watchdog_with_zero_timeout_never_fires() -> None:
    watchdog = StallWatchdog(0, on_stall=lambda m: pytest.fail(m), clock=lambda: 1e9)
    with watchdog.armed("x"):
        assert watchdog.check() is False
