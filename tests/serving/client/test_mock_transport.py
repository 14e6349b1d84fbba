"""The ``transport=`` seam: the client's logic (validation, retries, deadlines) with a MockTransport."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.client import (
    AsyncClient,
    AsyncMockTransport,
    Client,
    InvalidInput,
    MockTransport,
    ModelMetadata,
    Request,
    RetryPolicy,
    Signature,
    TensorSpec,
    Unavailable,
)
from serving.client._errors import CallContext, make_error

SIG = Signature(
    "serving_default",
    {"pixels": TensorSpec("pixels", "DT_FLOAT", (None, 2, 2, 3)), "name": TensorSpec("name", "DT_STRING", (None,))},
    {"p": TensorSpec("p", "DT_FLOAT", (None, 3))},
)
META = ModelMetadata("m", 1, {"serving_default": SIG})


def _handler(failures: list[int]) -> object:
    def handle(request: Request) -> object:
        if request.method == "metadata":
            return META
        if failures[0] > 0:
            failures[0] -= 1
            raise make_error("UNAVAILABLE", "try later", CallContext("m", request.method, "mock"))
        return {"p": np.ones((len(request.inputs["pixels"]), 3), np.float32)}

    return handle


def test_requests_carry_validated_arrays_and_the_model_spec() -> None:
    transport = MockTransport(_handler([0]))
    with Client("ignored:1", "m", transport=transport, version_label="stable",
                registry=CollectorRegistry()) as client:
        out = client.predict({"pixels": np.zeros((2, 2, 2, 3), np.float32), "name": ["a", b"b"]},
                             output_filter=["p"])
    assert out["p"].shape == (2, 3)
    request = transport.requests[-1]
    assert (request.method, request.model, request.version_label, request.signature) == (
        "predict", "m", "stable", "serving_default")
    assert request.inputs["name"].dtype == object and request.inputs["name"].tolist() == ["a", b"b"]
    assert request.output_filter == ("p",) and request.outputs == SIG.outputs


def test_lists_are_converted_to_the_signature_dtype() -> None:
    transport = MockTransport(_handler([0]))
    with Client("ignored:1", "m", transport=transport, registry=CollectorRegistry()) as client:
        client.predict({"pixels": np.zeros((1, 2, 2, 3)).tolist(), "name": ["x"]})
    assert transport.requests[-1].inputs["pixels"].dtype == np.float32


def test_unknown_output_filter_is_refused() -> None:
    with (
        Client("ignored:1", "m", transport=MockTransport(_handler([0])), registry=CollectorRegistry()) as client,
        pytest.raises(InvalidInput, match=r"unknown \['q'\]"),
    ):
        client.predict({"pixels": np.zeros((1, 2, 2, 3), np.float32), "name": [b""]}, output_filter=["q"])


def test_version_and_label_together_are_refused() -> None:
    with pytest.raises(ValueError, match="at most one of version and version_label"):
        Client("ignored:1", "m", version=1, version_label="stable", transport=MockTransport(_handler([0])))


def test_async_client_retries_through_the_async_seam() -> None:
    failures = [2]
    transport = AsyncMockTransport(_handler(failures))
    policy = RetryPolicy(attempts=3, initial_backoff=0.0, max_backoff=0.0)

    async def run() -> None:
        async with AsyncClient("ignored:1", "m", transport=transport, retry=policy,
                               registry=CollectorRegistry()) as client:
            out = await client.predict({"pixels": np.zeros((1, 2, 2, 3), np.float32), "name": [b"x"]})
            assert out["p"].tolist() == [[1, 1, 1]]
            failures[0] = 5
            with pytest.raises(Unavailable):
                await client.predict({"pixels": np.zeros((1, 2, 2, 3), np.float32), "name": [b"x"]})

    asyncio.run(run())
    assert [r.method for r in transport.requests].count("predict") == 3 + 3


def test_backoff_is_full_jitter_capped_exponential() -> None:
    policy = RetryPolicy(attempts=10, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    rng = random.Random(0)
    for retry, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        waits = [policy.backoff(retry, rng) for _ in range(200)]
        assert min(waits) >= 0 and max(waits) <= cap
        assert max(waits) > cap * 0.8  # spread over the whole range, not a fixed delay


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"initial_backoff": -1.0}, {"multiplier": 0.5}], ids=["attempts", "backoff", "mult"]
)
def test_retry_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Expected"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_grpc_channel_options_carry_keepalive_size_limits_and_tls_name() -> None:
    from serving.client._transports.grpc import GrpcTransport, channel_options

    options = dict(channel_options(1234, 15.0, "serving.internal"))
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 1234
    assert options["grpc.keepalive_time_ms"] == 15_000
    assert options["grpc.ssl_target_name_override"] == "serving.internal"
    assert "grpc.keepalive_time_ms" not in dict(channel_options(1, None))
    transport = GrpcTransport("127.0.0.1:1", metadata=[("X-Tenant", "blue")])
    try:  # one channel and one multicallable per method, made once, reused by every call
        assert set(transport._methods) == {"predict", "classify", "regress", "metadata", "status"}
        assert transport.metadata == (("x-tenant", "blue"),)
    finally:
        transport.close()


def test_undecodable_grpc_answers_and_unencodable_inputs_are_typed_errors() -> None:
    from serving.client import ServerError
    from serving.client._transports.grpc import _decode_checked, _encode_checked

    request = Request("predict", "m", inputs={"x": np.array(["2024-01-01"], dtype="datetime64[D]")})
    with pytest.raises(InvalidInput, match="Expected a numpy dtype"):
        _encode_checked(request, "grpc")
    with pytest.raises(ServerError, match="undecodable predict answer") as info:
        _decode_checked(Request("predict", "m"), b"\x0a\x05\x0a\x01x\x12\x09", "grpc")
    assert info.value.code == "DATA_LOSS" and info.value.model == "m"


def _scripted(codes: list[str]) -> object:
    """Answers predicts with the errors named in ``codes`` (in order), then successfully."""
    script = list(codes)

    def handle(request: Request) -> object:
        if request.method == "metadata":
            return META
        if script:
            raise make_error(script.pop(0), "scripted", CallContext("m", request.method, "mock"))
        return {"p": np.ones((1, 3), np.float32)}

    return handle


def _samples(registry: CollectorRegistry) -> dict[tuple[str, ...], float]:
    return {(s.name, *sorted(s.labels.items())): s.value for family in registry.collect()  # type: ignore[misc]
            for s in family.samples if "_bucket" not in s.name and "_sum" not in s.name}


@pytest.mark.parametrize(("codes", "attempts"), [
    (["UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED"], 4),
    (["UNAVAILABLE", "INVALID_ARGUMENT"], 2),
    (["UNAVAILABLE"] * 8, 5),  # the budget: 10 tokens, retries while more than 5 remain
], ids=["recovers", "refused", "budget-spent"])
def test_sync_and_async_clients_take_the_same_steps(codes: list[str], attempts: int) -> None:
    """One core drives both shells: the same faults give the same attempts, outcome and metrics."""
    inputs = {"pixels": np.zeros((1, 2, 2, 3), np.float32), "name": [b"x"]}
    policy = RetryPolicy(initial_backoff=0.0, max_backoff=0.0)
    sync_transport, sync_registry = MockTransport(_scripted(codes)), CollectorRegistry()
    with Client("ignored:1", "m", transport=sync_transport, retry=policy, registry=sync_registry) as client:
        try:
            sync_outcome: object = client.predict(inputs)["p"].tolist()
        except Exception as exc:
            sync_outcome = type(exc)
    async_transport, async_registry = AsyncMockTransport(_scripted(codes)), CollectorRegistry()

    async def run() -> object:
        async with AsyncClient("ignored:1", "m", transport=async_transport, retry=policy,
                               registry=async_registry) as client:
            try:
                return (await client.predict(inputs))["p"].tolist()
            except Exception as exc:
                return type(exc)

    assert asyncio.run(run()) == sync_outcome
    assert [r.method for r in async_transport.requests] == [r.method for r in sync_transport.requests]
    assert _samples(async_registry) == _samples(sync_registry)
    assert [r.method for r in sync_transport.requests] == ["metadata"] + ["predict"] * attempts


def test_a_cancelled_async_call_is_counted_and_propagates() -> None:
    started = asyncio.Event()

    async def hang(request: Request) -> object:
        if request.method == "metadata":
            return META
        started.set()
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    registry = CollectorRegistry()

    async def run() -> None:
        async with AsyncClient("ignored:1", "m", transport=AsyncMockTransport(hang), registry=registry) as client:
            task = asyncio.create_task(client.predict({"pixels": np.zeros((1, 2, 2, 3), np.float32),
                                                       "name": [b"x"]}))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    labels = {"model": "m", "method": "predict", "transport": "mock"}
    assert registry.get_sample_value("tfstack_client_requests_total", {**labels, "code": "UNKNOWN"}) == 1
    assert registry.get_sample_value("tfstack_client_requests_in_flight", labels) == 0
