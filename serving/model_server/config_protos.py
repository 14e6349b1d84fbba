"""TF Serving's config messages that no installed package ships, declared here field for field.

tensorflow-serving-api ships ``ModelServerConfig`` (``tensorflow_serving.config.model_server_config_pb2``,
used as is) but neither TensorFlow nor it ships the three other files ``tensorflow_model_server`` reads:

- ``--monitoring_config_file``: ``MonitoringConfig`` / ``PrometheusConfig``
  (tensorflow_serving/config/monitoring_config.proto);
- ``--batching_parameters_file``: ``BatchingParameters``
  (tensorflow_serving/servables/tensorflow/session_bundle_config.proto);
- ``--ssl_config_file``: ``SSLConfig`` (tensorflow_serving/config/ssl_config.proto).

They are declared below with upstream's package, message names, field names, numbers and types
(tensorflow/serving 9d981c5c), in a descriptor pool of their own, so that no generated module of the same
name can clash with them; text-format files written for TF Serving parse the same.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, wrappers_pb2

__all__ = ["BatchingParameters", "MonitoringConfig", "PrometheusConfig", "SSLConfig"]

_F = descriptor_pb2.FieldDescriptorProto
_WRAPPERS = "google/protobuf/wrappers.proto"

#: message -> (field name, number, type, label, message type name or "")
_MESSAGES: dict[str, tuple[tuple[str, int, int, int, str], ...]] = {
    "PrometheusConfig": (
        ("enable", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("path", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ),
    "MonitoringConfig": (
        ("prometheus_config", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.serving.PrometheusConfig"),
    ),
    "BatchingParameters": (
        ("max_batch_size", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, _F.LABEL_REPEATED, ""),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ),
    "SSLConfig": (
        ("server_key", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("server_cert", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("custom_ca", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("client_verify", 4, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
    ),
}


def _classes() -> dict[str, type[message.Message]]:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tfstack/model_server/tf_serving_config.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[_WRAPPERS],
    )
    for name, fields in _MESSAGES.items():
        declared = file_proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = declared.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in _MESSAGES}


_CLASSES = _classes()
PrometheusConfig = _CLASSES["PrometheusConfig"]
MonitoringConfig = _CLASSES["MonitoringConfig"]
BatchingParameters = _CLASSES["BatchingParameters"]
SSLConfig = _CLASSES["SSLConfig"]
