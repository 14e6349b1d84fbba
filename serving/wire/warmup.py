"""TF Serving's warm-up records: serialized ``PredictionLog`` messages, without TensorFlow.

TF Serving replays ``<version>/assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
``tensorflow.serving.PredictionLog``, at most 1,000 records) when a version loads, before it serves
(``servables/tensorflow/saved_model_warmup_util.cc``). :func:`predict_log` builds one record; the
TFRecord framing is the writer's job (the trainer uses ``tf.io.TFRecordWriter``).
"""

from __future__ import annotations

from collections.abc import Mapping

from serving.wire.codec import encode_model_spec, encode_predict_request
from serving.wire.proto import prediction_log_pb2

__all__ = ["WARMUP_FILE", "predict_log"]

WARMUP_FILE = "tf_serving_warmup_requests"
"""The warm-up file's name under ``assets.extra/``."""


def predict_log(model_name: str, inputs: Mapping[str, object], signature_name: str = "serving_default") -> bytes:
    """One serialized ``PredictionLog`` whose ``predict_log.request`` runs ``signature_name`` on ``inputs``
    (name -> array-like; numbers travel in ``tensor_content``, strings in ``string_val``)."""
    request = encode_predict_request(encode_model_spec(model_name, None, None, signature_name), inputs)
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.ParseFromString(request)
    data: bytes = record.SerializeToString()
    return data
