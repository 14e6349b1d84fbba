"""Faults a real server cannot be made to produce on demand, injected by the fake servers in servers.py
(over real loopback gRPC and HTTP): a chosen number of UNAVAILABLE or RESOURCE_EXHAUSTED answers, a
version stuck LOADING, and the headers a server received; plus the client's own bookkeeping (one
deadline per call) checked with a mock transport and a fake clock. Everything else runs against the
real local model server (test_real_server.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.client import (
    Client,
    DeadlineExceeded,
    InvalidInput,
    MockTransport,
    Reply,
    Request,
    RetryPolicy,
    Unavailable,
)
from tests.serving.client.servers import ToyModel

X = np.array([[1, 2, 3], [4, 5, 6]], np.float32)


def _client(target: str, **kwargs: object) -> Client:
    kwargs.setdefault("registry", CollectorRegistry())
    return Client(target, "toy", **kwargs)  # type: ignore[arg-type]


def test_classify_and_regress(target: str) -> None:
    with _client(target) as client:
        classes = client.classify([{"f": [1.0]}, {"f": [1.0, 1.0], "word": b"x", "n": 3}], signature="classify")
        values = client.regress([{"f": [1.0, 2.5]}, {"f": 4.0}], signature="regress")
    assert classes == [[("one", 0.75), ("other", 0.25)], [("two", 0.75), ("other", 0.25)]]
    assert values.dtype == np.float32 and values.tolist() == [3.5, 4.0]


def test_status_and_ready_look_for_available(target: str, toy: ToyModel) -> None:
    with _client(target) as client:
        status = client.status()
        assert [(v.version, v.state) for v in status.versions] == [(1, "AVAILABLE"), (2, "AVAILABLE")]
        assert client.ready()
        toy.versions = {3: "LOADING"}
        assert client.status().versions[0].state == "LOADING"
        assert not client.ready()  # the server answers (REST: 200) but nothing is AVAILABLE yet
    with Client(target, "nope", registry=CollectorRegistry()) as missing:
        assert not missing.ready()


def test_missing_inputs_are_named(target: str, toy: ToyModel) -> None:
    from serving.client import MockTransport
    from serving.client._model import ModelMetadata, Signature, TensorSpec

    two = Signature("serving_default", {"a": TensorSpec("a", "DT_FLOAT", (None,)),
                                        "b": TensorSpec("b", "DT_INT64", None)}, {})
    transport = MockTransport(lambda request: ModelMetadata("toy", 1, {"serving_default": two}))
    with (
        Client("unused:1", "toy", transport=transport, registry=CollectorRegistry()) as client,
        pytest.raises(InvalidInput, match=r"missing \['b'\]"),
    ):
        client.predict({"a": [1.0]})
    assert [r.method for r in transport.requests] == ["metadata"]


def test_headers_reach_the_server_as_metadata(target: str, toy: ToyModel) -> None:
    with _client(target, headers={"x-tenant": "blue", "authorization": "Bearer t0k"}) as client:
        client.status()
    assert toy.headers[-1]["x-tenant"] == "blue" and toy.headers[-1]["authorization"] == "Bearer t0k"


def test_retries_unavailable_until_the_server_recovers(target: str, toy: ToyModel) -> None:
    toy.fail_next = 2
    registry = CollectorRegistry()
    policy = RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.02)
    with _client(target, retry=policy, registry=registry, validate=False) as client:
        assert client.predict({"x": X})["total"].tolist() == [6.0, 15.0]
    assert toy.calls == ["predict"] * 3
    transport = "grpc" if not target.startswith("http") else "rest"
    labels = {"model": "toy", "method": "predict", "transport": transport, "code": "UNAVAILABLE"}
    assert registry.get_sample_value("tfstack_client_retries_total", labels) == 2


def test_retries_stop_after_the_attempts_and_raise_the_last_error(target: str, toy: ToyModel) -> None:
    toy.fail_next = 10
    policy = RetryPolicy(attempts=3, initial_backoff=0.0, max_backoff=0.0)
    with (
        _client(target, retry=policy, validate=False) as client,
        pytest.raises(Unavailable, match="injected failure") as info,
    ):
        client.predict({"x": X})
    assert isinstance(info.value, ConnectionError)
    assert toy.calls == ["predict"] * 3


def test_resource_exhausted_is_retried_but_invalid_argument_is_not(target: str, toy: ToyModel) -> None:
    policy = RetryPolicy(attempts=5, initial_backoff=0.0, max_backoff=0.0)
    toy.fail_next, toy.fail_code = 1, grpc.StatusCode.RESOURCE_EXHAUSTED
    with _client(target, retry=policy, validate=False) as client:
        client.predict({"x": X})
        assert toy.calls == ["predict", "predict"]
        toy.fail_next, toy.fail_code = 1, grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InvalidInput):
            client.predict({"x": X})
    assert toy.calls == ["predict"] * 3


def test_retries_never_outlast_the_deadline(target: str, toy: ToyModel) -> None:
    toy.fail_next = 1000
    policy = RetryPolicy(attempts=1000, initial_backoff=0.05, max_backoff=0.05, multiplier=1.0)
    with _client(target, retry=policy, validate=False, timeout=0.5) as client:
        start = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):  # the last attempt may run out of time
            client.predict({"x": X})
        elapsed = time.monotonic() - start
    assert 2 <= len(toy.calls) < 100  # bounded by 0.5 s of 0-50 ms waits, not by the 1000 attempts
    assert elapsed < 2.0




class _ClockedTransport(MockTransport):
    """A mock transport on a fake clock: each call takes ``cost`` fake seconds and records its timeout."""

    def __init__(self, clock: list[float], cost: float, handler: Callable[[Request], object]) -> None:
        super().__init__(handler)
        self.clock, self.cost = clock, cost
        self.timeouts: list[float | None] = []

    def call(self, request: Request, timeout: float | None) -> Reply:
        self.timeouts.append(timeout)
        self.clock[0] += self.cost
        if timeout is not None and self.cost > timeout:
            raise DeadlineExceeded("took longer than the deadline", code="DEADLINE_EXCEEDED")
        return super().call(request, timeout)


def test_one_deadline_covers_metadata_and_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    """predict(timeout=t) fetches metadata and predicts within one deadline t, not t each."""
    from serving.client import _client as client_module
    from serving.client._model import ModelMetadata, Signature, TensorSpec

    clock = [1000.0]
    monkeypatch.setattr(client_module.time, "monotonic", lambda: clock[0])
    sig = Signature("serving_default", {"x": TensorSpec("x", "DT_FLOAT", (None,))}, {})
    meta = ModelMetadata("toy", 1, {"serving_default": sig})

    def answer(request: Request) -> object:
        return meta if request.method == "metadata" else {"y": np.zeros(1, np.float32)}

    transport = _ClockedTransport(clock, 0.6, answer)
    with Client("unused:1", "toy", transport=transport, registry=CollectorRegistry()) as client:
        with pytest.raises(DeadlineExceeded):
            client.predict({"x": [1.0]}, timeout=1.0)  # 0.6 s of metadata + 0.6 s of predict > 1.0 s
        assert transport.timeouts == [1.0, pytest.approx(0.4)]
        assert client.predict({"x": [1.0]}, timeout=1.0)["y"].tolist() == [0.0]  # metadata now cached
        assert transport.timeouts[-1] == 1.0


def test_the_retry_budget_stops_an_outage_from_multiplying_the_load(target: str, toy: ToyModel) -> None:
    """gRFC A6 throttling with the default budget (10 tokens, retries while more than 5 remain): a server
    that answers only UNAVAILABLE sees 5 attempts of the first call and 1 of the next, not one per
    backoff until each deadline; successes earn the budget back."""
    toy.fail_next = 1000
    registry = CollectorRegistry()
    transport = "rest" if target.startswith("http") else "grpc"
    labels = {"model": "toy", "method": "predict", "transport": transport}
    with _client(target, retry=RetryPolicy(initial_backoff=0.0, max_backoff=0.0), validate=False,
                 registry=registry) as client:
        with pytest.raises(Unavailable):
            client.predict({"x": X})
        assert toy.calls == ["predict"] * 5
        with pytest.raises(Unavailable):
            client.predict({"x": X})
        assert toy.calls == ["predict"] * 6
        assert registry.get_sample_value("tfstack_client_retries_throttled_total", labels) == 2
        assert registry.get_sample_value("tfstack_client_retries_total", {**labels, "code": "UNAVAILABLE"}) == 4
        toy.fail_next = 0
        for _ in range(30):  # 30 successes x 0.1 token: 4 -> 7, so one failure leaves more than half
            client.predict({"x": X})
        toy.fail_next = 1
        assert client.predict({"x": X})["total"].tolist() == [6.0, 15.0]  # retried again


def test_refused_connections_do_not_spend_the_budget(target: str) -> None:
    """Nothing reached a server, so the budget is kept: the call keeps trying until its deadline."""
    from tests.serving.client.conftest import free_port

    dead = f"127.0.0.1:{free_port()}"
    registry = CollectorRegistry()
    transport = "rest" if target.startswith("http") else "grpc"
    with Client(f"http://{dead}" if transport == "rest" else dead, "toy", timeout=1.5, validate=False,
                retry=RetryPolicy(max_backoff=0.05), registry=registry) as client:
        start = time.monotonic()
        with pytest.raises(Unavailable) as info:
            client.predict({"x": X})
        assert time.monotonic() - start >= 1.0  # retried until (nearly) the deadline
    assert info.value.unserved
    labels = {"model": "toy", "method": "predict", "transport": transport}
    assert registry.get_sample_value("tfstack_client_retries_total", {**labels, "code": "UNAVAILABLE"}) > 5
    assert registry.get_sample_value("tfstack_client_retries_throttled_total", labels) == 0
