"""Wire compatibility of serving.wire.proto with the official TensorFlow / TF Serving messages:
every message type round-trips both ways, and every declaration matches upstream's."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
from google.protobuf import descriptor, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import FieldDescriptor

# The official modules: importing them registers upstream's descriptors in the default pool.
from tensorflow.core.example import example_pb2  # noqa: F401
from tensorflow.core.framework import tensor_pb2  # noqa: F401
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: F401
from tensorflow_serving.apis import (  # noqa: F401
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2,
    regression_pb2,
    status_pb2,
)

import serving.wire.proto as ours_package
from serving.wire.proto import POOL

OFFICIAL = descriptor_pool.Default()

# Upstream fields our .proto files leave out on purpose (see meta_graph.proto).
OMITTED = {
    "tensorflow.TensorInfo": {"composite_tensor"},
    "tensorflow.serving.PredictionLog": {"log_metadata", "session_run_log", "predict_streamed_log"},
}
OMITTED_METHODS = {"tensorflow.serving.ModelService": {"HandleReloadConfigRequest"}}


def _our_modules() -> list[Any]:
    return [
        importlib.import_module(f"serving.wire.proto.{info.name}")
        for info in pkgutil.iter_modules(ours_package.__path__)
        if info.name.endswith("_pb2")
    ]


def _messages(desc: Any) -> list[descriptor.Descriptor]:
    found = []
    for message in desc.message_types_by_name.values():
        stack = [message]
        while stack:
            current = stack.pop()
            if not current.GetOptions().map_entry:
                found.append(current)
            stack.extend(current.nested_types)
    return found


OUR_MESSAGES = sorted(
    {m.full_name: m for module in _our_modules() for m in _messages(module.DESCRIPTOR)}.values(),
    key=lambda m: m.full_name,
)
OUR_SERVICES = sorted(
    (s for module in _our_modules() for s in module.DESCRIPTOR.services_by_name.values()),
    key=lambda s: s.full_name,
)


def _scalar(field: FieldDescriptor, salt: int) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[(salt + 1) % len(values)].number
    if t in (FieldDescriptor.TYPE_STRING,):
        return f"{field.name}-{salt}-é"
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes([0, 255, salt % 256]) + field.name.encode()
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 1.5 + salt
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 4_000_000_000 - salt
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**63 + 5 + salt
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return -(2**40) - salt
    return -7 - salt


def fill(message: Any, depth: int = 0) -> Any:
    """Sets every field of ``message`` (repeated ones twice, maps with two keys), 3 levels deep."""
    for field in message.DESCRIPTOR.fields:
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if is_message and depth >= 3:
            continue
        target = getattr(message, field.name)
        if is_message and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            for salt in (0, 1):
                key = _scalar(key_field, salt)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    fill(target[key], depth + 1)
                else:
                    target[key] = _scalar(value_field, salt)
        elif field.is_repeated:
            for salt in (0, 1):
                if is_message:
                    fill(target.add(), depth + 1)
                else:
                    target.append(_scalar(field, salt))
        elif is_message:
            if field.message_type.full_name == "google.protobuf.Any":
                target.type_url = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
                target.value = b"\x0a\x03\x0a\x01k"
            else:
                fill(target, depth + 1)
                if not target.ListFields() and not message.HasField(field.name):
                    target.SetInParent()
        else:
            setattr(message, field.name, _scalar(field, 0))
    return message


@pytest.mark.parametrize("ours", OUR_MESSAGES, ids=[m.full_name for m in OUR_MESSAGES])
def test_every_message_round_trips_through_the_official_class(ours: descriptor.Descriptor) -> None:
    our_class = message_factory.GetMessageClass(POOL.FindMessageTypeByName(ours.full_name))
    official_class = message_factory.GetMessageClass(OFFICIAL.FindMessageTypeByName(ours.full_name))
    mine = fill(our_class())
    data = mine.SerializeToString(deterministic=True)
    assert data, ours.full_name
    official = official_class.FromString(data)
    # same field names and values, none left unknown (text format prints known fields only)
    assert text_format.MessageToString(official) == text_format.MessageToString(mine)
    assert official.SerializeToString(deterministic=True) == data
    assert our_class.FromString(official.SerializeToString()) == mine
    # and the other way: an official message filled the same way parses into ours unchanged
    theirs = fill(official_class())
    theirs_data = theirs.SerializeToString(deterministic=True)
    back = our_class.FromString(theirs_data)
    assert official_class.FromString(back.SerializeToString()) == theirs


@pytest.mark.parametrize("ours", OUR_MESSAGES, ids=[m.full_name for m in OUR_MESSAGES])
def test_every_declaration_matches_upstream(ours: descriptor.Descriptor) -> None:
    upstream = OFFICIAL.FindMessageTypeByName(ours.full_name)
    ours_fields = {f.name: f for f in ours.fields}
    upstream_fields = {f.name: f for f in upstream.fields}
    assert set(upstream_fields) - set(ours_fields) == OMITTED.get(ours.full_name, set())
    assert set(ours_fields) <= set(upstream_fields)
    for name, field in ours_fields.items():
        other = upstream_fields[name]
        assert (field.number, field.type, field.is_repeated, field.has_presence) == (
            other.number, other.type, other.is_repeated, other.has_presence), name
        if field.message_type is not None:
            assert field.message_type.full_name == other.message_type.full_name
        if field.enum_type is not None:
            assert field.enum_type.full_name == other.enum_type.full_name
            assert {v.name: v.number for v in field.enum_type.values} == {
                v.name: v.number for v in other.enum_type.values
            }
        assert (field.containing_oneof is None) == (other.containing_oneof is None), name


@pytest.mark.parametrize("service", OUR_SERVICES, ids=[s.full_name for s in OUR_SERVICES])
def test_services_declare_upstream_methods(service: descriptor.ServiceDescriptor) -> None:
    upstream = OFFICIAL.FindServiceByName(service.full_name)
    ours = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    theirs = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in upstream.methods}
    assert set(theirs) - set(ours) == OMITTED_METHODS.get(service.full_name, set())
    assert {name: theirs[name] for name in ours} == ours


def test_the_pool_is_private_so_real_tensorflow_coexists() -> None:
    ours = POOL.FindMessageTypeByName("tensorflow.TensorProto")
    theirs = OFFICIAL.FindMessageTypeByName("tensorflow.TensorProto")
    assert ours is not theirs
    assert ours.file.name.startswith("serving/wire/proto/")


def test_generated_modules_import_only_inside_the_package() -> None:
    from pathlib import Path

    folder = Path(ours_package.__file__).parent
    for path in folder.glob("*_pb2*.py"):
        text = path.read_text()
        assert "from tensorflow" not in text and "import tensorflow" not in text, path.name
        assert "_descriptor_pool.Default()" not in text, path.name
