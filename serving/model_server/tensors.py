"""Tensor conversions: TensorProto -> numpy for gRPC, JSON <-> numpy for REST, JSON -> tf.Example.

gRPC requests are read from ``tensor_content`` or the typed fields. gRPC responses are written the way TF
Serving writes them, with typed repeated fields (``float_val``, ``int64_val``, ``string_val``, ...) and never
``tensor_content``, by the client's wire codec (:func:`serving.wire.codec.encode_typed_tensor`).
The JSON rules follow ``tensorflow_serving/util/json_tensor.cc``: row (``instances``) and columnar
(``inputs``) formats, ``{"b64": ...}`` for binary strings, string outputs whose alias ends in ``_bytes``
written back as ``{"b64": ...}``, ``NaN`` / ``Infinity`` for non-finite floats.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.model_server.errors import InvalidArgument, ResourceExhausted, Unimplemented
from serving.wire import DTYPES, dtype_for_numpy, json_dtypes

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "JSON_DTYPES",
    "MAX_ELEMENTS",
    "check_decoded_size",
    "classification_rows",
    "examples_from_input",
    "examples_from_json",
    "json_to_array",
    "make_ndarray",
    "numpy_dtype",
    "outputs_to_json",
    "predict_inputs_from_json",
    "to_json_value",
    "type_string",
]

#: Largest tensor (in elements) a request may declare; protects against ``shape [1e12]`` with no values.
MAX_ELEMENTS = 1 << 28

#: Default bound on the bytes one request's decoded tensors may take (``ServerOptions.max_decoded_request_bytes``).
DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024
_STRING_ELEMENT_BYTES = 8  # a reference per element of a string tensor, before its bytes


def check_decoded_size(protos: Mapping[str, tensor_pb2.TensorProto], limit: int) -> int:
    """Refuse a request whose tensors would decode to more than ``limit`` bytes, before allocating any.

    TensorFlow fills a tensor whose typed fields hold fewer values than its shape with the last value, so a
    30-byte request declaring ``[2**27]`` floats and one ``float_val`` decodes to 512 MiB: the declared
    shapes, not the wire size, are what is bounded. Raises ResourceExhausted; returns the total.
    """
    total = 0
    for alias, proto in protos.items():
        dims = [d.size for d in proto.tensor_shape.dim]
        if any(d < 0 for d in dims):
            raise InvalidArgument(f"Expected non-negative dimensions. Received: shape={dims} for input {alias!r}")
        count = math.prod(dims)
        dtype = numpy_dtype(proto.dtype)
        itemsize = _STRING_ELEMENT_BYTES if dtype.kind == "O" else dtype.itemsize
        total += count * itemsize
        if total > limit:
            raise ResourceExhausted(
                f"Expected the request's tensors to decode to at most {limit} bytes (the server's "
                f"max_decoded_request_bytes). Received: input {alias!r} of shape {dims} and dtype "
                f"{type_string(dtype)} ({count * itemsize} bytes)"
            )
    return total


def numpy_dtype(enum: int) -> np.dtype[Any]:
    """The numpy dtype of a ``tensorflow.DataType`` value, from the wire package's one dtype table."""
    row = DTYPES.get(enum)
    if row is None:
        name = types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values() else str(enum)
        raise InvalidArgument(f"Expected a numeric, bool or string dtype. Received: dtype={name}")
    return row.numpy


def type_string(dtype: np.dtype[Any]) -> str:
    """TensorFlow's ``DataTypeString`` of a numpy dtype: ``float``, ``double``, ``int64``, ``string``, ..."""
    try:
        return dtype_for_numpy(dtype).name[3:].lower()
    except ValueError:
        return str(dtype)


