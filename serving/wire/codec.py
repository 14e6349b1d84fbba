"""The numpy <-> TensorProto codec, written and read straight from protobuf wire bytes.

One table (:data:`DTYPES`) drives both directions. Encoding writes ``tensor_content`` (raw
little-endian bytes) for every numeric dtype and ``string_val`` for strings, as a list of byte chunks
whose big chunk is a view of the array, so a whole request is built with one ``bytes.join``.
Decoding reads ``tensor_content`` with ``np.frombuffer`` (no copy: the result is a read-only view of
the response bytes) and every typed ``*_val`` field TF Serving answers with: fixed-width packed fields
(``float_val``, ``double_val``, ``scomplex_val``, ``dcomplex_val``) are also views; varint fields
(``int_val``, ``int64_val``, ``half_val``, ``bool_val``, ``uint32_val``, ``uint64_val``) go through
protobuf's C parser for that one tensor, which decodes varints faster than numpy can. A field
shorter than the shape is padded with its last value, as TensorFlow does.

The same functions build and read whole ``PredictRequest`` / ``PredictResponse`` messages, which is
what the gRPC transport sends and receives instead of going through protobuf objects. The local model
server answers with :func:`encode_predict_response`, whose tensors carry their values in the typed
fields as TF Serving's do (:func:`encode_typed_tensor`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from serving.wire.proto import tensor_pb2

__all__ = [
    "DTYPES",
    "NUMPY_DTYPES",
    "DType",
    "decode_predict_response",
    "decode_tensor",
    "dtype_for_enum",
    "dtype_for_numpy",
    "encode_model_spec",
    "encode_predict_request",
    "encode_predict_response",
    "encode_tensor",
    "encode_typed_tensor",
    "to_ndarray",
    "to_tensor_proto",
]


@dataclass(frozen=True)
class DType:
    """One row of the dtype table: a TensorFlow ``DataType`` and how it travels."""

    enum: int
    """The ``tensorflow.DataType`` value."""
    name: str
    """The ``DataType`` name, e.g. ``DT_FLOAT``."""
    numpy: np.dtype[Any]
    """The numpy dtype (``object`` for strings: arrays of ``bytes``)."""
    field: int
    """Field number of the typed ``*_val`` field servers answer with."""
    wire: str
    """How that field is packed: ``<f4``/``<f8`` fixed width, ``varint``, ``bits16`` (half_val) or
    ``bytes`` (string_val)."""
    complex_parts: int = 1
    """2 for complex types, whose typed fields hold (real, imaginary) pairs."""


_F = tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name
_ROWS = [
    DType(1, "DT_FLOAT", np.dtype("<f4"), _F["float_val"].number, "<f4"),
    DType(2, "DT_DOUBLE", np.dtype("<f8"), _F["double_val"].number, "<f8"),
    DType(3, "DT_INT32", np.dtype("<i4"), _F["int_val"].number, "varint"),
    DType(4, "DT_UINT8", np.dtype("u1"), _F["int_val"].number, "varint"),
    DType(5, "DT_INT16", np.dtype("<i2"), _F["int_val"].number, "varint"),
    DType(6, "DT_INT8", np.dtype("i1"), _F["int_val"].number, "varint"),
    DType(7, "DT_STRING", np.dtype(object), _F["string_val"].number, "bytes"),
    DType(8, "DT_COMPLEX64", np.dtype("<c8"), _F["scomplex_val"].number, "<f4", 2),
    DType(9, "DT_INT64", np.dtype("<i8"), _F["int64_val"].number, "varint"),
    DType(10, "DT_BOOL", np.dtype("?"), _F["bool_val"].number, "varint"),
    DType(17, "DT_UINT16", np.dtype("<u2"), _F["int_val"].number, "varint"),
    DType(18, "DT_COMPLEX128", np.dtype("<c16"), _F["dcomplex_val"].number, "<f8", 2),
    DType(19, "DT_HALF", np.dtype("<f2"), _F["half_val"].number, "bits16"),
    DType(22, "DT_UINT32", np.dtype("<u4"), _F["uint32_val"].number, "varint"),
    DType(23, "DT_UINT64", np.dtype("<u8"), _F["uint64_val"].number, "varint"),
]
# Rows whose numpy dtype comes from ml_dtypes (a TensorFlow and JAX dependency, ``tfstack[bfloat16]``):
# importing it costs about 0.6 s, most of the client's import, so they join the table the first time
# a lookup needs them (a bfloat16 tensor, spec or array); without ml_dtypes they are refused.
_ML_DTYPES_ROWS = {14: ("DT_BFLOAT16", "bfloat16", _F["half_val"].number, "bits16")}
_ML_DTYPES_NAMES = frozenset(name for name, *_ in _ML_DTYPES_ROWS.values())
_ml_dtypes_state: list[bool] = []  # [] not tried yet, [True] loaded, [False] not installed

_BY_ENUM: dict[int, DType] = {row.enum: row for row in _ROWS}
_BY_NAME: dict[str, DType] = {row.name: row for row in _ROWS}
_BY_NUMPY: dict[np.dtype[Any], DType] = {row.numpy.newbyteorder("="): row for row in _ROWS if row.enum != 7}


def _load_ml_dtypes() -> bool:
    """Adds the ml_dtypes rows to the table (once); False when ml_dtypes is not installed."""
    if not _ml_dtypes_state:
        try:
            import ml_dtypes
        except ImportError:
            _ml_dtypes_state.append(False)
            return False
        for enum, (name, attribute, field, wire) in _ML_DTYPES_ROWS.items():
            row = DType(enum, name, np.dtype(getattr(ml_dtypes, attribute)), field, wire)
            _ROWS.append(row)
            _BY_ENUM[enum], _BY_NAME[name], _BY_NUMPY[row.numpy] = row, row, row
        _ml_dtypes_state.append(True)
    return _ml_dtypes_state[0]


def _from_ml_dtypes(dtype: Any) -> bool:
    """Whether ``dtype`` is an ml_dtypes type (only someone who imported ml_dtypes can hold one)."""
    return isinstance(dtype, np.dtype) and dtype.type.__module__.split(".")[0] == "ml_dtypes"


class _Table(Mapping[Any, DType]):
    """A read-only view of one index of the dtype table that loads the ml_dtypes rows when a lookup
    needs them or the whole table is listed; other look-ups never import ml_dtypes."""

    def __init__(self, rows: dict[Any, DType], needs_ml_dtypes: Any) -> None:
        self._rows = rows
        self._needs_ml_dtypes = needs_ml_dtypes

    def __getitem__(self, key: Any) -> DType:
        row = self._rows.get(key)
        if row is None and self._needs_ml_dtypes(key) and _load_ml_dtypes():
            row = self._rows.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def __iter__(self) -> Iterator[Any]:
        _load_ml_dtypes()
        return iter(dict(self._rows))

    def __len__(self) -> int:
        _load_ml_dtypes()
        return len(self._rows)


DTYPES: Mapping[int, DType] = _Table(_BY_ENUM, _ML_DTYPES_ROWS.__contains__)
"""The dtype table, keyed by ``tensorflow.DataType`` value (DT_BFLOAT16 needs ml_dtypes)."""

Chunk = bytes | np.ndarray[Any, Any]
"""A piece of message bytes: bytes, or a C-contiguous little-endian array whose buffer is the bytes."""

NUMPY_DTYPES: Mapping[np.dtype[Any], DType] = _Table(_BY_NUMPY, _from_ml_dtypes)
"""The numeric rows of the table, keyed by native-byte-order numpy dtype."""
_STRING = _BY_ENUM[7]
_FIELD_NAMES = {field.number: field.name for field in tensor_pb2.TensorProto.DESCRIPTOR.fields}
_CONTENT_FIELD = _F["tensor_content"].number
_SHAPE_FIELD = _F["tensor_shape"].number


def dtype_for_enum(value: int | str) -> DType:
    """Returns the table row for a ``DataType`` value or name (``1`` or ``"DT_FLOAT"``)."""
    row = _BY_NAME.get(value) if isinstance(value, str) else _BY_ENUM.get(value)
    if row is None and (value in _ML_DTYPES_ROWS or value in _ML_DTYPES_NAMES):
        if not _load_ml_dtypes():
            raise ValueError(f"Expected ml_dtypes for dtype {value!r} (pip install 'tfstack[bfloat16]'). "
                             "Received: ml_dtypes is not installed")
        row = _BY_NAME.get(value) if isinstance(value, str) else _BY_ENUM.get(value)
    if row is None:
        supported = sorted({*_BY_NAME, *_ML_DTYPES_NAMES})
        raise ValueError(f"Expected a supported TensorFlow dtype {supported}. Received: dtype={value!r}")
    return row


def dtype_for_numpy(dtype: np.dtype[Any]) -> DType:
    """Returns the table row for a numpy dtype (bytes, str and object arrays map to DT_STRING)."""
    row = _BY_NUMPY.get(dtype)
    if row is not None:
        return row
    if dtype.kind in "SUO":
        return _STRING
    row = _BY_NUMPY.get(dtype.newbyteorder("="))
    if row is None and _from_ml_dtypes(dtype) and _load_ml_dtypes():
        row = _BY_NUMPY.get(dtype)
    if row is None:
        supported = sorted(str(r.numpy) for r in _ROWS)
        raise ValueError(f"Expected a numpy dtype in {supported}. Received: dtype={dtype}")
    return row


# --------------------------------------------------------------------------------------------------
# Writing


_SMALL = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    return _long_varint(value)


@functools.lru_cache(maxsize=4096)
def _long_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: int, payload: bytes) -> bytes:
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=1024)
def _tensor_head(enum: int, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_len_field(2, b"\x08" + _varint(size) if size else b"") for size in shape)
    return b"\x08" + _varint(enum) + _len_field(_SHAPE_FIELD, dims)


@functools.lru_cache(maxsize=1024)
def _entry_key(key: str) -> bytes:
    return _len_field(1, key.encode("utf-8"))


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview, np.bytes_)):
        return bytes(item)
    raise ValueError(f"Expected bytes or str in a string tensor. Received: {type(item).__name__}={item!r:.40}")


def _coerce(value: object) -> np.ndarray[Any, Any]:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bytes, str)):
        return np.array(value, dtype=object)
    array = np.asarray(value)
    if array.dtype.kind in "SU":
        return array.astype(object)
    return array


def encode_tensor(value: object) -> tuple[list[Chunk], int]:
    """Encodes an array-like as ``TensorProto`` wire bytes: ``(chunks, total length)``.

    Numeric arrays go to ``tensor_content`` and the big chunk is a view of the (contiguous,
    little-endian) array; strings go to ``string_val``. Joining the chunks gives the message bytes,
    identical to protobuf's deterministic serialisation of the same message.
    """
    array = value if type(value) is np.ndarray else _coerce(value)
    row = dtype_for_numpy(array.dtype)
    head = _tensor_head(row.enum, array.shape)
    if row is _STRING:
        body = b"".join(_len_field(row.field, _as_bytes(item)) for item in array.reshape(-1).tolist())
        return [head + body], len(head) + len(body)
    if not array.flags.c_contiguous or array.dtype.byteorder == ">":
        array = np.ascontiguousarray(array, dtype=row.numpy)
    nbytes = array.nbytes
    if nbytes == 0:
        return [head], len(head)
    head += b"\x22" + _varint(nbytes)
    return [head, array], len(head) + nbytes  # bytes.join reads the array's buffer: no copy here


def encode_typed_tensor(value: object) -> bytes:
    """Encodes an array-like as ``TensorProto`` wire bytes with the values in its typed ``*_val`` field,
    as TF Serving writes response tensors (``Tensor::AsProtoField``), never ``tensor_content``.

    Fixed-width fields are the array's bytes; varint fields go through protobuf's C serializer. The
    bytes equal protobuf's deterministic serialisation of the same message.
    """
    array = value if type(value) is np.ndarray else _coerce(value)
    row = dtype_for_numpy(array.dtype)
    head = _tensor_head(row.enum, array.shape)
    if array.size == 0:
        return head
    if row is _STRING:
        return head + b"".join(_len_field(row.field, _as_bytes(item)) for item in array.reshape(-1).tolist())
    if row.wire in ("<f4", "<f8"):  # packed fixed-width: complex values are (real, imaginary) pairs in memory too
        return head + _len_field(row.field, np.ascontiguousarray(array, row.numpy).tobytes())
    flat = array.reshape(-1)
    if row.wire == "bits16":
        flat = flat.view(np.uint16)
    proto = tensor_pb2.TensorProto()
    getattr(proto, _FIELD_NAMES[row.field]).extend(flat.tolist())
    values: bytes = proto.SerializeToString()
    return head + values


def encode_predict_response(model_spec: bytes, outputs: Mapping[str, object]) -> bytes:
    """Builds ``PredictResponse`` wire bytes (typed-field tensors, outputs sorted by alias, as protobuf's
    deterministic serialisation orders map entries)."""
    chunks = []
    for key in sorted(outputs):
        tensor = encode_typed_tensor(outputs[key])
        chunks.append(_len_field(1, _entry_key(key) + _len_field(2, tensor)))
    chunks.append(_spec_response_field(model_spec))
    return b"".join(chunks)


@functools.lru_cache(maxsize=256)
def _spec_response_field(model_spec: bytes) -> bytes:
    return _len_field(2, model_spec)


@functools.lru_cache(maxsize=256)
def encode_model_spec(
    name: str, version: int | None = None, version_label: str | None = None, signature_name: str = ""
) -> bytes:
    """Encodes a ``tensorflow.serving.ModelSpec`` (version and version_label are a oneof)."""
    if version is not None and version_label is not None:
        raise ValueError(
            f"Expected at most one of version and version_label. Received: version={version}, "
            f"version_label={version_label!r}"
        )
    out = _len_field(1, name.encode())
    if version is not None:
        out += _len_field(2, b"\x08" + _varint(version) if version else b"")
    if signature_name:
        out += _len_field(3, signature_name.encode())
    if version_label is not None:
        out += _len_field(4, version_label.encode())
    return out


@functools.lru_cache(maxsize=256)
def _spec_field(model_spec: bytes) -> bytes:
    return _len_field(1, model_spec)


def encode_predict_request(
    model_spec: bytes, inputs: Mapping[str, object], output_filter: Iterable[str] = ()
) -> bytes:
    """Builds ``PredictRequest`` wire bytes with a single join over the tensors' chunks."""
    chunks: list[Chunk] = [_spec_field(model_spec)]
    for key in sorted(inputs):
        tensor, size = encode_tensor(inputs[key])
        key_field = _entry_key(key)
        size_varint = _varint(size)
        entry = len(key_field) + 1 + len(size_varint) + size
        chunks.append(b"\x12" + _varint(entry) + key_field + b"\x12" + size_varint)
        chunks.extend(tensor)
    for name in output_filter:
        chunks.append(_len_field(3, name.encode()))
    return b"".join(cast("list[bytes]", chunks))


