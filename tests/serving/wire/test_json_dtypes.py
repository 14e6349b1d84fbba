"""One JSON dtype table (serving.wire.json_dtypes) drives the client's and the server's REST paths."""

from __future__ import annotations

import numpy as np
import pytest

from serving.wire import json_dtypes


@pytest.mark.parametrize(
    ("dtype", "carried"),
    [("float32", True), ("float64", True), ("int8", True), ("int16", True), ("int32", True), ("int64", True),
     ("uint8", True), ("uint32", True), ("uint64", True), ("bool", True), (object, True), ("S3", True),
     ("float16", False), ("uint16", False), ("complex64", False), ("complex128", False)],
    ids=str,
)
def test_the_table_is_json_tensor_cc_s(dtype: object, carried: bool) -> None:
    """tensorflow_serving/util/json_tensor.cc converts these and refuses half, uint16 and complex."""
    assert json_dtypes.json_carries(np.dtype(dtype)) is carried


def test_client_and_server_read_the_same_table() -> None:
    from serving.client._transports import rest as client_rest
    from serving.model_server import tensors as server_tensors

    assert client_rest.JSON_NUMERIC_DTYPES is json_dtypes.JSON_NUMERIC_DTYPES
    assert server_tensors.JSON_DTYPES is json_dtypes.JSON_DTYPES