def make_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a request ``TensorProto`` (``tensor_content`` or typed fields); bad ones raise InvalidArgument."""
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise InvalidArgument("Expected a tensor with a known shape. Received: tensor_shape.unknown_rank=true")
    dims = [d.size for d in shape.dim]
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"Expected non-negative dimensions. Received: shape={dims}")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise InvalidArgument(f"Expected at most {MAX_ELEMENTS} elements in a tensor. Received: shape={dims}")
    enum = proto.dtype
    dtype = numpy_dtype(enum)
    content = proto.tensor_content
    if content and dtype.kind != "O" and len(content) == count * dtype.itemsize:
        return np.frombuffer(content, dtype.newbyteorder("<")).reshape(dims)  # what the thin client sends
    if enum == types_pb2.DT_FLOAT and not content and len(proto.float_val) == count:
        return np.array(proto.float_val, dtype=np.float32).reshape(dims)
    try:
        array = tf.make_ndarray(proto)
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidArgument(
            f"Expected tensor values that fill shape {dims} of dtype {tf.dtypes.as_dtype(enum).name}. "
            f"Received: {exc}"
        ) from exc
    if array.dtype != dtype and dtype.kind != "O":
        array = array.astype(dtype)
    return array


# ---------------------------------------------------------------------------------------------- JSON -> numpy


def _debug(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 256 else text[:253] + "..."


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _b64_decode(value: dict[str, Any]) -> bytes:
    encoded = value["b64"]
    if not isinstance(encoded, str):
        raise InvalidArgument(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        try:  # TF Serving also accepts the URL-safe alphabet.
            return base64.urlsafe_b64decode(encoded)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"Unable to base64 decode. Received: {_debug(value)}") from exc


def _strings(value: Any, level: int = 0) -> Any:
    """Turn a nested JSON value into nested lists of bytes (strings as UTF-8, ``{"b64"}`` decoded)."""
    if isinstance(value, list):
        if level > 64:
            raise InvalidArgument("Expected a JSON value nested at most 64 levels deep. Received: deeper")
        return [_strings(v, level + 1) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if _is_b64(value):
        return _b64_decode(value)
    raise InvalidArgument(f"JSON Value: {_debug(value)} Type: {type(value).__name__} is not of expected type: string")


_JSON_KINDS = {"U": "String", "S": "String", "b": "Boolean", "i": "Number", "u": "Number", "f": "Number"}


#: Tensor dtypes json_tensor.cc converts: the one table in serving.wire, shared with the client's REST transport.
JSON_DTYPES = json_dtypes.JSON_DTYPES


def _first_scalar(value: Any) -> Any:
    while isinstance(value, list) and value:
        value = value[0]
    return value


def json_to_array(value: Any, dtype: np.dtype[Any], name: str = "") -> np.ndarray:
    """Convert one JSON value (scalar or nested lists) to an array of ``dtype``, as TF Serving would.

    dtypes TF Serving's JSON cannot carry (half, bfloat16, uint16, complex, ...) are UNIMPLEMENTED
    ("Conversion of JSON Value: ... to type: half"), as in json_tensor.cc.
    """
    if dtype not in JSON_DTYPES:
        raise Unimplemented(f"Conversion of JSON Value: {_debug(_first_scalar(value))} to type: {type_string(dtype)}")
    where = f" for input {name!r}" if name else ""
    if dtype.kind == "O":
        nested = _strings(value)
        try:
            array = np.array(nested, dtype=object)
        except ValueError as exc:
            raise InvalidArgument(f"Expected a rectangular list of strings{where}. Received: {exc}") from exc
        if array.size and not all(isinstance(v, bytes) for v in array.ravel().tolist()):
            raise InvalidArgument(f"Expected a rectangular list of strings{where}. Received: {_debug(value)}")
        return array
    try:
        raw = np.array(value)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"Expected a rectangular list of numbers{where}. Received: {exc}") from exc
    kind = raw.dtype.kind
    target = dtype.kind
    if raw.size == 0 and kind in "fO":
        return raw.astype(dtype) if kind == "f" else np.zeros(raw.shape, dtype)
    if target == "b":
        ok = kind == "b"
    elif target in "iu":
        ok = kind in "biu" if kind != "b" else False
    elif target in "fc":
        ok = kind in "iuf" or (target == "c" and kind == "c")
    else:
        ok = False
    if not ok:
        sample = raw.ravel()[0].item() if raw.size and kind != "O" else value
        raise InvalidArgument(
            f"JSON Value: {_debug(sample)} Type: {_JSON_KINDS.get(kind, 'mixed')} "
            f"is not of expected type: {type_string(dtype)}{where}"
        )
    if target in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidArgument(f"Expected values in [{info.min}, {info.max}] for {dtype.name}{where}. "
                                  f"Received: min={raw.min()}, max={raw.max()}")
    with np.errstate(over="ignore"):  # a float beyond float32's range becomes inf, as in TF Serving's parser
        return raw.astype(dtype)


def predict_inputs_from_json(
    body: Mapping[str, Any], input_dtypes: Mapping[str, np.dtype[Any]]
) -> tuple[dict[str, np.ndarray], str]:
    """Read a ``:predict`` body into named arrays; returns them and the format, ``"row"`` or ``"columnar"``."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise InvalidArgument(
            f"JSON Value: {_debug(body)} Not formatted correctly expecting only one of 'inputs' or 'instances' "
            "keys to exist"
        )
    names = sorted(input_dtypes)
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(f"JSON Value: {_debug(body)} Expecting 'instances' to be an list/array")
        if not instances:
            raise InvalidArgument(f"JSON Value: {_debug(body)} No values in 'instances' array")
        named = [isinstance(e, dict) and not _is_b64(e) for e in instances]
        if len(names) > 1 and not all(named):
            raise InvalidArgument(
                "instances is a plain list, but expecting list of objects as multiple input tensors required as "
                f"per tensorinfo_map (inputs: {', '.join(names)})"
            )
        if any(named) and not all(named):
            raise InvalidArgument("Expected every element of 'instances' to be an object, or none. Received: a mix")
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for i, element in enumerate(instances):
            if named[i]:
                if set(element) != set(names):
                    raise InvalidArgument(
                        f"Failed to process element: {i} of 'instances' list. JSON object: {_debug(element)} keys "
                        f"must be equal to: {','.join(names)}"
                    )
                for n in names:
                    columns[n].append(element[n])
            else:
                columns[names[0]].append(element)
        arrays = {}
        for n in names:
            with contextlib.suppress(InvalidArgument):  # one conversion of the whole column: no array per row
                column = json_to_array(columns[n], input_dtypes[n], n)
                if column.ndim and column.shape[0] == len(instances):
                    arrays[n] = column
                    continue
            items = [json_to_array(v, input_dtypes[n], n) for v in columns[n]]  # for upstream's error texts
            shapes = {a.shape for a in items}
            if len(shapes) != 1:
                raise InvalidArgument(
                    f"Expecting tensor size: {items[0].shape} but got: {sorted(shapes - {items[0].shape})[0]} "
                    f"for input {n!r} across 'instances'"
                )
            arrays[n] = np.stack(items)
        return arrays, "row"
    if has_inputs:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            missing = [n for n in names if n not in inputs]
            if missing:
                raise InvalidArgument(f"Missing named input: {missing[0]} in 'inputs' object.")
            return {n: json_to_array(inputs[n], input_dtypes[n], n) for n in names}, "columnar"
        if len(names) != 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                f"tensorinfo_map (inputs: {', '.join(names)})"
            )
        return {names[0]: json_to_array(inputs, input_dtypes[names[0]], names[0])}, "columnar"
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------------------------------------- numpy -> JSON


