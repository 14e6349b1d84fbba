"""The numpy <-> TensorProto codec, for every dtype both ways, checked against TensorFlow's own
``make_tensor_proto`` / ``make_ndarray`` and the official protobuf classes."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2

from serving.client import to_ndarray, to_tensor_proto
from serving.wire.codec import (
    DTYPES,
    decode_predict_response,
    decode_tensor,
    dtype_for_enum,
    encode_model_spec,
    encode_predict_request,
    encode_predict_response,
    encode_tensor,
    encode_typed_tensor,
)
from tests.serving.client.servers import as_proto_field

CASES: list[tuple[str, np.ndarray]] = [
    ("float16", np.array([[1.5, -2.0], [np.inf, 65504]], np.float16)),
    ("bfloat16", np.array([1.5, -2.0, 3.0e38], ml_dtypes.bfloat16)),
    ("float32", np.array([[0.1, -0.0, np.nan], [1e-38, np.inf, 3.4e38]], np.float32)),
    ("float64", np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7),
    ("int8", np.array([-128, 0, 127], np.int8)),
    ("int16", np.array([-32768, 32767], np.int16)),
    ("int32", np.array([-(2**31), -1, 2**31 - 1], np.int32)),
    ("int64", np.array([-(2**63), -1, 2**63 - 1], np.int64)),
    ("uint8", np.array([0, 1, 255], np.uint8)),
    ("uint16", np.array([0, 65535], np.uint16)),
    ("uint32", np.array([0, 2**32 - 1], np.uint32)),
    ("uint64", np.array([0, 2**64 - 1], np.uint64)),
    ("bool", np.array([[True, False, True]])),
    ("complex64", np.array([1 + 2j, -3.5j, 0], np.complex64)),
    ("complex128", np.array([[1e300 + 2j]], np.complex128)),
    ("bytes", np.array([b"ab", b"", b"\x00\xff"], dtype=object)),
    ("str", np.array(["x", "héllo"])),
    ("scalar", np.array(3.25, np.float32)),
    ("scalar-string", np.array(b"one", dtype=object)),
    ("empty", np.zeros((0, 3), np.float32)),
    ("empty-string", np.zeros((2, 0), dtype=object)),
    ("rank-7", np.arange(2 * 1 * 3 * 1 * 2 * 1 * 2, dtype=np.int32).reshape(2, 1, 3, 1, 2, 1, 2)),
]
IDS = [name for name, _ in CASES]


def _expected(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "UO":
        return np.array([v.encode() if isinstance(v, str) else v for v in array.reshape(-1)],
                        dtype=object).reshape(array.shape)
    return array


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc" or a.dtype == ml_dtypes.bfloat16:
        return bool(np.array_equal(a.astype(np.complex128), b.astype(np.complex128), equal_nan=True))
    return bool(np.array_equal(a, b))


@pytest.mark.parametrize(("name", "array"), CASES, ids=IDS)
def test_encode_is_read_by_tensorflow(name: str, array: np.ndarray) -> None:
    chunks, size = encode_tensor(array)
    data = b"".join(chunks)
    assert len(data) == size
    official = tensor_pb2.TensorProto.FromString(data)
    decoded = tf.make_ndarray(official)
    expected = _expected(array)
    assert decoded.shape == expected.shape
    if expected.dtype == object:
        assert decoded.dtype == object and decoded.tolist() == expected.tolist()
    else:
        assert _same(decoded, expected)
        assert official.tensor_content or array.size == 0  # the tensor_content fast path
    # identical to protobuf's own deterministic serialisation of the same message
    assert official.SerializeToString(deterministic=True) == data


@pytest.mark.parametrize(("name", "array"), CASES, ids=IDS)
def test_decode_tensor_content_and_every_typed_field(name: str, array: np.ndarray) -> None:
    expected = _expected(array)
    typed = as_proto_field(expected)  # TF Serving's answer shape: float_val, int_val, half_val ...
    assert not typed.tensor_content
    from_typed = decode_tensor(typed.SerializeToString())
    assert _same(from_typed, expected) if expected.dtype != object else from_typed.tolist() == expected.tolist()
    assert _same(tf.make_ndarray(typed), from_typed) if expected.dtype != object else True
    ours = decode_tensor(b"".join(encode_tensor(array)[0]))  # tensor_content (strings: string_val)
    assert _same(ours, expected) if expected.dtype != object else ours.tolist() == expected.tolist()
    if name != "bfloat16":  # whatever TensorFlow itself writes for this dtype
        theirs = decode_tensor(tf.make_tensor_proto(array).SerializeToString())
        assert _same(theirs, expected) if expected.dtype != object else theirs.tolist() == expected.tolist()


def _typed_reference(array: np.ndarray) -> tensor_pb2.TensorProto:
    proto = as_proto_field(array)
    proto.tensor_shape.SetInParent()  # TF Serving writes the shape field even for a scalar
    return proto


@pytest.mark.parametrize(("name", "array"), CASES, ids=IDS)
def test_typed_encoding_is_tf_servings_typed_fields_byte_for_byte(name: str, array: np.ndarray) -> None:
    """What the local model server answers with: values in float_val, int_val, half_val, ..."""
    data = encode_typed_tensor(array)
    expected = _expected(array)
    assert data == _typed_reference(expected).SerializeToString(deterministic=True)
    assert not tensor_pb2.TensorProto.FromString(data).tensor_content
    decoded = decode_tensor(data)
    assert _same(decoded, expected) if expected.dtype != object else decoded.tolist() == expected.tolist()


def test_predict_response_bytes_equal_the_official_message() -> None:
    outputs: dict[str, Any] = {
        "probabilities": np.random.default_rng(1).random((3, 10), dtype=np.float32),
        "class_id": np.array([7, -1, 2**40], np.int64),
        "class_name": np.array([b"seven", b"", "n\u00e9"], dtype=object),
    }
    official = predict_pb2.PredictResponse()
    official.model_spec.name = "digits"
    official.model_spec.version.value = 4
    official.model_spec.signature_name = "serving_default"
    for key, value in outputs.items():
        official.outputs[key].CopyFrom(_typed_reference(_expected(value)))
    data = encode_predict_response(encode_model_spec("digits", 4, None, "serving_default"), outputs)
    assert predict_pb2.PredictResponse.FromString(data) == official
    assert data == official.SerializeToString(deterministic=True)


def test_decode_from_tensor_content_is_a_view_not_a_copy() -> None:
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)
    data = b"".join(encode_tensor(array)[0])
    decoded = decode_tensor(data)
    assert np.array_equal(decoded, array)
    assert not decoded.flags.writeable and not decoded.flags.owndata
    assert np.shares_memory(decoded, np.frombuffer(data, np.uint8))


def test_decode_packed_float_val_is_a_view_not_a_copy() -> None:
    proto = as_proto_field(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    data = proto.SerializeToString()
    decoded = decode_tensor(data)
    assert np.shares_memory(decoded, np.frombuffer(data, np.uint8))


def test_encode_hands_over_the_array_buffer_without_copying() -> None:
    array = np.ones((4, 4), np.float32)
    chunks, _ = encode_tensor(array)
    assert np.shares_memory(np.frombuffer(chunks[-1], np.uint8), array)


def test_short_typed_fields_repeat_their_last_value_like_tensorflow() -> None:
    proto = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    proto.float_val.extend([1.0, 2.0])
    ours = decode_tensor(proto.SerializeToString())
    assert np.array_equal(ours, tf.make_ndarray(proto))
    assert ours.tolist() == [[1, 2, 2], [2, 2, 2]]
    empty = tensor_pb2.TensorProto(dtype=tf.int64.as_datatype_enum)
    empty.tensor_shape.dim.add(size=3)
    assert decode_tensor(empty.SerializeToString()).tolist() == [0, 0, 0]


def test_unpacked_repeated_fields_are_accepted() -> None:
    # proto2-style (unpacked) encodings of int_val and float_val: 0x38 = field 7 varint, 0x2d = field 5 fixed32
    head = bytes([0x08, 3, 0x12, 4, 0x12, 2, 0x08, 3])
    data = head + bytes([0x38, 0x05, 0x38]) + b"\xff" * 9 + b"\x01" + bytes([0x38, 0x07])
    assert decode_tensor(data).tolist() == [5, -1, 7]
    head = bytes([0x08, 1, 0x12, 4, 0x12, 2, 0x08, 2])
    floats = head + b"\x2d" + np.float32(1.5).tobytes() + b"\x2d" + np.float32(-2).tobytes()
    assert decode_tensor(floats).tolist() == [1.5, -2.0]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (bytes([0x08, 1, 0x12, 4, 0x12, 2, 0x08, 3, 0x22, 4]) + b"\x00" * 4, "Expected 12 bytes"),
        (bytes([0x08, 99]), "supported TensorFlow dtype"),
        (bytes([0x08, 1, 0x12, 2, 0x18, 1]), "fully defined"),
        (bytes([0x08, 1, 0x22, 10, 0]), "Expected 10 bytes"),
    ],
    ids=["short-content", "unknown-dtype", "unknown-rank", "truncated"],
)
def test_malformed_tensors_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_tensor(data)


# Fields a TensorProto reader must step over: another dtype's typed field (int64_val = 10, varint),
# unknown field numbers of every wire type (varint, fixed64, length-delimited, a group, fixed32), and
# an unknown field inside a TensorShapeProto dim.
_FOREIGN_FIELDS = (
    bytes([0x50, 0x07])  # int64_val: 7
    + bytes([0xF8, 0x07, 0x2A])  # field 127, varint 42
    + bytes([0xF9, 0x07]) + b"\x01" * 8  # field 127, fixed64
    + bytes([0xFA, 0x07, 0x03]) + b"abc"  # field 127, bytes
    + bytes([0xFB, 0x07, 0x08, 0x01, 0xFC, 0x07])  # field 127, a group holding field 1 = 1
    + bytes([0xFD, 0x07]) + b"\x02" * 4  # field 127, fixed32
)


@pytest.mark.parametrize("typed", [True, False], ids=["float_val", "tensor_content"])
def test_unknown_and_foreign_fields_are_skipped_as_protobuf_and_tensorflow_do(typed: bool) -> None:
    values = np.array([1.5, -2.0], dtype=np.float32)
    dim = bytes([0x12, 0x04, 0x08, 0x02]) + bytes([0x20, 0x09])  # dim {size: 2, field 4: 9 (unknown)}
    head = bytes([0x08, 1, 0x12, len(dim)]) + dim
    body = (bytes([0x2A, 8]) if typed else bytes([0x22, 8])) + values.tobytes()
    data = head + _FOREIGN_FIELDS + body
    # The reference: protobuf's parser (unknown fields kept aside) and TensorFlow's MakeNdarray.
    reference = tf.make_ndarray(tensor_pb2.TensorProto.FromString(data))
    assert np.array_equal(decode_tensor(data), reference)
    assert decode_tensor(data).tolist() == [1.5, -2.0]


def test_predict_response_skips_unknown_fields() -> None:
    response = predict_pb2.PredictResponse()
    response.outputs["y"].CopyFrom(tf.make_tensor_proto(np.array([3, 4], dtype=np.int64)))
    response.model_spec.name = "m"
    data = response.SerializeToString() + bytes([0x18, 0x05]) + bytes([0xFD, 0x07]) + b"\x00" * 4
    outputs, spec = decode_predict_response(data)
    assert outputs["y"].tolist() == [3, 4]
    assert spec == response.model_spec.SerializeToString()


def test_unsupported_numpy_dtypes_are_refused() -> None:
    with pytest.raises(ValueError, match="Expected a numpy dtype"):
        encode_tensor(np.array(["2024-01-01"], dtype="datetime64[D]"))


def test_big_endian_and_strided_arrays_are_encoded_correctly() -> None:
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    strided = np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2]
    for array in (big, strided):
        decoded = tf.make_ndarray(tensor_pb2.TensorProto.FromString(b"".join(encode_tensor(array)[0])))
        assert np.array_equal(decoded, array)


def test_predict_request_bytes_equal_the_official_message() -> None:
    inputs: dict[str, Any] = {
        "pixels": np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32),
        "images": np.array([b"\x89PNG", b"jpeg"], dtype=object),
        "k": np.int64(5),
    }
    spec = encode_model_spec("digits", 7, None, "predict_pixels")
    data = encode_predict_request(spec, inputs, ["probabilities"])
    official = predict_pb2.PredictRequest()
    official.model_spec.name = "digits"
    official.model_spec.version.value = 7
    official.model_spec.signature_name = "predict_pixels"
    for key, value in inputs.items():
        array = np.asarray(value)
        tensor = official.inputs[key]
        tensor.dtype = tf.as_dtype(tf.string if array.dtype == object else array.dtype).as_datatype_enum
        tensor.tensor_shape.SetInParent()
        for size in array.shape:
            tensor.tensor_shape.dim.add(size=size)
        if array.dtype == object:
            tensor.string_val.extend(array.tolist())
        else:
            tensor.tensor_content = array.tobytes()
    official.output_filter.append("probabilities")
    parsed = predict_pb2.PredictRequest.FromString(data)
    assert parsed == official
    assert data == official.SerializeToString(deterministic=True)
    for key, value in inputs.items():
        assert np.array_equal(tf.make_ndarray(parsed.inputs[key]), np.asarray(value))


@pytest.mark.parametrize(
    ("version", "label", "field"), [(None, None, None), (0, None, "version"), (3, None, "version"),
                                    (None, "stable", "version_label")],
    ids=["latest", "version-0", "version-3", "label"],
)
def test_model_spec_version_choice(version: int | None, label: str | None, field: str | None) -> None:
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec.FromString(encode_model_spec("m", version, label, "sig"))
    assert spec.name == "m" and spec.signature_name == "sig"
    assert spec.WhichOneof("version_choice") == field
    if field == "version":
        assert spec.version.value == version
    if field == "version_label":
        assert spec.version_label == label


def test_model_spec_refuses_version_and_label_together() -> None:
    with pytest.raises(ValueError, match="at most one of version and version_label"):
        encode_model_spec("m", 1, "stable")


def test_predict_response_with_typed_fields_decodes_to_numpy() -> None:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "digits"
    response.model_spec.version.value = 3
    outputs = {
        "probabilities": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32),
        "class_id": np.array([1, 0], np.int64),
        "class_name": np.array([b"one", b"zero"], dtype=object),
    }
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(as_proto_field(value))
    decoded, spec = decode_predict_response(response.SerializeToString())
    assert sorted(decoded) == sorted(outputs)
    for key, value in outputs.items():
        assert decoded[key].dtype == value.dtype and decoded[key].tolist() == value.tolist()
    from tensorflow_serving.apis import model_pb2

    assert model_pb2.ModelSpec.FromString(spec).version.value == 3


def test_message_level_helpers_accept_official_messages() -> None:
    proto = to_tensor_proto(np.array([[1, 2]], np.int16))
    assert proto.dtype == tf.int16.as_datatype_enum
    assert to_ndarray(proto).tolist() == [[1, 2]]
    assert to_ndarray(tf.make_tensor_proto(np.array([1.5], np.float64))).tolist() == [1.5]


def test_one_table_covers_every_dtype_the_issue_names() -> None:
    names = {row.name for row in DTYPES.values()}
    assert names == {
        "DT_HALF", "DT_BFLOAT16", "DT_FLOAT", "DT_DOUBLE", "DT_INT8", "DT_INT16", "DT_INT32", "DT_INT64",
        "DT_UINT8", "DT_UINT16", "DT_UINT32", "DT_UINT64", "DT_BOOL", "DT_STRING", "DT_COMPLEX64",
        "DT_COMPLEX128",
    }
    for row in DTYPES.values():
        assert dtype_for_enum(row.name) is row
        if row.name != "DT_STRING":
            assert tf.as_dtype(row.numpy).as_datatype_enum == row.enum


_NUMERIC = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                            np.uint8, np.uint16, np.uint32, np.uint64, np.bool_, np.complex64])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_round_trip_property(data: st.DataObject) -> None:
    dtype = data.draw(_NUMERIC)
    array = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
    encoded = b"".join(encode_tensor(array)[0])
    assert _same(decode_tensor(encoded), array)
    assert _same(decode_tensor(as_proto_field(array).SerializeToString()), array)
