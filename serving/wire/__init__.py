"""TF Serving's protocol without TensorFlow: wire-compatible protobuf definitions and the tensor codec.

The one layer that the thin client (``serving.client``), the local model server
(``serving.model_server``) and the trainer's export (``trainer.export``, for TF Serving's warm-up
records) share; it imports neither TensorFlow nor any of them. ``serving.wire.proto`` holds the
messages (upstream's names and field numbers, in a private descriptor pool that coexists with real
TensorFlow); ``serving.wire.codec`` reads and writes tensors and Predict messages straight from wire
bytes, driven by one dtype table; ``serving.wire.warmup`` builds warm-up records.
"""

from __future__ import annotations

from serving.wire.codec import (
    DTYPES,
    NUMPY_DTYPES,
    DType,
    decode_predict_response,
    decode_tensor,
    dtype_for_enum,
    dtype_for_numpy,
    encode_model_spec,
    encode_predict_request,
    encode_predict_response,
    encode_tensor,
    encode_typed_tensor,
    to_ndarray,
    to_tensor_proto,
)
from serving.wire.warmup import WARMUP_FILE, predict_log

__all__ = [
    "DTYPES",
    "NUMPY_DTYPES",
    "WARMUP_FILE",
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
    "predict_log",
    "to_ndarray",
    "to_tensor_proto",
]
