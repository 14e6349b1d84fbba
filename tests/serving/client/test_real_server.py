"""The client against the real local model server (``serving.model_server``), over gRPC and REST.

Every answer here comes from a real SavedModel (tests/serving/client/models.py) served over real
loopback sockets; the fake servers in servers.py remain only for faults a real server cannot be made
to produce on demand (tests/serving/client/test_faults.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import ml_dtypes
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
from tests.serving.client.conftest import free_port, start_model_server
from tests.serving.client.models import ECHO_DTYPES, MODEL, build_toy_model, copy_version
from tests.serving.client.replicas import poll

X = np.array([[1, 2, 3], [4, 5, 6]], np.float32)


def _client(target: str, **kwargs: Any) -> Client:
    kwargs.setdefault("registry", CollectorRegistry())
    return Client(target, MODEL, **kwargs)


def _transport(target: str) -> str:
    return "rest" if target.startswith("http") else "grpc"


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------------------------- predict


def test_predict_returns_numpy_outputs_of_the_latest_version(served: str) -> None:
    with _client(served) as client:
        out = client.predict({"x": X})
    assert out["y"].dtype == np.float32 and out["y"].tolist() == (2 * X + 2).tolist()  # offset 2: version 2
    assert out["total"].tolist() == [6.0, 15.0]
    assert out["tag"].tolist() == [b"row0", b"row1"]


def test_versions_and_labels_pick_the_answering_version(served: str) -> None:
    with _client(served) as client:
        assert client.predict({"x": X}, version=1)["y"].tolist() == (2 * X + 1).tolist()
        assert client.predict({"x": X}, version_label="stable")["y"].tolist() == (2 * X + 1).tolist()
        assert client.predict({"x": X}, version_label="canary")["y"].tolist() == (2 * X + 2).tolist()
        with pytest.raises(ModelNotFound):
            client.predict({"x": X}, version=9)
    with _client(served, version=1) as pinned:
        assert pinned.predict({"x": X})["y"].tolist() == (2 * X + 1).tolist()
        assert pinned.metadata().version == 1


def test_bytes_inputs_and_output_filter(served: str) -> None:
    with _client(served) as client:
        images = client.predict({"images": [b"ab", b"\xff", b"abc"]}, signature="images")
        only_total = client.predict({"x": X}, output_filter=["total"])
    assert images["class_id"].dtype == np.int64 and images["class_id"].tolist() == [2, 1, 0]
    assert set(only_total) == {"total"}


def test_rest_row_format(toy_server: Any) -> None:
    with _client(f"http://127.0.0.1:{toy_server.rest_port}", rest_format="row") as client:
        out = client.predict({"x": X})
    assert out["y"].dtype == np.float32 and out["y"].tolist() == (2 * X + 2).tolist()
    assert out["tag"].tolist() == [b"row0", b"row1"]


def test_every_dtype_round_trips_where_the_transport_carries_it(served: str) -> None:
    """gRPC carries every TensorFlow dtype of the codec's table; TF Serving's JSON (json_tensor.cc) has no
    float16, bfloat16, uint16 or complex numbers, and the REST client refuses those before sending."""
    rest = _transport(served) == "rest"
    refused_by_json = {"float16", "bfloat16", "uint16", "complex64", "complex128"}
    with _client(served) as client:
        for name in ECHO_DTYPES:
            if name == "string":  # REST: an output alias without "_bytes" travels as UTF-8 text (api_rest.md)
                second = "é".encode() if rest else b"\x00\xff"
                array: np.ndarray = np.array([[b"a", second], [b"", b"z"]], dtype=object)
            elif name == "bool":
                array = np.array([True, False, True])
            elif name == "bfloat16":
                array = np.array([[1.5, -2.0]], dtype=ml_dtypes.bfloat16)
            elif name.startswith("complex"):
                array = np.array([1 + 2j, -3j], dtype=name)
            else:
                array = (np.arange(6).reshape(2, 3) % 5).astype(name)
            if rest and name in refused_by_json:
                with pytest.raises(InvalidInput, match="use gRPC"):
                    client.predict({"x": array}, signature=f"echo_{name}")
                continue
            out = client.predict({"x": array}, signature=f"echo_{name}")["y"]
            assert out.dtype == array.dtype, name
            assert out.shape == array.shape and out.tolist() == array.tolist(), name


# ---------------------------------------------------------------------------------------------- other methods


def test_metadata_is_typed_and_cached(served: str) -> None:
    with _client(served) as client:
        meta = client.metadata()
        assert client.metadata() is meta
        assert client.metadata(refresh=True) == meta
    assert meta.version == 2
    x = meta.signatures["serving_default"].inputs["x"]
    assert (x.dtype, x.shape) == ("DT_FLOAT", (None, 3))
    assert meta.signatures["images"].outputs["class_id"].dtype == "DT_INT64"
    assert meta.signatures["echo_uint64"].inputs["x"].shape is None  # unknown rank


def test_status_and_ready(served: str) -> None:
    with _client(served) as client:
        status = client.status()
        assert status.available_versions == (1, 2) and status.ready
        assert client.ready()
        assert client.status(version=1).available_versions == (1,)
    with Client(served, "no-such-model", registry=CollectorRegistry()) as missing:
        assert not missing.ready()
        with pytest.raises(ModelNotFound):
            missing.status()


def test_server_side_invalid_argument_raises_invalid_input(served: str) -> None:
    # validate=False sends strings where the signature wants float32: the server refuses them (JSON numbers
    # of any kind would be accepted for a float input, as json_tensor.cc does).
    with _client(served, validate=False) as client, pytest.raises(InvalidInput) as info:
        client.predict({"x": np.array([["a", "b", "c"]], dtype=object)})
    assert isinstance(info.value, ValueError) and info.value.code == "INVALID_ARGUMENT"
    assert info.value.transport == _transport(served)


@pytest.mark.parametrize(
    ("inputs", "signature", "message"),
    [
        ({"nope": X}, None, "unknown input 'nope'"),
        ({"x": X.astype(np.float64)}, None, "dtype DT_FLOAT"),
        ({"x": np.ones((2, 4), np.float32)}, None, "dimension 1 = 3"),
        ({"x": np.ones(3, np.float32)}, None, "rank 2"),
        ({"images": [1.5]}, "images", "dtype DT_STRING"),
        ({"x": X}, "missing_sig", "among ['__saved_model_init_op', 'echo_bfloat16'"),
        ({}, None, "non-empty mapping"),
        ({"x": [["a", 1, 2]]}, None, "'x'"),
    ],
    ids=["unknown-key", "dtype", "shape", "rank", "string-dtype", "signature", "empty", "unconvertible"],
)
def test_validation_refuses_bad_inputs_before_sending(
    served: str, inputs: dict[str, object], signature: str | None, message: str
) -> None:
    registry = CollectorRegistry()
    with _client(served, registry=registry) as client:
        client.metadata()
        with pytest.raises(InvalidInput, match=message.replace("[", r"\[")) as info:
            client.predict(inputs, signature=signature)
    assert isinstance(info.value, ValueError)
    # no predict request left the client (a refusal by cached metadata re-reads the metadata once, since a
    # rollout may have changed the signature, and then refuses on the fresh answer)
    sent = [s for s in registry.collect() if s.name == "tfstack_client_requests"]
    assert not [x for m in sent for x in m.samples if x.labels.get("method") == "predict"]


def test_lists_and_large_messages(served: str) -> None:
    big = np.random.default_rng(1).random((20_000, 3), dtype=np.float32)  # 240 kB each way
    with _client(served) as client:
        assert client.predict({"x": [[0, 0, 0]]}, version=1)["y"].tolist() == [[1, 1, 1]]
        out = client.predict({"x": big})
    np.testing.assert_allclose(out["y"], 2 * big + 2, rtol=1e-6)


def test_unknown_model_raises_model_not_found(served: str) -> None:
    with Client(served, "nope", registry=CollectorRegistry()) as client, pytest.raises(ModelNotFound):
        client.predict({"x": X})


def test_unreachable_server_raises_unavailable(served: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    target = f"http://{dead}" if served.startswith("http") else dead
    policy = RetryPolicy(attempts=2, initial_backoff=0.0, max_backoff=0.0)
    with Client(target, MODEL, retry=policy, timeout=10, registry=CollectorRegistry()) as client:
        with pytest.raises(Unavailable):
            client.status()
        assert not client.ready()


def test_async_client_every_method(served: str) -> None:
    async def run() -> None:
        async with AsyncClient(served, MODEL, registry=CollectorRegistry()) as client:
            outs = await asyncio.gather(*(client.predict({"x": X * i}) for i in range(4)))
            assert [o["total"].tolist() for o in outs] == [[6.0 * i, 15.0 * i] for i in range(4)]
            assert (await client.predict({"x": X}, version_label="stable"))["y"].tolist() == (2 * X + 1).tolist()
            assert (await client.status()).available_versions == (1, 2)
            assert await client.ready()
            assert (await client.metadata()).signatures["images"].outputs["class_id"].dtype == "DT_INT64"
            with pytest.raises(InvalidInput):
                await client.predict({"x": X[0]})
            with pytest.raises(ModelNotFound):
                await client.predict({"x": X}, version=9)
            with pytest.raises(DeadlineExceeded):
                await client.predict({"seconds": np.float32(2.0)}, signature="slow", timeout=0.3)

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------- deadlines


def test_deadline_exceeded_on_a_slow_model(served: str) -> None:
    import time

    with _client(served) as client:
        client.metadata()
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            client.predict({"seconds": np.float32(2.0)}, signature="slow", timeout=0.3)
        assert time.monotonic() - start < 1.5  # the deadline, not the model, ended the call
        assert isinstance(info.value, TimeoutError)
        assert client.predict({"x": X}, timeout=30)["total"].tolist() == [6.0, 15.0]


def test_size_limit_is_not_retried(toy_server: Any) -> None:
    registry = CollectorRegistry()
    big = np.zeros((100_000, 3), np.float32)  # a 1.2 MB request
    policy = RetryPolicy(attempts=5, initial_backoff=0.0, max_backoff=0.0)
    with (
        _client(f"127.0.0.1:{toy_server.grpc_port}", max_message_bytes=100_000, retry=policy,
                registry=registry) as client,
        pytest.raises(ResourceExhausted) as info,
    ):
        client.predict({"x": big})
    assert info.value.size_limit and not info.value.retryable
    assert _count(registry, "tfstack_client_retries_total", model=MODEL, method="predict", transport="grpc",
                  code="RESOURCE_EXHAUSTED") == 0


# ---------------------------------------------------------------------------------------------- lifecycle


@pytest.fixture
def own_server(tmp_path: Path, toy_versions: dict[int, Path]) -> Any:
    """A function-scoped server of model "toy" (version 1 only) that polls its base path every second."""
    base = tmp_path / MODEL
    base.mkdir()
    copy_version(toy_versions[1], base, 1)
    servers = [start_model_server(f"--model_name={MODEL}", f"--model_base_path={base}",
                                  "--file_system_poll_wait_seconds=1")]
    servers[0].base = base
    yield servers
    for server in servers:
        server.stop(grace=5.0)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_metadata_follows_a_rollout_that_changes_the_signature(
    own_server: list[Any], tmp_path: Path, transport: str
) -> None:
    """Version 2 takes float64 where version 1 took float32. A long-lived client whose cached metadata says
    float32 must neither refuse float64 inputs nor send float32 ones without explaining the new signature."""
    server = own_server[0]
    target = f"127.0.0.1:{server.grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{server.rest_port}"
    with _client(target) as client:
        assert client.predict({"x": X})["y"].tolist() == (2 * X + 1).tolist()
        assert client.metadata().version == 1
        copy_version(build_toy_model(tmp_path / "v2-float64", 2, x_dtype="float64"), server.base, 2)
        poll(lambda: client.status().available_versions == (2,))

        # cached v1 metadata would refuse float64: the client asks again and sends
        out = client.predict({"x": X.astype(np.float64)})
        assert out["y"].tolist() == (2 * X + 2).tolist()
        assert client.metadata().version == 2
        # and float32 is now refused client-side, with the new signature's dtype in the message
        with pytest.raises(InvalidInput, match="DT_DOUBLE"):
            client.predict({"x": X})


def test_grpc_answers_from_another_version_drop_the_cached_metadata(
    own_server: list[Any], toy_versions: dict[int, Path]
) -> None:
    server = own_server[0]
    with _client(f"127.0.0.1:{server.grpc_port}") as client:
        assert client.metadata().version == 1
        copy_version(toy_versions[2], server.base, 2)
        poll(lambda: client.status().available_versions == (2,))
        client.predict({"images": [b"a"]}, signature="images")  # valid for both versions; v2 answers
        assert client.metadata().version == 2  # fetched again: the answer said version 2