_TEXT_BLOCK = 1 << 16


def to_json_value(array: np.ndarray, name: str) -> Any:
    """One output array as JSON-ready nested lists (strings decoded, ``*_bytes`` as ``{"b64"}``).

    Strings that are not UTF-8 are written as their raw bytes, as TF Serving's writer does: they are decoded
    with ``surrogateescape`` here and the REST layer encodes the body with it. Output dtypes TF Serving's JSON
    cannot carry are INVALID_ARGUMENT ("Failed to write JSON value for tensor type: half").
    """
    if not json_dtypes.json_carries(array.dtype):
        raise InvalidArgument(f"Failed to write JSON value for tensor type: {type_string(array.dtype)}")
    if array.dtype == object or array.dtype.kind in "SU":
        if name.endswith("_bytes"):
            convert = np.frompyfunc(lambda b: {"b64": base64.b64encode(b).decode("ascii")}, 1, 1)
        else:
            convert = np.frompyfunc(
                lambda b: b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else str(b), 1, 1
            )
        return convert(array).tolist() if array.ndim else convert(array.item())
    if array.dtype == np.float32:
        # Shortest decimal that round-trips the float32 (what TF Serving prints), not float64's expansion;
        # in blocks, as the text form takes 128 bytes an element.
        flat = array.reshape(-1)
        shortest = np.empty(flat.shape, np.float64)
        for start in range(0, flat.size, _TEXT_BLOCK):
            shortest[start : start + _TEXT_BLOCK] = flat[start : start + _TEXT_BLOCK].astype(str)
        return shortest.reshape(array.shape).tolist()
    return array.tolist()


