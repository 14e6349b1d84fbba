"""The client in front of a fleet of real local model servers: balancing one target over two replicas,
riding a restart of the only server, and a rolling restart of two replicas under load.

Per-replica counts come from each server's own metrics page (tests/serving/client/replicas.py), never
from the client's counters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.client import Client, ResourceExhausted, RetryPolicy
from tests.serving.client.conftest import free_port
from tests.serving.client.models import MODEL, copy_version
from tests.serving.client.replicas import Replica, monitoring_config, poll, predicts_served, start_in_process

X = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
Y = (2 * X + 1).tolist()  # version 1 of the toy model


@pytest.fixture
def toy_base(tmp_path: Path, toy_versions: dict[int, Path]) -> Path:
    base = tmp_path / MODEL
    base.mkdir()
    copy_version(toy_versions[1], base, 1)
    return base


@pytest.fixture
def two_replicas(toy_base: Path, tmp_path: Path) -> Iterator[list[Any]]:
    """Two in-process servers of the same model, each with its own metrics page."""
    monitoring = monitoring_config(tmp_path)
    servers: list[Any] = []
    try:
        for _ in range(2):
            servers.append(start_in_process(toy_base, f"--monitoring_config_file={monitoring}", rest_port=free_port()))
        yield servers
    finally:
        for server in servers:
            server.stop(grace=5.0)


def _retries(registry: CollectorRegistry, transport: str) -> float:
    return sum(
        sample.value for family in registry.collect() if family.name == "tfstack_client_retries"
        for sample in family.samples
        if sample.name == "tfstack_client_retries_total" and sample.labels["transport"] == transport
    )


# ---------------------------------------------------------------------------------------------- balancing


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_one_target_spreads_predicts_over_two_replicas(two_replicas: list[Any], transport: str) -> None:
    a, b = two_replicas
    if transport == "grpc":  # what a headless Service's name resolves to, written out
        target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
    else:
        target = f"http://127.0.0.1:{a.rest_port},http://127.0.0.1:{b.rest_port}"
    before = [predicts_served(s.rest_port) for s in two_replicas]
    with Client(target, MODEL, registry=CollectorRegistry()) as client:
        for _ in range(200):
            assert client.predict({"x": X})["y"].tolist() == Y
    served = [predicts_served(s.rest_port) - n for s, n in zip(two_replicas, before, strict=True)]
    print(f"FIGURE spread {transport}: replicas served {served} of 200 ({min(served) / 2:.1f} % the least)")
    assert sum(served) == 200
    assert min(served) >= 60, served  # each replica at least 30 %


def test_pick_first_override_sends_everything_to_one_replica(two_replicas: list[Any]) -> None:
    """The default (round_robin) is what balances: gRPC's own default policy pins one address."""
    a, b = two_replicas
    before = [predicts_served(s.rest_port) for s in two_replicas]
    target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
    with Client(target, MODEL, load_balancing="pick_first", registry=CollectorRegistry()) as client:
        for _ in range(50):
            client.predict({"x": X})
    served = [predicts_served(s.rest_port) - n for s, n in zip(two_replicas, before, strict=True)]
    assert sorted(served) == [0, 50]


