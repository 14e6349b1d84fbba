"""The client against real loopback servers, over both transports (gRPC and REST)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ResourceExhausted,
    RetryPolicy,
    Unavailable,
)
from tests.serving.client.servers import ToyModel

X = np.array([[1, 2, 3], [4, 5, 6]], np.float32)


def _client(target: str, **kwargs: object) -> Client:
    kwargs.setdefault("registry", CollectorRegistry())
    return Client(target, "toy", **kwargs)  # type: ignore[arg-type]


def test_predict_returns_numpy_outputs(target: str, toy: ToyModel) -> None:
    with _client(target) as client:
        out = client.predict({"x": X})
    assert sorted(out) == ["tag", "total", "y"]
    assert out["y"].dtype == np.float32 and out["y"].tolist() == (X * 2 + 2).tolist()  # latest = v2
    assert out["total"].dtype == np.float64 and out["total"].tolist() == [6.0, 15.0]
    assert out["tag"].dtype == object and out["tag"].tolist() == [b"row0", b"row1"]
    assert np.array_equal(toy.seen[-1]["x"], X)


def test_predict_accepts_lists_and_pins_versions_and_labels(target: str) -> None:
    with _client(target) as client:
        assert client.predict({"x": [[0, 0, 0]]}, version=1)["y"].tolist() == [[1, 1, 1]]
        assert client.predict({"x": [[0, 0, 0]]}, version_label="canary")["y"].tolist() == [[2, 2, 2]]
    with _client(target, version_label="stable") as client:
        assert client.predict({"x": [[0, 0, 0]]})["y"].tolist() == [[1, 1, 1]]


def test_predict_bytes_inputs_and_output_filter(target: str) -> None:
    images = [b"\x89PNG\r\n", b"\xff\xd8\xff\xe0 jfif", b""]
    with _client(target) as client:
        out = client.predict({"images": images}, signature="images", output_filter=["class_name", "class_id"])
    assert sorted(out) == ["class_id", "class_name"]
    assert out["class_id"].dtype == np.int64 and out["class_id"].shape == (3,)
    assert all(isinstance(v, bytes) for v in out["class_name"].tolist())


def test_classify_and_regress(target: str) -> None:
    with _client(target) as client:
        classes = client.classify([{"f": [1.0]}, {"f": [1.0, 1.0], "word": b"x", "n": 3}], signature="classify")
        values = client.regress([{"f": [1.0, 2.5]}, {"f": 4.0}], signature="regress")
    assert classes == [[("one", 0.75), ("other", 0.25)], [("two", 0.75), ("other", 0.25)]]
    assert values.dtype == np.float32 and values.tolist() == [3.5, 4.0]


def test_metadata_is_typed_and_cached(target: str, toy: ToyModel) -> None:
    with _client(target) as client:
        meta = client.metadata()
        again = client.metadata()
        fresh = client.metadata(refresh=True)
    assert meta is again and fresh == meta
    assert toy.calls.count("metadata") == 2
    assert meta.model == "toy" and meta.version == 2
    sig = meta.signatures["serving_default"]
    assert sig.inputs["x"].dtype == "DT_FLOAT" and sig.inputs["x"].shape == (None, 3)
    assert sig.outputs["tag"].dtype == "DT_STRING" and sig.method_name == "tensorflow/serving/predict"
    assert meta.signatures["echo"].inputs["any"].shape is None


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


def test_unknown_model_raises_model_not_found(target: str) -> None:
    with Client(target, "nope", registry=CollectorRegistry()) as client, pytest.raises(ModelNotFound) as info:
        client.predict({"x": X}, version=4)
    assert isinstance(info.value, LookupError)
    assert info.value.model == "nope" and info.value.version == 4
    assert "Servable not found" in str(info.value)


def test_server_side_invalid_argument_raises_invalid_input(target: str) -> None:
    with _client(target, validate=False) as client, pytest.raises(InvalidInput) as info:
        client.predict({"x": np.ones((2, 5), np.float32)})
    assert info.value.code == "INVALID_ARGUMENT" and "bad tensor" in str(info.value)


@pytest.mark.parametrize(
    ("inputs", "signature", "message"),
    [
        ({"nope": X}, None, "unknown input 'nope'"),
        ({"x": X.astype(np.float64)}, None, "dtype DT_FLOAT"),
        ({"x": np.ones((2, 4), np.float32)}, None, "dimension 1 = 3"),
        ({"x": np.ones(3, np.float32)}, None, "rank 2"),
        ({"images": [1.5]}, "images", "dtype DT_STRING"),
        ({"x": X}, "missing_sig", "among ['classify', 'echo'"),
        ({}, None, "non-empty mapping"),
        ({"x": [["a", 1, 2]]}, None, "'x'"),
    ],
    ids=["unknown-key", "dtype", "shape", "rank", "string-dtype", "signature", "empty", "unconvertible"],
)
def test_validation_refuses_bad_inputs_before_sending(
    target: str, toy: ToyModel, inputs: dict[str, object], signature: str | None, message: str
) -> None:
    with _client(target) as client:
        client.metadata()
        with pytest.raises(InvalidInput, match=message.replace("[", r"\[")) as info:
            client.predict(inputs, signature=signature)
    assert isinstance(info.value, ValueError)
    assert "predict" not in toy.calls  # nothing was sent


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


def test_echo_carries_every_dtype_through_the_server(target: str) -> None:
    arrays = {
        "int8": np.array([[-3, 4]], np.int8), "uint16": np.array([65535], np.uint16),
        "int64": np.array([-(2**40)], np.int64), "bool": np.array([True, False]),
        "float16": np.array([1.5], np.float16), "float64": np.array([2.25]),
        "bytes": np.array([b"\x00ab"], dtype=object),
    }
    with _client(target, validate=False) as client:
        for name, array in arrays.items():
            outputs = client.predict({"any": array}, signature="echo")
            if target.startswith("http"):
                # JSON has no dtypes and a lone output comes back bare: without metadata (validate=False)
                # numpy infers the dtype and the output is keyed "outputs"
                assert outputs["outputs"].tolist() == array.tolist(), name
            else:
                out = outputs["out"]
                assert out.dtype == array.dtype and out.tolist() == array.tolist(), name


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


def test_deadline_exceeded_when_the_server_is_slow(target: str, toy: ToyModel) -> None:
    toy.block = threading.Event()
    with _client(target, validate=False, timeout=0.3) as client:
        with pytest.raises(DeadlineExceeded) as info:
            client.predict({"x": X})
        assert isinstance(info.value, TimeoutError)
        toy.block.set()
        toy.block = None
        assert client.predict({"x": X}, timeout=10)["total"].tolist() == [6.0, 15.0]


def test_unreachable_server_raises_unavailable(target: str) -> None:
    dead = "127.0.0.1:9" if not target.startswith("http") else "http://127.0.0.1:9"
    policy = RetryPolicy(attempts=2, initial_backoff=0.0, max_backoff=0.0)
    with (
        Client(dead, "toy", retry=policy, timeout=5, registry=CollectorRegistry()) as client,
        pytest.raises(Unavailable),
    ):
        client.status()


def test_async_client_over_the_same_servers(target: str, toy: ToyModel) -> None:
    async def run() -> None:
        async with AsyncClient(target, "toy", registry=CollectorRegistry(),
                               retry=RetryPolicy(initial_backoff=0.0, max_backoff=0.0)) as client:
            outs = await asyncio.gather(*(client.predict({"x": X * i}) for i in range(4)))
            assert [o["total"].tolist() for o in outs] == [[6.0 * i, 15.0 * i] for i in range(4)]
            assert (await client.status()).ready
            assert (await client.metadata()).signatures["images"].outputs["class_id"].dtype == "DT_INT64"
            assert (await client.classify([{"f": 2.0}], signature="classify"))[0][0] == ("two", 0.75)
            assert (await client.regress([{"f": [1.0, 1.0]}], signature="regress")).tolist() == [2.0]
            toy.fail_next = 1
            assert (await client.predict({"x": X}))["total"].tolist() == [6.0, 15.0]
            with pytest.raises(InvalidInput):
                await client.predict({"x": X[0]})
            with pytest.raises(ModelNotFound):
                await client.predict({"x": X}, version=9)

    asyncio.run(run())


def test_large_messages_within_the_configured_limit(target: str) -> None:
    big = np.random.default_rng(1).random((2000, 3), dtype=np.float32)
    with _client(target) as client:
        out = client.predict({"x": big})
    assert np.allclose(out["y"], big * 2 + 2)


def test_max_message_size_is_enforced_by_the_client(grpc_target: str) -> None:
    big = np.zeros((100_000, 3), np.float32)  # 1.2 MB request
    with (
        _client(grpc_target, max_message_bytes=100_000, validate=False) as client,
        pytest.raises(ResourceExhausted) as info,
    ):
        client.predict({"x": big})
    assert info.value.code == "RESOURCE_EXHAUSTED" and "larger than max" in str(info.value)


def test_rest_row_format(rest_target: str, toy: ToyModel) -> None:
    with _client(rest_target, rest_format="row") as client:
        out = client.predict({"x": X})
        images = client.predict({"images": [b"ab", b"\xff"]}, signature="images")
    assert out["y"].dtype == np.float32 and out["y"].tolist() == (X * 2 + 2).tolist()
    assert out["tag"].tolist() == [b"row0", b"row1"]
    assert images["class_id"].dtype == np.int64 and images["class_id"].shape == (2,)
    assert toy.seen[-1]["images"].tolist() == [b"ab", b"\xff"]


def test_rest_refuses_complex_inputs(rest_target: str) -> None:
    with _client(rest_target, validate=False) as client, pytest.raises(InvalidInput, match="no complex numbers"):
        client.predict({"any": np.array([1j])}, signature="echo")