def outputs_to_json(outputs: Mapping[str, np.ndarray], fmt: str) -> dict[str, Any]:
    """The response body for ``:predict``: ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar)."""
    names = sorted(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": to_json_value(outputs[names[0]], names[0])}
        return {"outputs": {n: to_json_value(outputs[n], n) for n in names}}
    batch = {n: (outputs[n].shape[0] if outputs[n].ndim else None) for n in names}
    if None in batch.values() or len(set(batch.values())) != 1:
        raise InvalidArgument(
            "Expected every output to have the same 0th dimension (batch size) for the row ('instances') format; "
            f"use the columnar ('inputs') format instead. Received: {batch}"
        )
    if len(names) == 1:
        return {"predictions": to_json_value(outputs[names[0]], names[0])}
    columns = {n: to_json_value(outputs[n], n) for n in names}
    size = next(iter(batch.values()))
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(size)]}


def classification_rows(classes: np.ndarray | None, scores: np.ndarray | None) -> list[list[tuple[str, float]]]:
    """Classify results, one list of ``(label, score)`` per example, for both gRPC and REST: a missing
    ``classes`` output gives ``""`` labels and missing ``scores`` give 0.0 (unset fields, as upstream's
    ``classifier.cc`` leaves them). Labels are UTF-8 (invalid bytes replaced)."""
    shape = (classes if classes is not None else scores).shape  # type: ignore[union-attr]
    labels = [[""] * shape[1]] * shape[0] if classes is None else [
        [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row] for row in classes.tolist()
    ]
    values = [[0.0] * shape[1]] * shape[0] if scores is None else scores.astype(np.float64).tolist()
    return [list(zip(label_row, score_row, strict=True)) for label_row, score_row in zip(labels, values, strict=True)]


# ---------------------------------------------------------------------------------------------- JSON -> Example


def _add_feature(features: feature_pb2.Features, name: str, value: Any) -> None:
    """AddValueToFeature (json_tensor.cc): the first element fixes the feature's kind; booleans are int64 0/1."""
    values = value if isinstance(value, list) else [value]
    feature = features.feature[name]
    kind = None
    for v in values:
        if v is None or isinstance(v, list) or (isinstance(v, dict) and not _is_b64(v)):
            json_type = "Null" if v is None else "Array" if isinstance(v, list) else "Object"
            raise InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {json_type}")
        if isinstance(v, (str, dict)):
            this = "bytes"
        elif isinstance(v, float):
            this = "float"
        else:  # bool or int
            this = "int64"
        if kind is not None and this != kind:
            raise InvalidArgument(f"Unexpected element type in feature: {name} expecting type: {kind}")
        kind = this
        if this == "bytes":
            data = v.encode("utf-8", "surrogatepass") if isinstance(v, str) else _b64_decode(v)
            feature.bytes_list.value.append(data)
        elif this == "float":
            feature.float_list.value.append(v)
        else:
            number = int(v)
            if not -(1 << 63) <= number < (1 << 63):
                raise InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
            feature.int64_list.value.append(number)


def _example(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {type(value).__name__}")
    example = example_pb2.Example()
    for name, feature_value in value.items():
        _add_feature(example.features, name, feature_value)
    return example


def examples_from_json(body: Mapping[str, Any]) -> list[example_pb2.Example]:
    """Read a ``:classify`` / ``:regress`` body (``examples`` plus optional ``context``) into tf.Examples."""
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise InvalidArgument(f"Expected 'examples' to be a list/array of objects. Received: {_debug(examples)}")
    if not examples:
        raise InvalidArgument("Expected at least one element in 'examples'. Received: []")
    context = _example(body["context"]) if "context" in body else None
    result = []
    for value in examples:
        example = _example(value)
        if context is not None:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            example = merged
        result.append(example)
    return result


def examples_from_input(examples: Sequence[example_pb2.Example], context: example_pb2.Example | None) -> list[bytes]:
    """Serialize examples (each merged over the context, if any) for a signature's ``inputs`` tensor."""
    if context is None:
        return [e.SerializeToString() for e in examples]
    out = []
    for example in examples:
        merged = example_pb2.Example()
        merged.CopyFrom(context)
        merged.MergeFrom(example)
        out.append(merged.SerializeToString())
    return out
