"""``python -m trainer.verify``: check an export the way TF Serving will use it, in a fresh process.

The publish gate (`trainer.publish`) runs this as a subprocess on the staged export before anything
appears on the shared volume, so nothing of the training process (Python objects, custom layers,
cached graphs) can hide a SavedModel that does not stand on its own. For one export it:

1. loads it with ``tf.saved_model.load(path, tags=["serve"])``, as TF Serving's SavedModel loader does;
2. checks the signatures the export contract promises (`trainer.export`): ``serving_default`` takes
   ``images`` (string ``[None]``) and ``predict_pixels`` takes ``pixels`` (float32 ``[None, H, W, 3]``);
   both return ``probabilities`` (float32 ``[None, C]``), ``class_id`` (int64 ``[None]``) and
   ``class_name`` (string ``[None]``), with C the number of class names in its metadata;
3. replays its warm-up records (``assets.extra/tf_serving_warmup_requests``), as TF Serving does at
   load time, each through the signature it names;
4. scores ``serving_default`` on the held-out image files, sending their bytes as a client would.

Input: a JSON object on stdin, ``{"exports": [{"path": ..., "replay_warmup": bool}], "held_out": [{"path":
..., "label": int}]}``. Output: one JSON object on stdout, ``{"results": [{"accuracy", "balanced_accuracy",
"images", "warmup_records", "num_classes"}, ...]}`` in the same order; on failure exit status 1 and
``{"error": "<what is wrong, naming the export>"}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "verify_export"]

_OUTPUTS = {"probabilities": ("float32", 2), "class_id": ("int64", 1), "class_name": ("string", 1)}
_BATCH = 32


class VerificationError(Exception):
    """The export does not stand on its own; the message says what is wrong."""


def _check_signature(loaded: Any, name: str, input_name: str, input_dtype: str, rank: int, classes: int) -> None:
    signatures = loaded.signatures
    if name not in signatures:
        raise VerificationError(f"Expected signature {name!r}. Received: {sorted(signatures)}")
    function = signatures[name]
    inputs = function.structured_input_signature[1]
    if set(inputs) != {input_name}:
        raise VerificationError(f"Expected {name} inputs [{input_name!r}]. Received: {sorted(inputs)}")
    spec = inputs[input_name]
    if spec.dtype.name != input_dtype or spec.shape.rank != rank or spec.shape[0] is not None:
        raise VerificationError(
            f"Expected {name} input {input_name!r} as {input_dtype} of rank {rank} with any batch size. "
            f"Received: {spec.dtype.name} {spec.shape}"
        )
    outputs = function.structured_outputs
    if set(outputs) != set(_OUTPUTS):
        raise VerificationError(f"Expected {name} outputs {sorted(_OUTPUTS)}. Received: {sorted(outputs)}")
    for alias, (dtype, out_rank) in _OUTPUTS.items():
        tensor = outputs[alias]
        if tensor.dtype.name != dtype or tensor.shape.rank != out_rank:
            raise VerificationError(
                f"Expected {name} output {alias!r} as {dtype} of rank {out_rank}. "
                f"Received: {tensor.dtype.name} {tensor.shape}"
            )
    if outputs["probabilities"].shape[-1] != classes:
        raise VerificationError(
            f"Expected {name} probabilities over the {classes} classes of the metadata. "
            f"Received: shape {outputs['probabilities'].shape}"
        )


def _replay_warmup(loaded: Any, path: Path) -> int:
    import tensorflow as tf

    from serving.wire import WARMUP_FILE, to_ndarray
    from serving.wire.proto import prediction_log_pb2

    records = path / "assets.extra" / WARMUP_FILE
    if not records.is_file():
        return 0
    count = 0
    for raw in tf.data.TFRecordDataset(str(records)):
        record = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        if record.WhichOneof("log_type") != "predict_log":
            raise VerificationError(f"Expected predict_log warm-up records. Received: {record.WhichOneof('log_type')}")
        request = record.predict_log.request
        name = request.model_spec.signature_name or "serving_default"
        inputs = {alias: tf.constant(to_ndarray(tensor)) for alias, tensor in request.inputs.items()}
        try:
            loaded.signatures[name](**inputs)
        except Exception as exc:  # any failure here is a request TF Serving would fail at load time
            raise VerificationError(f"Warm-up record {count} ({name}) fails: {type(exc).__name__}: {exc}") from exc
        count += 1
    return count


def _score(loaded: Any, held_out: list[dict[str, Any]], classes: int) -> dict[str, Any]:
    import numpy as np
    import tensorflow as tf

    serve = loaded.signatures["serving_default"]
    labels = np.array([int(item["label"]) for item in held_out], dtype=np.int64)
    predicted = []
    for start in range(0, len(held_out), _BATCH):
        batch = [Path(item["path"]).read_bytes() for item in held_out[start : start + _BATCH]]
        predicted.append(serve(images=tf.constant(batch, dtype=tf.string))["class_id"].numpy())
    predictions = np.concatenate(predicted) if predicted else np.zeros(0, np.int64)
    recalls = [float(np.mean(predictions[labels == c] == c)) for c in range(classes) if np.any(labels == c)]
    return {
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "images": len(labels),
    }


def verify_export(path: Path, held_out: list[dict[str, Any]], replay_warmup: bool = True) -> dict[str, Any]:
    """Load, check, replay and score one export (see the module docstring); raises VerificationError."""
    import tensorflow as tf

    metadata_path = path / "assets.extra" / "tfstack_metadata.json"
    try:
        metadata = json.loads(metadata_path.read_text())
        classes = len(metadata["class_names"])
        size = int(metadata["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"Expected a readable {metadata_path} with class_names and image_size: {exc}") from exc
    try:
        loaded = tf.saved_model.load(str(path), tags=["serve"])
    except Exception as exc:
        raise VerificationError(f"Could not load {path} as a SavedModel: {type(exc).__name__}: {exc}") from exc
    _check_signature(loaded, "serving_default", "images", "string", 1, classes)
    _check_signature(loaded, "predict_pixels", "pixels", "float32", 4, classes)
    pixels = loaded.signatures["predict_pixels"].structured_input_signature[1]["pixels"].shape
    if list(pixels[1:]) != [size, size, 3]:
        raise VerificationError(f"Expected predict_pixels of [None, {size}, {size}, 3]. Received: {pixels}")
    warmup = _replay_warmup(loaded, path) if replay_warmup else 0
    return {**_score(loaded, held_out, classes), "warmup_records": warmup, "num_classes": classes}


def main() -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        request = json.load(sys.stdin)
        results = [
            verify_export(Path(item["path"]), request["held_out"], bool(item.get("replay_warmup", True)))
            for item in request["exports"]
        ]
    except VerificationError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