# --------------------------------------------------------------------------------------------------
# Reading


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("Expected a complete varint. Received: truncated bytes")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError(f"Expected a varint of at most 10 bytes. Received: a longer one at byte {pos}")


def _skip_field(buf: memoryview, pos: int, key: int) -> int:
    """The position after the value of field ``key`` (any wire type), as protobuf skips unknown fields."""
    wire = key & 7
    if wire == 0:
        return _read_varint(buf, pos)[1]
    if wire == 1 or wire == 5:
        pos += 8 if wire == 1 else 4
    elif wire == 2:
        length, pos = _read_varint(buf, pos)
        pos += length
    elif wire == 3:  # a group: skip fields up to its end-group tag
        while True:
            inner, pos = _read_varint(buf, pos)
            if inner & 7 == 4:
                if inner >> 3 != key >> 3:
                    raise ValueError(f"Expected the end of group {key >> 3}. Received: end of group {inner >> 3}")
                return pos
            pos = _skip_field(buf, pos, inner)
    else:
        raise ValueError(f"Expected protobuf wire type 0, 1, 2, 3 or 5. Received: wire type {wire}")
    if pos > len(buf):
        raise ValueError(f"Expected a complete value for field {key >> 3}. Received: truncated bytes")
    return pos


def _typed_values(row: DType, parts: list[Any]) -> np.ndarray[Any, Any]:
    """Turns the collected occurrences of a typed field into a flat numpy array of ``row.numpy``."""
    if row.wire == "bytes":
        strings = np.empty(len(parts), dtype=object)
        strings[:] = [bytes(p) for p in parts]
        return strings
    if not parts:
        return np.empty(0, row.numpy)
    if row.wire in ("<f4", "<f8"):
        if len(parts) == 1:
            flat = np.frombuffer(parts[0], row.wire)
        else:
            flat = np.frombuffer(b"".join(bytes(p) for p in parts), row.wire)
        return flat.view(row.numpy) if row.complex_parts == 2 else flat
    raise AssertionError(f"varint field of {row.name} goes through _from_message")  # pragma: no cover


