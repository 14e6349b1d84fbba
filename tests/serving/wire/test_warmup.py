"""Warm-up records built by serving.wire are what TF Serving's own messages read."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.wire import predict_log


def test_predict_log_parses_with_the_official_prediction_log() -> None:
    images = np.array([b"\x89PNG...", b"\xff\xd8jpeg"], dtype=object)
    pixels = np.zeros((1, 2, 2, 3), dtype=np.float32)
    record = prediction_log_pb2.PredictionLog.FromString(
        predict_log("digits", {"images": images, "pixels": pixels}, "serving_default")
    )
    assert record.WhichOneof("log_type") == "predict_log"
    request = record.predict_log.request
    assert (request.model_spec.name, request.model_spec.signature_name) == ("digits", "serving_default")
    assert not request.model_spec.HasField("version")
    assert tf.make_ndarray(request.inputs["images"]).tolist() == images.tolist()
    decoded = tf.make_ndarray(request.inputs["pixels"])
    assert decoded.dtype == np.float32 and decoded.shape == (1, 2, 2, 3)
