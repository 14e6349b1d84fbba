"""Ports of tensorflow_serving/model_servers/get_model_status_impl_test.cc over the gRPC ModelService.

The test model is ``saved_model_half_plus_two_2_versions`` served with the ``all`` version policy
(versions 123 and 124), as the upstream test sets it up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from .conftest import upstream_model, write_config

MODEL = "saved_model_half_plus_two_2_versions"


@pytest.fixture
def stub(start_server: Any, tmp_path: Path) -> Iterator[Any]:
    base = upstream_model(tmp_path, MODEL)
    config = write_config(tmp_path / "models.config", {MODEL: base}, "model_version_policy { all {} }")
    server = start_server(f"--model_config_file={config}")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


def _status(stub: Any, name: str | None, version: int | None = None) -> Any:
    request = get_model_status_pb2.GetModelStatusRequest()
    if name is not None:
        request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return stub.GetModelStatus(request, timeout=30)


@pytest.mark.parametrize(
    ("name", "version", "code"),
    [(None, None, grpc.StatusCode.INVALID_ARGUMENT), ("nonexistent_model", None, grpc.StatusCode.NOT_FOUND),
     (MODEL, 99, grpc.StatusCode.NOT_FOUND)],
    ids=["MissingOrEmptyModelSpecFailure", "InvalidModelNameFailure", "InvalidModelVersionFailure"],
)
def test_failures(stub: Any, name: str | None, version: int | None, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _status(stub, name, version)
    assert info.value.code() == code


def test_all_versions_success(stub: Any) -> None:
    response = _status(stub, MODEL)
    assert {s.version for s in response.model_version_status} == {123, 124}
    for status in response.model_version_status:
        assert (status.state, status.status.error_code, status.status.error_message) == (
            get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0, "")


def test_single_version_success(stub: Any) -> None:
    response = _status(stub, MODEL, 123)
    assert [s.version for s in response.model_version_status] == [123]
    assert response.model_version_status[0].status.error_code == 0