def _decode_shape(buf: memoryview) -> tuple[int, ...] | None:
    dims: list[int] = []
    pos, end = 0, len(buf)
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(buf, pos)
        if key == 0x12:  # dim: a message {size = 1 (int64), name = 2}
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _read_varint(buf, pos)
            stop, size = pos + length, 0
            while pos < stop:
                dim_key = buf[pos]
                if dim_key < 0x80:
                    pos += 1
                else:
                    dim_key, pos = _read_varint(buf, pos)
                if dim_key == 0x08:
                    size = buf[pos]
                    if size < 0x80:
                        pos += 1
                    else:
                        size, pos = _read_varint(buf, pos)
                    if size >= 1 << 63:
                        size -= 1 << 64
                else:  # the dim's name, or a field this reader does not know
                    pos = _skip_field(buf, pos, dim_key)
            dims.append(size)
        elif key == 0x18:  # unknown_rank
            flag = buf[pos]
            if flag < 0x80:
                pos += 1
            else:
                flag, pos = _read_varint(buf, pos)
            if flag:
                return None
        else:
            pos = _skip_field(buf, pos, key)
    if pos != end:
        raise ValueError("Expected a complete TensorShapeProto. Received: truncated bytes")
    return tuple(dims)


def decode_tensor(data: bytes | memoryview) -> np.ndarray[Any, Any]:
    """Decodes ``TensorProto`` wire bytes into a numpy array.

    From ``tensor_content`` and fixed-width typed fields the result is a read-only view of ``data``
    (no copy); strings come back as an ``object`` array of ``bytes``.
    """
    buf = memoryview(data)
    enum = 0
    shape: tuple[int, ...] | None = ()
    content: memoryview | None = None
    typed: dict[int, list[Any]] = {}
    pos, end = 0, len(buf)
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(buf, pos)
        wire = key & 7
        if wire == 2:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _read_varint(buf, pos)
            stop = pos + length
            if stop > end:
                raise ValueError(f"Expected {length} bytes for field {key >> 3}. Received: {end - pos}")
            value: Any = buf[pos:stop]
            pos = stop
            if key == 0x12:
                shape = _decode_shape(value)
                continue
            if key == 0x22:
                content = value
                continue
        elif wire == 0:
            value = buf[pos]
            if value < 0x80:
                pos += 1
            else:
                value, pos = _read_varint(buf, pos)
            if key == 0x08:
                enum = value
                continue
            if key == 0x18:  # version_number
                continue
        elif wire == 5 or wire == 1:
            width = 4 if wire == 5 else 8
            value, pos = buf[pos : pos + width], pos + width
        else:  # a group (deprecated): no TensorProto field is one, so it is an unknown field
            pos = _skip_field(buf, pos, key)
            continue
        typed.setdefault(key >> 3, []).append(value)
    if pos != end:
        raise ValueError("Expected a complete protobuf message. Received: truncated bytes")
    row = dtype_for_enum(enum)
    if shape is None or any(d < 0 for d in shape):
        raise ValueError(f"Expected a fully defined tensor shape. Received: shape={shape}")
    count = math.prod(shape)
    if content is not None and row is _STRING:
        raise ValueError("Expected string_val for DT_STRING. Received: tensor_content")
    if content is not None:
        if len(content) != count * row.numpy.itemsize:
            raise ValueError(
                f"Expected {count * row.numpy.itemsize} bytes of tensor_content for {row.name} "
                f"{list(shape)}. Received: {len(content)} bytes"
            )
        return np.frombuffer(content, row.numpy).reshape(shape)
    # Fields other than the dtype's own typed field are skipped: unknown ones as protobuf skips them,
    # known ones (another dtype's *_val) as TensorFlow's MakeNdarray ignores them.
    if row.wire in ("varint", "bits16"):  # protobuf's C parser decodes varints faster than numpy can
        return _from_message(tensor_pb2.TensorProto.FromString(bytes(buf)))
    return _fill(row, shape, _typed_values(row, typed.get(row.field, [])))


