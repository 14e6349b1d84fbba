"""The servable's call paths and request decoding, in process.

The direct eager call (``_DirectCall``) leans on TensorFlow internals; these tests fail loudly when a
TensorFlow upgrade takes it away (it would silently fall back to the slower flat call otherwise), and
check that every path gives the answers of the public ``function(**tensors)`` call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.model_server import tensors
from serving.model_server.errors import InvalidArgument
from serving.model_server.servable import Servable
from serving.wire.codec import encode_tensor
from tests.serving.model_server.conftest import png
from tests.upstream import tf_serving_testdata

HALF_PLUS_TWO_INPUTS = {
    "serving_default": {"x": np.array([[1.0], [2.0], [5.0]], np.float32)},
    "regress_x2_to_y3": {"inputs": np.array([[3.0]], np.float32)},
}


def _contract_inputs() -> dict[str, dict[str, np.ndarray]]:
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    return {"serving_default": {"images": np.array([png(10), png(240)], dtype=object)},
            "predict_pixels": {"pixels": pixels}}


def _public_call(servable: Servable, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    function = servable.signature(signature).function
    feed = {k: tf.constant(v, dtype=tf.string if v.dtype == object else None) for k, v in inputs.items()}
    return {k: v.numpy() for k, v in function(**feed).items()}


def _assert_same(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert ours[key].tolist() == value.tolist(), key


@pytest.fixture(scope="module")
def half_plus_two() -> Servable:
    return Servable.load("half_plus_two", 123, tf_serving_testdata("saved_model_half_plus_two_cpu", "00000123"))


@pytest.fixture(scope="module")
def contract(contract_version: Path) -> Servable:
    return Servable.load("digits", 1, contract_version)


@pytest.mark.parametrize("model", ["half_plus_two", "contract"])
def test_direct_call_is_used_and_answers_like_the_public_call(model: str, request: Any) -> None:
    servable = request.getfixturevalue(model)
    cases = HALF_PLUS_TWO_INPUTS if model == "half_plus_two" else _contract_inputs()
    for signature, inputs in cases.items():
        assert servable.signature(signature).direct is not None, signature  # TF 1 and TF 2 SavedModels alike
        _, outputs = servable.predict(signature, inputs)
        _assert_same(outputs, _public_call(servable, signature, inputs))


def test_flat_call_fallback_answers_the_same(contract: Servable) -> None:
    info = contract.signature("predict_pixels")
    inputs = _contract_inputs()["predict_pixels"]
    direct_call, answers = info.direct, contract._call(info, inputs)
    object.__setattr__(info, "direct", None)
    try:
        _assert_same(contract._call(info, inputs), answers)
    finally:
        object.__setattr__(info, "direct", direct_call)


def test_runtime_errors_on_the_direct_path_are_client_errors(contract: Servable) -> None:
    with pytest.raises(InvalidArgument, match="signature 'serving_default'"):
        contract.predict("serving_default", {"images": np.array([b"not an image"], dtype=object)})


@pytest.mark.parametrize(
    "array",
    [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5, -2.0], np.float64), np.array([-3, 7], np.int64),
     np.array([True, False]), np.array([1.5, 2.5], np.float16), np.array([1.5, -2.0], ml_dtypes.bfloat16),
     np.array([1 + 2j], np.complex64), np.zeros((0, 4), np.int32)],
    ids=lambda a: str(a.dtype),
)
def test_make_ndarray_reads_tensor_content_like_tensorflow(array: np.ndarray) -> None:
    proto = tensor_pb2.TensorProto.FromString(b"".join(encode_tensor(array)[0]))  # as the thin client sends it
    if array.size:
        assert proto.tensor_content  # the fast path under test
    ours, theirs = tensors.make_ndarray(proto), tf.make_ndarray(proto)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert ours.tobytes() == theirs.tobytes()


def test_make_ndarray_refuses_tensor_content_of_the_wrong_length() -> None:
    proto = tf.make_tensor_proto(np.zeros(3, np.float32))
    proto.tensor_content = proto.tensor_content[:-1]
    with pytest.raises(InvalidArgument, match="fill shape"):
        tensors.make_ndarray(proto)