def test_rest_skips_a_base_url_that_refuses_connections(two_replicas: list[Any]) -> None:
    """A dead URL among live ones costs a retry when it is met, then is skipped for a second, as gRPC
    skips a subchannel in reconnect backoff: not one refused connection every third call."""
    a, b = two_replicas
    urls = [f"http://127.0.0.1:{a.rest_port}", f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{b.rest_port}"]
    registry = CollectorRegistry()
    with Client(",".join(urls), MODEL, registry=registry) as client:
        start = time.monotonic()
        for _ in range(60):
            assert client.predict({"x": X})["y"].tolist() == Y
        elapsed = time.monotonic() - start
    assert 1 <= _retries(registry, "rest") <= 2 + elapsed  # at most one refusal per second skipped


# ---------------------------------------------------------------------------------------------- restarts


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_predict_issued_while_the_only_server_restarts_succeeds(toy_base: Path, transport: str) -> None:
    """The scenario of a pod restart: the server goes away, a predict is issued, a new server comes up on
    the same ports 2 s later. The client's defaults (30 s deadline, default RetryPolicy) carry the call."""
    rest_port = free_port()
    servers = [start_in_process(toy_base, rest_port=rest_port)]
    grpc_port = servers[0].grpc_port
    target = f"127.0.0.1:{grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{rest_port}"
    registry = CollectorRegistry()
    failures: list[BaseException] = []

    def start_again() -> None:
        try:
            servers.append(start_in_process(toy_base, grpc_port=grpc_port, rest_port=rest_port))
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    try:
        with Client(target, MODEL, registry=registry) as client:
            assert client.predict({"x": X})["y"].tolist() == Y
            servers[0].stop(grace=5.0)
            restarter = threading.Timer(2.0, start_again)  # the scenario's delay, not a synchronisation
            restarter.start()
            start = time.monotonic()
            out = client.predict({"x": X})
            elapsed = time.monotonic() - start
            restarter.join()
    finally:
        for server in servers[1:]:
            server.stop(grace=5.0)
    print(f"FIGURE restart {transport}: predict succeeded after {elapsed:.2f} s "
          f"({_retries(registry, transport):.0f} retries), server down 2 s + its start-up")
    assert not failures
    assert out["y"].tolist() == Y
    assert 2.0 <= elapsed < 30.0  # it waited for the new server, within the default deadline
    assert _retries(registry, transport) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_rolling_restart_of_two_replicas_under_four_busy_threads(
    toy_base: Path, tmp_path: Path, transport: str
) -> None:
    """Two ``python -m serving.model_server`` processes restarted in turn (SIGTERM, exit, a new process on
    the same ports, ready) while four threads predict through one client: no predict fails."""
    monitoring = monitoring_config(tmp_path)
    replicas = [Replica(toy_base, free_port(), free_port(), tmp_path / f"replica{i}.log",
                        f"--monitoring_config_file={monitoring}") for i in range(2)]
    ok, failed, lock, stop = [0], [], threading.Lock(), threading.Event()
    registry = CollectorRegistry()
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        if transport == "grpc":
            target = "ipv4:" + ",".join(r.grpc_target for r in replicas)
        else:
            target = ",".join(r.rest_url for r in replicas)
        with Client(target, MODEL, registry=registry) as client:
            assert client.predict({"x": X})["y"].tolist() == Y

            def busy() -> None:
                while not stop.is_set():
                    try:
                        good = client.predict({"x": X})["y"].tolist() == Y
                    except Exception as exc:
                        with lock:
                            failed.append(repr(exc))
                        continue
                    with lock:
                        ok[0] += 1 if good else 0
                        if not good:
                            failed.append("wrong answer")

            threads = [threading.Thread(target=busy) for _ in range(4)]
            for thread in threads:
                thread.start()
            try:
                poll(lambda: ok[0] >= 20, what="traffic flowing")
                for replica in replicas:
                    replica.restart()
                    # the new process takes traffic again: the client reconnected to it by itself
                    poll(lambda replica=replica: predicts_served(replica.rest_port) > 0, timeout=30,
                         what="traffic to the restarted replica")
            finally:
                stop.set()
                for thread in threads:
                    thread.join(60)
    finally:
        for replica in replicas:
            replica.kill()
    print(f"FIGURE rolling {transport}: {ok[0]} predicts OK, {len(failed)} failed, "
          f"{_retries(registry, transport):.0f} retries, exit codes {[r.exit_codes for r in replicas]}")
    assert failed == []
    assert [r.exit_codes for r in replicas] == [[0], [0]]
    assert ok[0] >= 60


# ---------------------------------------------------------------------------------------------- refusals


def test_a_request_refused_for_its_decoded_size_is_not_retried(toy_base: Path) -> None:
    """The real server's per-request decoded-size limit (RESOURCE_EXHAUSTED naming
    max_decoded_request_bytes): the same request would fail again, so it is sent once."""
    server = start_in_process(toy_base, rest_port=free_port(), max_decoded_request_bytes=1000)
    registry = CollectorRegistry()
    try:
        with Client(f"127.0.0.1:{server.grpc_port}", MODEL, registry=registry,
                    retry=RetryPolicy(initial_backoff=0.0, max_backoff=0.0)) as client:
            with pytest.raises(ResourceExhausted) as info:
                client.predict({"x": np.zeros((1000, 3), np.float32)})
            assert info.value.size_limit and not info.value.retryable
            assert client.predict({"x": X})["y"].tolist() == Y
    finally:
        server.stop(grace=5.0)
    assert _retries(registry, "grpc") == 0
    assert registry.get_sample_value("tfstack_client_requests_total", {
        "model": MODEL, "method": "predict", "transport": "grpc", "code": "RESOURCE_EXHAUSTED"}) == 1