def _fill(row: DType, shape: tuple[int, ...], flat: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Shapes a typed field's values; a shorter field repeats its last value, as TensorFlow does."""
    count = math.prod(shape)
    if flat.size == count:
        return flat.reshape(shape)
    if flat.size == 0:
        return np.full(shape, b"", dtype=object) if row is _STRING else np.zeros(shape, row.numpy)
    if flat.size < count:
        return np.concatenate([flat, np.repeat(flat[-1:], count - flat.size)]).reshape(shape)
    raise ValueError(f"Expected {count} values for {row.name} {list(shape)}. Received: {flat.size}")


def _from_message(tensor: Any) -> np.ndarray[Any, Any]:
    """Decodes a parsed ``TensorProto`` message (the path for small responses, where protobuf's C
    parser beats reading the wire in Python)."""
    row = dtype_for_enum(tensor.dtype)
    shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    if tensor.tensor_shape.unknown_rank or any(d < 0 for d in shape):
        raise ValueError(f"Expected a fully defined tensor shape. Received: shape={shape}")
    content = tensor.tensor_content
    if content:
        if row is _STRING:
            raise ValueError("Expected string_val for DT_STRING. Received: tensor_content")
        if len(content) != math.prod(shape) * row.numpy.itemsize:
            raise ValueError(
                f"Expected {math.prod(shape) * row.numpy.itemsize} bytes of tensor_content for "
                f"{row.name} {list(shape)}. Received: {len(content)} bytes"
            )
        return np.frombuffer(content, row.numpy).reshape(shape)
    values = getattr(tensor, _FIELD_NAMES[row.field])
    flat: np.ndarray[Any, Any]
    if row.wire == "bytes":
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif row.wire == "bits16":
        flat = np.array(values, np.int64).astype(np.uint16).view(row.numpy)
    elif row.complex_parts == 2:
        flat = np.array(values, row.wire).view(row.numpy)
    else:
        flat = np.array(values, row.numpy)
    return _fill(row, shape, flat)


def decode_predict_response(data: bytes | memoryview) -> tuple[dict[str, np.ndarray[Any, Any]], bytes]:
    """Decodes ``PredictResponse`` wire bytes: ``(outputs, ModelSpec bytes)``."""
    outputs: dict[str, np.ndarray[Any, Any]] = {}
    spec = b""
    buf = memoryview(data)
    pos, end = 0, len(buf)
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(buf, pos)
        if key & 7 != 2:  # PredictResponse has only length-delimited fields: skip unknown ones
            pos = _skip_field(buf, pos, key)
            continue
        length = buf[pos]
        if length < 0x80:
            pos += 1
        else:
            length, pos = _read_varint(buf, pos)
        stop = pos + length
        if stop > end:
            raise ValueError(f"Expected {length} bytes for field {key >> 3}. Received: {end - pos}")
        if key == 0x0A:  # outputs: map entry {key = 1 (string), value = 2 (TensorProto)}
            name, tensor = "", buf[0:0]
            while pos < stop:
                entry_key = buf[pos]
                if entry_key < 0x80:
                    pos += 1
                else:
                    entry_key, pos = _read_varint(buf, pos)
                if entry_key not in (0x0A, 0x12):
                    pos = _skip_field(buf, pos, entry_key)
                    continue
                size = buf[pos]
                if size < 0x80:
                    pos += 1
                else:
                    size, pos = _read_varint(buf, pos)
                if entry_key == 0x0A:
                    name = str(buf[pos : pos + size], "utf-8")
                else:
                    tensor = buf[pos : pos + size]
                pos += size
            if pos != stop:
                raise ValueError(f"Expected a complete outputs entry. Received: {pos - stop} bytes too many")
            try:
                outputs[name] = decode_tensor(tensor)
            except ValueError as exc:
                raise ValueError(f"Expected a decodable output tensor. Received for {name!r}: {exc}") from exc
        elif key == 0x12:
            spec = bytes(buf[pos:stop])
        pos = stop
    return outputs, spec


# --------------------------------------------------------------------------------------------------
# Message-level conveniences


def to_tensor_proto(value: object) -> tensor_pb2.TensorProto:
    """Encodes an array-like as this package's ``TensorProto`` message."""
    chunks, _ = encode_tensor(value)
    proto: tensor_pb2.TensorProto = tensor_pb2.TensorProto.FromString(b"".join(cast("list[bytes]", chunks)))
    return proto


def to_ndarray(proto: Any) -> np.ndarray[Any, Any]:
    """Decodes any ``TensorProto`` message (this package's or TensorFlow's) into a numpy array."""
    data: bytes = proto.SerializeToString()
    return decode_tensor(data)
